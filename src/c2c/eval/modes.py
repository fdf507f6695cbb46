"""Answering modes behind one interface: receiver only, sharer only, text-to-text, routing, C2C.

Every mode takes a batch of :class:`Query` and returns a :class:`ModeOutput` (one text per query, the
batch's per-stage seconds, per-query extras such as the T2T note or the routing decision). The runner, the
CLI and the benchmark suite only see this interface. The cache-enrichment oracle lives in
:mod:`c2c.eval.oracle`; the C2C mode wraps ``C2CModel.generate``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from c2c.config import PromptFormat
from c2c.eval.generation import Messages, encode_prompts, generate_timed, plain_text
from c2c.eval.parsing import strip_thinking
from c2c.eval.prompts import NOTE_CONTEXT_TEMPLATE, NOTE_TEMPLATE
from c2c.hf import StageTimer, left_pad, model_device, name_of, pad_token_id, position_ids_from_mask

__all__ = [
    "C2CMode",
    "HFMode",
    "Mode",
    "ModeOutput",
    "PerplexityRule",
    "Query",
    "ReceiverOnly",
    "Routing",
    "SharerOnly",
    "SubjectRule",
    "TextToText",
]


@dataclass
class Query:
    """One question as the modes see it.

    ``prompt`` is the full user message (question, options, answer-format instruction); ``question`` is the
    question with its options but without the instruction (what T2T's note prompt and routing read).
    """

    uid: str
    prompt: str
    question: str
    subject: str | None = None
    system_prompt: str | None = None

    def messages(self, content: str | None = None) -> Messages:
        msgs: Messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*msgs, {"role": "user", "content": self.prompt if content is None else content}]


@dataclass
class ModeOutput:
    """Answers for one batch. ``timings``: seconds per stage for the whole batch."""

    texts: list[str]
    timings: dict[str, float]
    extras: list[dict[str, Any]] = field(default_factory=list)


class Mode(ABC):
    """A way of answering queries; ``name`` labels its records and report rows."""

    name: str

    @abstractmethod
    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        """Answer ``queries`` as one batch (greedy)."""

    def describe(self) -> dict[str, Any]:
        """Configuration recorded in the run JSON."""
        return {"name": self.name, "type": type(self).__name__}


def _model_name(model: Any) -> str:
    return name_of(model)


class HFMode(Mode):
    """One plain HF causal LM answers alone (receiver-only / sharer-only baselines)."""

    role = "receiver"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str | None = None,
        enable_thinking: bool = False,
        prompt_format: PromptFormat = "chat",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.name = name or self.role
        self.enable_thinking = enable_thinking
        self.prompt_format = prompt_format

    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        timer = StageTimer(model_device(self.model))
        seqs = encode_prompts(
            self.tokenizer,
            [q.messages() for q in queries],
            prompt_format=self.prompt_format,
            enable_thinking=self.enable_thinking,
        )
        texts, n_new = generate_timed(
            self.model,
            self.tokenizer,
            seqs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            timer=timer,
            prefill_stage=f"{self.role}_prefill",
        )
        return ModeOutput(texts, timer.seconds, [{"new_tokens": n} for n in n_new])

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": _model_name(self.model),
            "enable_thinking": self.enable_thinking,
            "prompt_format": self.prompt_format,
        }


class ReceiverOnly(HFMode):
    """Baseline: the receiver answers alone."""

    role = "receiver"


class SharerOnly(HFMode):
    """Baseline: the sharer answers alone (stage names say "sharer_prefill")."""

    role = "sharer"


class TextToText(Mode):
    """Baseline: the sharer writes a background note, the receiver answers with the note in its context.

    Stages: ``sharer_prefill`` + ``note`` (the sharer decoding its note, at most ``note_max_new_tokens``),
    then ``receiver_prefill`` + ``decode`` of the answer.
    """

    def __init__(
        self,
        receiver: PreTrainedModel,
        receiver_tokenizer: PreTrainedTokenizerBase,
        sharer: PreTrainedModel,
        sharer_tokenizer: PreTrainedTokenizerBase,
        *,
        note_template: str = NOTE_TEMPLATE,
        note_context_template: str = NOTE_CONTEXT_TEMPLATE,
        note_max_new_tokens: int = 64,
        name: str = "t2t",
        enable_thinking: bool = False,
        prompt_format: PromptFormat = "chat",
    ) -> None:
        if "{question}" not in note_template:
            raise ValueError(f"note_template must contain {{question}}; got {note_template!r}")
        if "{note}" not in note_context_template or "{prompt}" not in note_context_template:
            raise ValueError(
                f"note_context_template must contain {{note}} and {{prompt}}; got {note_context_template!r}"
            )
        if note_max_new_tokens < 1:
            raise ValueError(f"note_max_new_tokens must be >= 1, got {note_max_new_tokens}")
        self.receiver, self.receiver_tokenizer = receiver, receiver_tokenizer
        self.sharer, self.sharer_tokenizer = sharer, sharer_tokenizer
        self.note_template, self.note_context_template = note_template, note_context_template
        self.note_max_new_tokens = note_max_new_tokens
        self.name, self.enable_thinking = name, enable_thinking
        self.prompt_format = prompt_format

    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        timer = StageTimer(model_device(self.receiver))
        note_msgs = [q.messages(self.note_template.format(question=q.question)) for q in queries]
        notes, note_tokens = generate_timed(
            self.sharer,
            self.sharer_tokenizer,
            encode_prompts(
                self.sharer_tokenizer, note_msgs, prompt_format=self.prompt_format, enable_thinking=self.enable_thinking
            ),
            max_new_tokens=self.note_max_new_tokens,
            timer=timer,
            prefill_stage="sharer_prefill",
            decode_stage="note",
        )
        notes = [" ".join(n.split()) for n in notes]  # one paragraph: the note is context, not a turn
        answer_msgs = [
            q.messages(self.note_context_template.format(note=n, prompt=q.prompt)) for q, n in zip(queries, notes)
        ]
        texts, n_new = generate_timed(
            self.receiver,
            self.receiver_tokenizer,
            encode_prompts(
                self.receiver_tokenizer,
                answer_msgs,
                prompt_format=self.prompt_format,
                enable_thinking=self.enable_thinking,
            ),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            timer=timer,
            prefill_stage="receiver_prefill",
        )
        extras = [{"note": n, "note_tokens": k, "new_tokens": m} for n, k, m in zip(notes, note_tokens, n_new)]
        return ModeOutput(texts, timer.seconds, extras)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "receiver": _model_name(self.receiver),
            "sharer": _model_name(self.sharer),
            "note_template": self.note_template,
            "note_context_template": self.note_context_template,
            "note_max_new_tokens": self.note_max_new_tokens,
            "prompt_format": self.prompt_format,
        }


RoutingRule = Callable[[Sequence[Query], StageTimer], list[int]]
"""Maps a batch of queries to the index of the candidate (0 = receiver, 1 = sharer) that answers each."""


class PerplexityRule:
    """Route each query to the model that is *least surprised by the question*.

    Each candidate scores the query's ``question`` text (question + options, no instruction, no template)
    by its negative log-likelihood per character (characters, not tokens, so that models with different
    tokenizers are comparable). The lowest score answers; ties go to the first candidate (the receiver).
    Rationale: a model that predicts a question's wording well has seen its subject matter in training.
    Costs one prefill of the question per candidate, charged to the ``routing`` stage.
    """

    name = "perplexity"

    def __init__(self, models: Sequence[PreTrainedModel], tokenizers: Sequence[PreTrainedTokenizerBase]) -> None:
        self.models, self.tokenizers = list(models), list(tokenizers)

    @torch.no_grad()
    def nll_per_char(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[float]:
        device = next(model.parameters()).device
        seqs = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        seqs = [s if len(s) >= 2 else s + s for s in seqs]  # one-token texts still need one prediction
        ids, mask = left_pad(seqs, pad_token_id(model, tokenizer), device)

        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        nll = -(logp * mask[:, 1:]).sum(-1)
        return [float(n) / max(1, len(t)) for n, t in zip(nll.tolist(), texts)]

    def __call__(self, queries: Sequence[Query], timer: StageTimer) -> list[int]:
        texts = [q.question for q in queries]
        with timer.stage("routing"):
            scores = [self.nll_per_char(m, t, texts) for m, t in zip(self.models, self.tokenizers)]
        choice = []
        for i in range(len(queries)):
            col = [s[i] if math.isfinite(s[i]) else math.inf for s in scores]
            choice.append(min(range(len(col)), key=lambda k: (col[k], k)))
        return choice


class SubjectRule:
    """Route by subject with a fixed table ``{subject: candidate index}`` (e.g. the better model per subject
    on a development run, see :func:`c2c.eval.report.fit_subject_routing`); unknown subjects go to
    ``default``."""

    name = "subject"

    def __init__(self, table: dict[str, int], default: int = 0) -> None:
        self.table, self.default = dict(table), default

    def __call__(self, queries: Sequence[Query], timer: StageTimer) -> list[int]:
        return [self.table.get(q.subject or "", self.default) for q in queries]


class Routing(Mode):
    """Baseline: one model answers each query, picked by ``rule`` (default :class:`PerplexityRule`).

    ``candidates`` are answering modes (default: receiver only, sharer only); queries routed to the same
    candidate are answered as one batch. The decision is in each record's ``extras["routed_to"]``.
    """

    def __init__(
        self,
        candidates: Sequence[HFMode],
        rule: RoutingRule | None = None,
        *,
        name: str = "routing",
    ) -> None:
        if len(candidates) < 2:
            raise ValueError("routing needs at least two candidate modes (e.g. receiver and sharer)")
        self.candidates = list(candidates)
        self.rule = rule or PerplexityRule([c.model for c in candidates], [c.tokenizer for c in candidates])
        self.name = name

    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        timer = StageTimer(model_device(self.candidates[0].model))
        choice = self.rule(queries, timer)
        texts: list[str] = [""] * len(queries)
        extras: list[dict[str, Any]] = [{"routed_to": self.candidates[c].name} for c in choice]
        for k, cand in enumerate(self.candidates):
            idx = [i for i, c in enumerate(choice) if c == k]
            if not idx:
                continue
            out = cand.generate([queries[i] for i in idx], max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
            timer.add(out.timings)
            for i, t, e in zip(idx, out.texts, out.extras):
                texts[i] = t
                extras[i].update(e)
        return ModeOutput(texts, timer.seconds, extras)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "rule": getattr(self.rule, "name", type(self.rule).__name__),
            "candidates": [c.describe() for c in self.candidates],
        }


class C2CMode(Mode):
    """C2C: the receiver answers from its cache fused with the sharer's (``C2CModel.generate``).

    ``model_mode="receiver"`` / ``"sharer"`` run the C2C model's own unfused paths, which share every line
    of code with the fused path except fusion (the fairest latency comparison).
    """

    def __init__(
        self,
        model: Any,
        *,
        model_mode: str = "c2c",
        name: str | None = None,
        enable_thinking: bool = False,
    ) -> None:
        if model_mode not in ("c2c", "receiver", "sharer"):
            raise ValueError(f"model_mode must be 'c2c', 'receiver' or 'sharer', got {model_mode!r}")
        if getattr(model, "receiver_tokenizer", None) is None:
            raise ValueError("C2CMode needs a C2CModel built with receiver_tokenizer= (it answers text questions)")
        self.model, self.model_mode = model, model_mode
        self.name = name or model_mode
        self.enable_thinking = enable_thinking

    def generate(self, queries: Sequence[Query], *, max_new_tokens: int, min_new_tokens: int = 0) -> ModeOutput:
        if getattr(self.model, "training", False):
            raise ValueError("the C2C model is in training mode (stochastic gates, dropout); call model.eval() first")
        # The fuser is prompted the way it was trained (its recorded prompt_format).
        text = self.model.config.prompt_format == "text"
        res = self.model.generate(
            [plain_text(q.messages()) if text else q.messages() for q in queries],
            mode=self.model_mode,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            enable_thinking=self.enable_thinking,
            return_dict=True,
        )
        # The runner measures the batch's wall time itself; keep the model's stage split only.
        timings = {k: float(v) for k, v in res.timings.items() if k != "total" and float(v) > 0.0}
        texts = [strip_thinking(t) for t in res.texts]
        return ModeOutput(texts, timings, [{"new_tokens": n} for n in res.new_tokens])

    def gate_states(self) -> list[dict[str, Any]]:
        """Per sharer, per receiver layer: hard gate states and gate logits (when the fuser has gates)."""
        out = []
        for k, fuser in enumerate(self.model.fuser_list):
            layers = {}
            states = fuser.hard_gates()
            for key, layer in fuser.layers.items():
                k_open, v_open = states[int(key)]
                logit = getattr(layer, "gate_logit", None)
                layers[str(int(key))] = {
                    "key_open": bool(k_open),
                    "value_open": bool(v_open),
                    "logits": None if logit is None else [float(x) for x in logit.detach().float().tolist()],
                }
            out.append({"sharer": k, "layers": layers})
        return out

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            **super().describe(),
            "model_mode": self.model_mode,
            "receiver": _model_name(self.model.receiver),
            "sharers": [_model_name(s) for s in self.model.sharers],
        }
        if self.model_mode == "c2c":
            info["config"] = self.model.config.to_dict() if hasattr(self.model.config, "to_dict") else {}
            info["gates"] = self.gate_states()
        return info
