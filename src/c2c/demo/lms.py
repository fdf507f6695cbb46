"""The demo's two tiny language models: tokenizers, CPU pretraining and an on-disk cache.

Each model trains its own byte-level BPE tokenizer on its own corpus, is pretrained from scratch
(seeded, deterministic for a given thread count), saved with ``save_pretrained`` and loaded back with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``: the path real checkpoints take.
The cache key is a hash of the world config, the model config and the corpus code version, so a second
run with the same settings reuses the models and a changed setting retrains.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from c2c.demo.corpus import Corpus, Example, corpus_texts, receiver_corpus, sharer_corpus
from c2c.demo.pipeline import Task, run_tasks
from c2c.demo.quality import CHECKS, QUALITY_VERSIONS, Check, greedy, prompt_ids

__all__ = ["RECEIVER", "SHARER", "LMConfig", "greedy", "pretrain", "pretrained_pair", "prompt_ids"]
from c2c.demo.world import World, WorldConfig
from c2c.testing.models import tiny_config
from c2c.testing.tokenizers import build_tokenizer

CORPUS_VERSION = 5
"""Bump when the corpus or pretraining code changes what a cached model would be."""

SCHEDULES: tuple[str, ...] = ("cosine", "wsd")


@dataclass(frozen=True)
class LMConfig:
    """Architecture and pretraining recipe of one tiny LM.

    Pretraining runs in rounds until the model meets its quality bar (:mod:`c2c.demo.quality`): a first
    round of ``epochs`` epochs, then, while the bar is missed, up to ``extra_rounds`` rounds of
    ``extra_epochs`` epochs each (re-warmed at ``extra_lr_scale`` times the peak rate, same schedule).
    A model that still misses its bar is saved and used, and the run says so loudly.
    """

    family: str  # transformers family of c2c.testing.models ("qwen3", "llama", ...)
    chat_template: str  # "chatml" or "llama3" (c2c.testing.tokenizers)
    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    epochs: int
    batch_size: int = 32
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    tie_embeddings: bool = True
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay), see lr_factor
    bar: float = 0.97
    extra_rounds: int = 2
    extra_epochs: int = 10
    extra_lr_scale: float = 0.5
    # The input embeddings train at this multiple of the rate. A name is one token of the sharer's
    # vocabulary, so its embedding row, which must carry the entity's facts, gets a gradient only from the
    # few examples about that entity; at the base rate the facts are learned one attribute at a time.
    # With tied embeddings the output head shares the rate (it is the same tensor).
    embedding_lr_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not 0.0 < self.bar <= 1.0:
            raise ValueError(f"bar must be in (0, 1], got {self.bar}")
        if self.epochs < 1 or self.extra_rounds < 0 or self.extra_epochs < 1:
            raise ValueError("need epochs >= 1, extra_rounds >= 0 and extra_epochs >= 1")
        if not self.embedding_lr_scale > 0:
            raise ValueError(f"embedding_lr_scale must be positive, got {self.embedding_lr_scale}")


RECEIVER = LMConfig("qwen3", "chatml", 512, 4, 128, 4, 2, 32, 384, epochs=28, bar=0.95)
"""Qwen3-style receiver (q/k norms, GQA 4:2, head dim 32); its small vocabulary splits names into pieces.
Its bar: reading correct notes about entities it never saw (val entities)."""
SHARER = LMConfig(
    "llama",
    "llama3",
    1536,
    3,
    112,
    4,
    4,
    28,
    640,
    epochs=40,
    schedule="wsd",
    extra_rounds=3,
    tie_embeddings=False,
    embedding_lr_scale=10.0,
)
"""Llama-style sharer (MHA, 4 KV heads of dim 28); its vocabulary keeps every name whole (one token each).
Warmup-stable-decay schedule: the final decay is where recall jumps. Its bar: answering, and writing a
correct note for, the questions about the entities it was taught (fuser and val entities are checked).
Sized on seed 0's fuser and val entities: a 6-layer, 160-wide sharer needed 60 epochs at 16.5 s each on
one core (0.70 after 40, 0.90 after 50, 0.997 after 60); 3 layers 112 wide with a 320-wide MLP stayed at
0.78 (one attribute never learned, even after 20 more epochs); the same with a 640-wide MLP reached 0.998
after 50 epochs, at about a third of the first one's time per epoch. Untied input and output embeddings
(chosen on seed 1, whose tied sharer stalled on one attribute: 0.80 after 50 epochs, 0.968 after 80; untied
0.960 after 50): a name is one token, so with tied embeddings one vector must both carry the entity's facts
and predict the name in a note. Input embeddings at 10x the rate (chosen on seed 0's fuser and val
entities, whose sharer had needed 80 epochs over four rounds): after 40 epochs 0.978 (every attribute
0.97-0.98) against 0.615 at the base rate (city 0.99, job 0.29: the facts were learned one attribute at a
time), in 248 s on one core."""


def default_cache_dir() -> Path:
    """``$C2C_CACHE/demo`` if set, else ``~/.cache/c2c/demo``."""
    root = os.environ.get("C2C_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "c2c") / "demo"


def cache_key(world: WorldConfig, lm: LMConfig, role: str) -> str:
    """Hash of everything that decides a pretrained model: world, recipe, role, corpus code and quality
    check (the check decides how many rounds run)."""
    recipe = asdict(lm)
    if recipe["embedding_lr_scale"] == 1.0:
        del recipe["embedding_lr_scale"]  # at its default, training is what it was before the field existed
    blob = json.dumps(
        {
            "world": asdict(world),
            "lm": recipe,
            "role": role,
            "corpus": CORPUS_VERSION,
            "quality": QUALITY_VERSIONS[role],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(corpus: Corpus, lm: LMConfig) -> PreTrainedTokenizerBase:
    return build_tokenizer(corpus_texts(corpus), lm.vocab_size, chat_template=lm.chat_template)


def build_model(lm: LMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A freshly initialised model of ``lm``'s family whose special ids match ``tokenizer``."""
    config = tiny_config(
        lm.family,
        num_layers=lm.num_layers,
        hidden_size=lm.hidden_size,
        num_heads=lm.num_heads,
        num_kv_heads=lm.num_kv_heads,
        head_dim=lm.head_dim,
        intermediate_size=lm.intermediate_size,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=lm.tie_embeddings,
    )
    torch.manual_seed(lm.seed)
    return AutoModelForCausalLM.from_config(config)


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = predicted). A pair is the prompt (:func:`prompt_ids`), then the response
    and EOS, encoded on its own as the trainer does; a document is BOS-if-any + text + EOS."""
    eos = [tokenizer.eos_token_id]
    if ex.is_pair:
        p_ids = prompt_ids(tokenizer, ex.prompt)
        r_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + eos
        return p_ids + r_ids, [0] * len(p_ids) + [1] * len(r_ids)
    ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"] + eos
    return ids, [1] * len(ids)


def _batches(
    encoded: list[list[tuple[list[int], list[int]]]], batch_size: int, rng: random.Random
) -> list[list[tuple[list[int], list[int]]]]:
    """One epoch: one alternative per group, batched by similar length (less padding), batches shuffled."""
    picked = [rng.choice(g) for g in encoded]
    rng.shuffle(picked)
    out = []
    chunk = batch_size * 32
    for i in range(0, len(picked), chunk):
        block = sorted(picked[i : i + chunk], key=lambda x: len(x[0]))
        out += [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
    rng.shuffle(out)
    return out


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 outside the loss), each [B, T]."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, (x, m) in enumerate(batch):
        ids[b, : len(x)] = torch.tensor(x)
        att[b, : len(x)] = 1
        labels[b, : len(x)] = torch.tensor([t if k else -100 for t, k in zip(x, m)])
    return ids, att, labels


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warmup, then cosine to 10 % ("cosine"), or constant until the last
    20 % of steps and a linear decay to 10 % there ("wsd": memorising facts keeps gaining from a high rate)."""
    warm = min(1.0, (step + 1) / warmup)
    frac = min(1.0, step / total)
    if schedule == "cosine":
        return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
    if schedule == "wsd":
        return warm * (1.0 if frac < 0.8 else 1.0 - 0.9 * (frac - 0.8) / 0.2)
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'wsd'")


