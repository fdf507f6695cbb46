"""The library's bad-input catalogue: every input that once gave a silent wrong answer (or a deep, unclear
error) now gets a clear error that names the problem and the fix, or a correct result.

Each case builds its own models and files (nothing is shared between cases) and states the exception type
and two patterns: one for the problem, one for the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from c2c import C2CConfig, C2CModel, FuserConfig
from c2c.hf import chat_text
from c2c.persistence import CONFIG_NAME, WEIGHTS_NAME
from c2c.testing.models import tiny_model

FUSER = FuserConfig(hidden_size=16, intermediate_size=16, dropout=0.0)
PROMPT = [5, 6, 7, 8, 9]


def _pair(
    *, r_vocab: int = 512, s_vocab: int = 512, s_family: str = "llama", open_gates: bool = True, **kw
) -> C2CModel:
    r = tiny_model("qwen3", num_layers=2, vocab_size=r_vocab, seed=1)
    s = tiny_model(s_family, num_layers=2, vocab_size=s_vocab, seed=2)
    model = C2CModel.from_models(r, s, fuser_config=FUSER, seed=0, **kw)
    if open_gates:
        for f in model.fuser_list:
            f.set_gates(True)
    return model


def _saved(tmp: Path, **kw) -> Path:
    model = _pair(**kw)
    model.receiver.save_pretrained(tmp / "receiver")
    model.sharers[0].save_pretrained(tmp / "sharer")
    fresh = C2CModel.from_models(
        type(model.receiver).from_pretrained(tmp / "receiver"),
        type(model.sharers[0]).from_pretrained(tmp / "sharer"),
        fuser_config=FUSER,
        seed=0,
    )
    fresh.save_pretrained(tmp / "fuser")
    return tmp / "fuser"


def _edit_config(folder: Path, edit: Callable[[dict], None]) -> Path:
    path = folder / CONFIG_NAME
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------------- the cases


def nan_in_the_sharer_cache(tmp: Path) -> None:
    model = _pair()
    with torch.no_grad():
        model.sharers[0].model.layers[0].input_layernorm.weight.fill_(float("nan"))
    model.generate(PROMPT, max_new_tokens=3)


def inf_in_the_fuser_weights(tmp: Path) -> None:
    model = _pair()
    with torch.no_grad():
        model.fuser_list[0].key.proj_out.weight[1, 0, 0] = float("inf")  # layer 1's projection
    model.generate(PROMPT, max_new_tokens=3)


def nan_in_saved_fuser_weights(tmp: Path) -> None:
    folder = _saved(tmp)
    weights = load_file(str(folder / WEIGHTS_NAME))
    name = next(n for n in weights if n.endswith("proj_out.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / WEIGHTS_NAME))
    C2CModel.from_pretrained(folder)


def swapped_pair_with_equal_shapes_and_other_vocabularies(tmp: Path) -> None:
    from c2c.testing.tokenizers import build_tokenizer, default_corpus

    corpus = default_corpus(60)
    r_tok, s_tok = build_tokenizer(corpus, 300, model="bpe"), build_tokenizer(corpus, 380, model="bpe")
    r = tiny_model("qwen3", num_layers=2, vocab_size=len(r_tok), seed=1)
    s = tiny_model("qwen3", num_layers=2, vocab_size=len(s_tok), seed=2)
    model = C2CModel.from_models(r, s, fuser_config=FUSER, receiver_tokenizer=r_tok, sharer_tokenizer=s_tok)
    model.save_pretrained(tmp / "fuser")
    # one family, same cache shapes on both sides: only the vocabularies tell receiver and sharer apart
    C2CModel.from_pretrained(tmp / "fuser", receiver=model.sharers[0], sharer=model.receiver)


def receiver_of_another_vocabulary(tmp: Path) -> None:
    model = _pair(r_vocab=512, open_gates=False)
    model.save_pretrained(tmp / "fuser")
    C2CModel.from_pretrained(
        tmp / "fuser", receiver=tiny_model("qwen3", num_layers=2, vocab_size=520), sharer=model.sharers[0]
    )


def token_id_beyond_the_vocabulary(tmp: Path) -> None:
    _pair().generate([5, 6, 700], max_new_tokens=2)


def negative_token_id(tmp: Path) -> None:
    _pair().encode([[5, -100, 7]], responses=[[3]])
    _pair()(_pair().collate([[_aligned([5, 6, 7])]], responses=[[-100]]))


def _aligned(ids: list[int]):
    from c2c.alignment.records import AlignedPrompt

    return AlignedPrompt.identity(ids)


def config_field_of_the_wrong_type(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c["fuser_configs"][0].update(hidden_size="16"))
    C2CModel.from_pretrained(folder)


def config_from_a_newer_format(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c.update(format_version=99))
    C2CModel.from_pretrained(folder)


def config_format_version_not_an_integer(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c.update(format_version="1"))
    C2CModel.from_pretrained(folder)


def config_spec_field_of_the_wrong_type(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c["receiver"].update(num_kv_heads="2"))
    C2CModel.from_pretrained(folder)


def config_layer_map_outside_the_model(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c["layer_maps"][0].update({"7": 0}))
    C2CModel.from_pretrained(folder)


def config_unknown_c2c_option(tmp: Path) -> None:
    folder = _edit_config(_saved(tmp), lambda c: c["c2c_config"].update(alignment="longest"))
    C2CModel.from_pretrained(folder)


def chat_messages_to_a_plain_text_fuser(tmp: Path) -> None:
    model = _pair(config=C2CConfig(prompt_format="text"))
    model.encode([{"role": "user", "content": "hi"}])


def chat_messages_without_a_chat_template(tmp: Path) -> None:
    from c2c.testing.tokenizers import build_tokenizer, default_corpus

    tok = build_tokenizer(default_corpus(40), 300, model="bpe", chat_template=None)
    chat_text(tok, [{"role": "user", "content": "hi"}])


def include_response_with_a_shift(tmp: Path) -> None:
    C2CConfig(include_response=True, alignment_shift=1)


def c2c_option_of_the_wrong_type(tmp: Path) -> None:
    C2CConfig.from_dict({"alignment_shift": "1"})


def fuser_option_of_the_wrong_type(tmp: Path) -> None:
    FuserConfig.from_dict({"hidden_size": 16.5})


def negative_fuser_input_noise(tmp: Path) -> None:
    FuserConfig(input_noise=-0.1)


def demo_seed_replicate_zero(tmp: Path) -> None:
    from c2c.demo.config import DemoConfig, StudyConfig

    DemoConfig(study=StudyConfig(fuser_seeds=(0, 1)))  # replicate 0 would silently duplicate the headline


def sharer_of_another_vocabulary_without_tokenizer(tmp: Path) -> None:
    r = tiny_model("qwen3", num_layers=2, vocab_size=512, seed=1)
    s = tiny_model("llama", num_layers=2, vocab_size=600, seed=2)
    C2CModel.from_models(r, s, fuser_config=FUSER)


@dataclass(frozen=True)
class Case:
    run: Callable[[Path], None]
    error: type[BaseException]
    problem: str
    fix: str


CATALOGUE: dict[str, Case] = {
    "nan in the sharer cache": Case(
        nan_in_the_sharer_cache, FloatingPointError, "sharer 0's KV-cache holds NaN", "bfloat16 or float32"
    ),
    "inf in the fuser weights": Case(
        inf_in_the_fuser_weights, FloatingPointError, "weights hold NaN or inf", "damaged or training diverged"
    ),
    "nan in saved fuser weights": Case(
        nan_in_saved_fuser_weights, ValueError, "holds NaN or inf", "earlier checkpoint"
    ),
    "swapped pair, other vocabularies": Case(
        swapped_pair_with_equal_shapes_and_other_vocabularies, ValueError, "look swapped", "pass receiver="
    ),
    "receiver of another vocabulary": Case(
        receiver_of_another_vocabulary, ValueError, "vocab_size: recorded 512, got 520", "train a new fuser"
    ),
    "sharer of another vocabulary, no tokenizer": Case(
        sharer_of_another_vocabulary_without_tokenizer,
        ValueError,
        "another vocabulary (600 ids",
        "pass sharer_tokenizer=",
    ),
    "token id beyond the vocabulary": Case(
        token_id_beyond_the_vocabulary,
        ValueError,
        "token id 700 is outside the receiver's vocabulary",
        "this model's tokenizer",
    ),
    "negative token id": Case(negative_token_id, ValueError, "-100", "strip"),
    "config field of the wrong type": Case(config_field_of_the_wrong_type, ValueError, "hidden_size", "wrong type"),
    "config from a newer format": Case(config_from_a_newer_format, ValueError, "format_version 99", "upgrade c2c"),
    "format_version not an integer": Case(
        config_format_version_not_an_integer, ValueError, "format_version", "positive integer"
    ),
    "spec field of the wrong type": Case(config_spec_field_of_the_wrong_type, ValueError, "num_kv_heads", "wrong type"),
    "layer map outside the model": Case(
        config_layer_map_outside_the_model, ValueError, "maps 7 -> 0", "outside the recorded KV layers"
    ),
    "unknown c2c option in a file": Case(
        config_unknown_c2c_option, ValueError, "unknown C2CConfig fields", "newer c2c"
    ),
    "chat messages to a plain-text fuser": Case(
        chat_messages_to_a_plain_text_fuser, ValueError, "plain-text prompts", "pass the prompt as a string"
    ),
    "chat messages without a template": Case(
        chat_messages_without_a_chat_template, ValueError, "no chat template", "set tokenizer.chat_template"
    ),
    "include_response with a shift": Case(
        include_response_with_a_shift, ValueError, "include_response", "alignment_shift=0"
    ),
    "c2c option of the wrong type": Case(c2c_option_of_the_wrong_type, TypeError, "alignment_shift", "integer"),
    "fuser option of the wrong type": Case(fuser_option_of_the_wrong_type, TypeError, "hidden_size", "expected int"),
    "negative fuser input noise": Case(negative_fuser_input_noise, ValueError, "input_noise must be", "0 disables it"),
    "demo seed replicate 0": Case(
        demo_seed_replicate_zero, ValueError, "fuser_seeds [0, 1] must be distinct integers >= 1", "() for no"
    ),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_gets_a_clear_error(name, tmp_path):
    case = CATALOGUE[name]
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    message = str(info.value)
    assert case.problem in message, message
    assert case.fix in message, message


def test_save_pretrained_keeps_a_readme_the_user_wrote(tmp_path):
    model = _pair()
    folder = tmp_path / "fuser"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my notes\n"
    assert (folder / CONFIG_NAME).is_file()
    # our own card is refreshed on the next save
    other = tmp_path / "other"
    model.save_pretrained(other)
    assert "library_name: c2c" in (other / "README.md").read_text()
    model.save_pretrained(other)
    assert "library_name: c2c" in (other / "README.md").read_text()
