"""The pair as given to ``train``: a built C2CModel, loaded models, or ids to load once the data checked out;
its tokenizers, its fusion settings (:class:`~c2c.config.C2CConfig`), and the renderer built from them.

Only tokenizers are loaded here (cheap), so bad data fails before any LLM is loaded
(:mod:`c2c.train.materialise` loads the models)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.alignment.tokens import TokenAligner
from c2c.config import C2CConfig
from c2c.hf import ModelLoadError, has_chat_template, load_tokenizer
from c2c.model import C2CModel
from c2c.persistence import read_record, resolve_folder
from c2c.train.config import TrainConfig
from c2c.train.errors import ConfigError
from c2c.train.render import ExampleRenderer
from c2c.train.turns import Fields

__all__ = ["ModelArg", "ModelRef", "PairSource", "build_renderer"]

ModelRef: TypeAlias = PreTrainedModel | str | os.PathLike[str]
"""A loaded model, or an id or path to load."""
ModelArg: TypeAlias = C2CModel | Sequence[ModelRef] | None
"""What ``train`` accepts as ``model``: a C2CModel, a ``(receiver, sharer)`` pair, or None (ids in the config)."""


@dataclass
class PairSource:
    """The pair as given, before its LLMs are loaded.

    Attributes:
        model: the C2CModel when one was given (its fusers are trained in place), else None.
        receiver / sharer: loaded models or ids/paths (None when ``model`` is given).
        receiver_tokenizer / sharer_tokenizers: the tokenizers the data is rendered with.
        aligners: per sharer, the model's own aligner (None: build one for the tokenizers).
        c2c_config: how the trained fuser applies fusion: the model's, the ``init_fuser`` folder's, or
            ``TrainConfig.c2c`` for a fresh fuser.
    """

    model: C2CModel | None
    receiver: ModelRef | None
    sharer: ModelRef | None
    receiver_tokenizer: PreTrainedTokenizerBase
    sharer_tokenizers: list[PreTrainedTokenizerBase]
    aligners: list[TokenAligner | None]
    c2c_config: C2CConfig

    @classmethod
    def build(
        cls,
        model: ModelArg,
        cfg: TrainConfig,
        receiver_tokenizer: PreTrainedTokenizerBase | str | None = None,
        sharer_tokenizer: PreTrainedTokenizerBase | str | None = None,
    ) -> PairSource:
        if isinstance(model, C2CModel):
            if model.receiver_tokenizer is None:
                raise ConfigError(
                    "the C2CModel has no receiver tokenizer, which training needs to render the data; build it with "
                    "receiver_tokenizer= (and sharer_tokenizer=)"
                )
            r_tok = model.receiver_tokenizer
            toks = [t or r_tok for t in model.sharer_tokenizers]
            return cls(model, None, None, r_tok, toks, list(model.aligners), model.config)
        receiver: ModelRef
        sharer: ModelRef
        if model is None:
            if not cfg.receiver or not cfg.sharer:
                raise ConfigError(
                    "no model: pass a C2CModel or (receiver, sharer), or set receiver and sharer (--receiver/--sharer)"
                )
            receiver, sharer = cfg.receiver, cfg.sharer
        elif isinstance(model, (tuple, list)) and len(model) == 2:
            receiver, sharer = model
        else:
            raise ConfigError(
                f"model must be a C2CModel, a (receiver, sharer) pair or None; got {type(model).__name__}"
            )
        r_tok = _tokenizer(receiver_tokenizer, receiver, "receiver")
        s_tok = _tokenizer(sharer_tokenizer, sharer, "sharer")
        return cls(None, receiver, sharer, r_tok, [s_tok], [None], _c2c_config(cfg))


def _c2c_config(cfg: TrainConfig) -> C2CConfig:
    """The fusion settings of a pair given by models or ids: ``TrainConfig.c2c``, or those recorded with
    ``init_fuser`` (the fuser was trained with them; other settings would render other rows for it)."""
    if not cfg.init_fuser:
        return cfg.c2c
    try:
        recorded = read_record(resolve_folder(cfg.init_fuser)).c2c_config
    except (OSError, ValueError) as exc:
        raise ConfigError(f"init_fuser: {exc}") from exc
    if cfg.c2c != C2CConfig() and cfg.c2c != recorded:
        raise ConfigError(
            f"init_fuser {cfg.init_fuser} records c2c settings {recorded.to_dict()}, but the config sets "
            f"{cfg.c2c.to_dict()}; the fuser continues with its recorded settings: drop the c2c options"
        )
    return recorded


def build_renderer(pair: PairSource, cfg: TrainConfig) -> ExampleRenderer:
    """The renderer of the pair's data: chat templates when ``use_chat_template`` says so, else when the
    receiver tokenizer has one and the pair's ``prompt_format`` is not "text"; plain text otherwise."""
    chat = cfg.use_chat_template
    if chat is None:
        chat = has_chat_template(pair.receiver_tokenizer) and pair.c2c_config.prompt_format == "chat"
    aligners = [
        # Always a real aligner: with identical tokenizers it copies ids but still leaves template rows unfused.
        given
        if given is not None
        else TokenAligner(pair.receiver_tokenizer, tok, strategy=pair.c2c_config.token_alignment)
        for given, tok in zip(pair.aligners, pair.sharer_tokenizers)
    ]
    fields = Fields(cfg.layout, cfg.messages_field, cfg.conversations_field, cfg.prompt_field, cfg.response_field)
    return ExampleRenderer(
        pair.receiver_tokenizer,
        aligners,
        chat=chat,
        enable_thinking=cfg.enable_thinking,
        on_template_mismatch=cfg.on_template_mismatch,
        alignment_shift=pair.c2c_config.alignment_shift,
        fields=fields,
        chat_rows=pair.c2c_config.chat_rows,
    )


def _tokenizer(given: PreTrainedTokenizerBase | str | None, model: ModelRef, role: str) -> PreTrainedTokenizerBase:
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given
    name = given or (model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", None))
    if not name:
        raise ConfigError(
            f"no {role} tokenizer: pass {role}_tokenizer= (training renders the chat data with it) "
            f"or give the {role} as a model id/path"
        )
    try:
        tok = load_tokenizer(name, role=role, required=True)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc
    assert tok is not None  # required=True raises instead
    return tok