def _round(
    model: PreTrainedModel,
    opt: torch.optim.Optimizer,
    encoded: list[list[tuple[list[int], list[int]]]],
    lm: LMConfig,
    rng: random.Random,
    *,
    epochs: int,
    peak_lr: float,
    pad_id: int,
    desc: str,
    position: int,
) -> tuple[list[float], list[float]]:
    """One pretraining round: ``epochs`` epochs under ``lm.schedule`` peaking at ``peak_lr``.
    Returns the per-step losses and the per-epoch mean losses."""
    steps_per_epoch = math.ceil(len(encoded) / lm.batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(lm.warmup * total))
    losses: list[float] = []
    curve: list[float] = []
    step = 0
    model.train()
    with tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, position=position) as bar:
        for _ in range(epochs):
            for batch in _batches(encoded, lm.batch_size, rng):
                for group in opt.param_groups:
                    group["lr"] = peak_lr * lr_factor(step, total, warm, lm.schedule) * group.get("lr_scale", 1.0)
                ids, att, labels = _collate(batch, pad_id)
                loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
            curve.append(sum(losses[-steps_per_epoch:]) / steps_per_epoch)
    model.eval()
    return losses, curve


LAGGING_REPEAT = 3
"""In an extra round, the groups of an attribute still below the bar are read this many times per epoch."""


def _practise_lagging(
    encoded: list[list[tuple[list[int], list[int]]]], corpus: Corpus, quality: dict[str, Any] | None, lm: LMConfig
) -> list[list[tuple[list[int], list[int]]]]:
    """The corpus for an extra round: every group once, and the groups about an attribute whose checked
    accuracy is still below the bar :data:`LAGGING_REPEAT` times (a model tends to lag on one attribute
    while it knows the others; more practice on it is what it needs, not more of everything)."""
    lagging = {a for a, acc in ((quality or {}).get("by_attribute") or {}).items() if acc < lm.bar}
    out: list[list[tuple[list[int], list[int]]]] = []
    for enc, group in zip(encoded, corpus, strict=True):
        out += [enc] * (LAGGING_REPEAT if group[0].attribute in lagging else 1)
    return out


def _param_groups(model: PreTrainedModel, lm: LMConfig) -> list[dict[str, Any]]:
    """One AdamW group, or two when the input embeddings train at ``lm.embedding_lr_scale`` times the rate
    (``lr_scale``, applied by :func:`_round` with the schedule)."""
    params = list(model.parameters())
    if lm.embedding_lr_scale == 1.0:
        return [{"params": params}]
    emb = model.get_input_embeddings().weight
    rest = [p for p in params if p is not emb]
    return [{"params": rest, "lr_scale": 1.0}, {"params": [emb], "lr_scale": lm.embedding_lr_scale}]


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    lm: LMConfig,
    *,
    desc: str,
    check: Check | None = None,
    position: int = 0,
) -> dict[str, Any]:
    """Train ``model`` from scratch on ``corpus`` (AdamW) in rounds until ``check`` reaches ``lm.bar``.

    The first round has ``lm.epochs`` epochs at ``lm.lr``; while ``check(model)["score"] < lm.bar``, up to
    ``lm.extra_rounds`` more rounds of ``lm.extra_epochs`` epochs at ``lm.lr * lm.extra_lr_scale`` follow
    (each warmed up and decayed again: recall is read after a decay, where it peaks), in which the groups
    of an attribute still below the bar are read :data:`LAGGING_REPEAT` times. Without ``check`` one round
    runs. Returns a log with every round's quality and whether the bar was met."""
    encoded = [[encode_example(tokenizer, ex) for ex in group] for group in corpus]
    rng = random.Random(lm.seed)
    torch.manual_seed(lm.seed)
    opt = torch.optim.AdamW(_param_groups(model, lm), lr=lm.lr, weight_decay=lm.weight_decay, betas=(0.9, 0.98))
    t0 = time.perf_counter()
    losses: list[float] = []
    curve: list[float] = []
    rounds: list[dict[str, Any]] = []
    quality: dict[str, Any] | None = None
    for r in range(1 + lm.extra_rounds):
        epochs = lm.epochs if r == 0 else lm.extra_epochs
        peak = lm.lr if r == 0 else lm.lr * lm.extra_lr_scale
        label = desc if r == 0 else f"{desc} (extra round {r}: bar {lm.bar:.2f} missed)"
        step_losses, epoch_losses = _round(
            model,
            opt,
            encoded if r == 0 else _practise_lagging(encoded, corpus, quality, lm),
            lm,
            rng,
            epochs=epochs,
            peak_lr=peak,
            pad_id=tokenizer.pad_token_id,
            desc=label,
            position=position,
        )
        losses += step_losses
        curve += epoch_losses
        quality = check(model) if check is not None else None
        if quality is not None:
            tqdm.write(
                f"[c2c demo] {desc}: after {sum(r['epochs'] for r in rounds) + epochs} epochs, quality {quality}"
            )
        rounds.append({"epochs": epochs, "peak_lr": peak, "seconds": time.perf_counter() - t0, "quality": quality})
        if quality is None or quality["score"] >= lm.bar:
            break
    win = max(1, min(20, len(losses) // 10))
    return {
        "steps": len(losses),
        "epochs": sum(r["epochs"] for r in rounds),
        "seconds": time.perf_counter() - t0,
        "first_loss": sum(losses[:win]) / win,
        "final_loss": sum(losses[-win:]) / win,
        "epoch_losses": [round(x, 4) for x in curve],
        "rounds": rounds,
        "quality": quality,
        "bar": lm.bar,
        "bar_met": None if quality is None else quality["score"] >= lm.bar,
    }


def model_dir(role: str, lm: LMConfig, world: WorldConfig, cache_dir: Path) -> Path:
    return cache_dir / f"{role}-{cache_key(world, lm, role)}"


_CORPORA: dict[str, Callable[[World], Corpus]] = {"receiver": receiver_corpus, "sharer": sharer_corpus}


def _pretrain_job(role: str, lm: LMConfig, world: WorldConfig, path: Path) -> dict:
    """Train one model from scratch on one CPU thread and save it under ``path`` (runs in a worker process).

    One thread per model makes pretraining deterministic whatever the machine, and two models training
    side by side use two cores better than one model on two threads (tiny matrices scale poorly)."""
    torch.set_num_threads(1)
    the_world = World.generate(world)
    corpus = _CORPORA[role](the_world)
    tokenizer = train_tokenizer(corpus, lm)
    model = build_model(lm, tokenizer)
    check = CHECKS[role](the_world, tokenizer)
    info = pretrain(
        model, tokenizer, corpus, lm, desc=f"pretrain {role} ({lm.family})", check=check, position=_POSITIONS[role]
    )
    info["parameters"] = sum(p.numel() for p in model.parameters())
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / DONE).write_text(json.dumps({**info, "lm": asdict(lm), "world": asdict(world)}, indent=2))
    return info


_POSITIONS = {"receiver": 0, "sharer": 1}
DONE = "pretrain.json"


Pair = dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]]


def pretrain_tasks(
    world: WorldConfig, receiver: LMConfig, sharer: LMConfig, cache_dir: Path, *, retrain: bool = False
) -> tuple[list[Task], dict[str, Path]]:
    """Tasks that pretrain the models missing from ``cache_dir`` (all of them with ``retrain``), named
    ``pretrain:receiver`` / ``pretrain:sharer``, and the folder of each role's model."""
    lms = {"receiver": receiver, "sharer": sharer}
    paths = {role: model_dir(role, lm, world, cache_dir) for role, lm in lms.items()}
    tasks = [
        Task(f"pretrain:{role}", _pretrain_job, (role, lms[role], world, paths[role]))
        for role, p in paths.items()
        if retrain or not (p / DONE).exists()
    ]
    return tasks, paths


def load_pair(paths: dict[str, Path], *, fresh: set[str]) -> Pair:
    """``{role: (model, tokenizer, info)}`` loaded back from disk with ``from_pretrained`` (a first run
    exercises exactly what a cached run does); ``info["cached"]`` is False for the roles in ``fresh``."""
    out: Pair = {}
    for role, path in paths.items():
        if not (path / DONE).exists():
            raise FileNotFoundError(f"no pretrained {role} under {path}; pretrain it first (pretrain_tasks)")
        info = json.loads((path / DONE).read_text())
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        out[role] = (model, tokenizer, {**info, "cached": role not in fresh, "path": str(path)})
    return out


def pretrained_pair(
    world: WorldConfig,
    receiver: LMConfig,
    sharer: LMConfig,
    cache_dir: Path,
    *,
    retrain: bool = False,
    parallel: bool = True,
) -> Pair:
    """The receiver and the sharer of ``world``: loaded from ``cache_dir`` when cached, else pretrained
    (both at once in two worker processes when ``parallel``) and saved there first."""
    tasks, paths = pretrain_tasks(world, receiver, sharer, cache_dir, retrain=retrain)
    run_tasks(tasks, workers=2 if parallel else 1, desc="pretrain")
    return load_pair(paths, fresh={t.subject for t in tasks})
