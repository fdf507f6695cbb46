"""The offline demo experiment, end to end: world -> two tiny LMs (trained to their bars) -> baselines ->
fusers -> controls -> interleaved timing -> report; with ``study=True`` also the grid, the ablations and
the fuser size and data sweeps.

Every accuracy called "test" is measured on the held-out entities (``world.split("test")``), which neither
the receiver nor any fuser ever saw. Choices look at the ``val`` entities only (see :mod:`c2c.demo.config`).
C2C goes through the library's own ``C2CModel``, ``c2c.train.train`` and ``C2CModel.from_pretrained``.
Prompts are plain text (``C2CConfig.prompt_format="text"``): the demo's models were pretrained without
chat templates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from c2c.config import C2CConfig
from c2c.demo import paths as P
from c2c.demo.config import DemoConfig
from c2c.demo.corpus import qa_rows, split_questions, write_jsonl
from c2c.demo.fusers import FuserJob, Recipe, fuser_logs, fuser_tasks
from c2c.demo.lms import default_cache_dir, load_pair, pretrain_tasks
from c2c.demo.pipeline import run_tasks
from c2c.demo.study import data_sweep_questions, evaluate_study, study_jobs
from c2c.demo.targets import targets
from c2c.demo.timing import interleaved
from c2c.demo.world import Question, World, chance_accuracy, note_request, read_prompt, swap_partners
from c2c.eval.modes import C2CMode
from c2c.fuser import FuserConfig
from c2c.model import C2CModel

HEADLINE = ("c2c", "c2c_identical")
"""Fusers of every run: the headline C2C cell and the identical control (the receiver as its own sharer)."""


@dataclass
class Phases:
    """Wall time per phase (seconds), printed as the run goes."""

    seconds: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"[c2c demo] {name} ...")
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t0
        self.log(f"[c2c demo] {name}: {self.seconds[name]:.1f} s")
        return out


def _gen_timings(model: C2CModel, prompt: str, mode: P.Mode, max_new_tokens: int) -> tuple[str, dict[str, float]]:
    res = model.generate(prompt, mode=mode, max_new_tokens=max_new_tokens, return_dict=True)
    return res.texts[0], {k: float(v) for k, v in res.timings.items()}


def _bar_warning(role: str, info: dict[str, Any]) -> str | None:
    if info.get("bar_met", True):
        return None
    q = info.get("quality") or {}
    return (
        f"the {role} missed its quality bar ({q.get('score', float('nan')):.3f} < {info.get('bar')}) after "
        f"{info.get('epochs')} epochs: the accuracies below measure a model that did not learn its facts, not C2C"
    )


def run_demo(
    config: DemoConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    retrain: bool = False,
    study: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the experiment; writes ``results.json`` (and the data files and fusers) under ``out_dir``.

    Returns the results dictionary (see :mod:`c2c.demo.report` for the text and figures made from it)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    torch.manual_seed(config.seed)
    phases = Phases(log=log)
    cfg = config
    warnings: list[str] = []

    # 1. World and data files.
    world = phases.run("world", lambda: World.generate(cfg.world))
    test_qs, val_qs, fuser_qs = (split_questions(world, s) for s in ("test", "val", "fuser"))
    data = {
        "train": write_jsonl(qa_rows(fuser_qs), out / "data" / "fuser_train.jsonl"),
        "val": write_jsonl(qa_rows(val_qs), out / "data" / "val.jsonl"),
        "test": write_jsonl(qa_rows(test_qs), out / "data" / "test.jsonl"),
    }
    (out / "data" / "world.json").write_text(json.dumps(world.to_dict(), indent=1))

    # 2. The two tiny LMs (trained to their bars) and the fusers, as one task graph over two worker
    #    processes: the identical control's fuser trains while the sharer is still pretraining. Each fuser
    #    is trained by c2c.train; models and fusers are cached and loaded back with from_pretrained.
    jobs = [FuserJob("c2c", dict(cfg.variant)), FuserJob("c2c_identical", dict(cfg.variant), identical=True)]
    # The data sweep's training questions: the first n fuser entities' (written out, and probed below).
    sweep_qs = {n: data_sweep_questions(world, n) for n in cfg.study.data_sizes} if study else {}
    for n, qs in sweep_qs.items():
        data[f"train_{n}"] = write_jsonl(qa_rows(qs), out / "data" / f"fuser_train_{n}.jsonl")
    if study:
        jobs += study_jobs(cfg, {n: str(data[f"train_{n}"]) for n in sweep_qs})
    lm_tasks, lm_paths = pretrain_tasks(cfg.world, cfg.receiver, cfg.sharer, cache, retrain=retrain)
    recipe = Recipe(
        cfg.fuser, cfg.train, cfg.seed, str(lm_paths["receiver"]), str(lm_paths["sharer"]), str(data["train"])
    )
    f_tasks, f_dirs = fuser_tasks(jobs, recipe, cache / "fusers", retrain=retrain)
    phases.run("models and fusers", lambda: run_tasks(lm_tasks + f_tasks, workers=cfg.workers))
    fresh = {t.subject for t in lm_tasks + f_tasks}
    pair = load_pair(lm_paths, fresh=fresh)
    train_log = fuser_logs(jobs, f_dirs, fresh=fresh)
    (receiver, tok_r, r_info), (sharer, tok_s, s_info) = pair["receiver"], pair["sharer"]
    for role, info in (("receiver", r_info), ("sharer", s_info)):
        msg = _bar_warning(role, info)
        if msg:
            warnings.append(msg)
            log(f"[c2c demo] WARNING: {msg}")

    # 3. Baselines: the unfused paths of a C2CModel (same code as C2C minus fusion).
    base = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(**cfg.fuser),
        receiver_tokenizer=tok_r,
        sharer_tokenizer=tok_s,
        config=C2CConfig(**cfg.variant),
    )
    kw = {"max_new_tokens": cfg.answer_max_new_tokens, "batch_size": cfg.eval_batch_size}
    paths: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    extras: dict[str, Any] = {}

    def baselines() -> None:
        for mode in ("receiver", "sharer"):
            texts[mode] = P.answer(base, [q.text for q in test_qs], mode=mode, desc=mode, **kw)
            paths[mode] = {"accuracy": P.accuracy(texts[mode], test_qs)}
        notes, t2t = P.t2t_answers(base, test_qs, note_tokens=cfg.note_max_new_tokens, **kw)
        note_tokens = sorted(len(tok_s(n, add_special_tokens=False)["input_ids"]) for n in notes)
        paths["t2t"] = {
            "accuracy": P.accuracy(t2t, test_qs),
            "note_tokens_median": note_tokens[len(note_tokens) // 2],
            "example_note": notes[0],
        }
        ref = P.reference_t2t_answers(base, world, test_qs, **kw)
        paths["t2t_reference"] = {"accuracy": P.accuracy(ref, test_qs)}
        router = P.fit_router(base, val_qs, **kw)
        routed, choice = P.routed_answers(base, router, test_qs, texts["receiver"], texts["sharer"])
        extras["router"] = router
        paths["routing"] = {
            "accuracy": P.accuracy(routed, test_qs),
            "share_to_sharer": sum(choice) / len(choice),
            "rule": "confidence in the first answer token; margin fitted on val",
            "margin": router.margin,
            "val_accuracy": router.val_accuracy,
        }

    phases.run("baselines", baselines)

    # 4. Fusers, loaded back and asked the test, val and training-probe questions.
    def probe_of(qs: list[Question]) -> list[Question]:
        return qs[:: max(1, len(qs) // cfg.n_train_probe)][: cfg.n_train_probe]

    # Each fuser is probed on the entities it trained on (a data-sweep row on its own subset).
    probe_all = probe_of(fuser_qs)
    probes = {f"data_{n}": probe_of(qs) for n, qs in sweep_qs.items()}
    models: dict[str, C2CModel] = {}
    gates: dict[str, Any] = {}

    eval_seconds: dict[str, float] = {}

    def evaluate_fusers() -> None:
        for job in tqdm(jobs, desc="evaluate fusers", dynamic_ncols=True):
            t0 = time.perf_counter()
            sharer_model, sharer_tok = (receiver, tok_r) if job.identical else (sharer, tok_s)
            model = C2CModel.from_pretrained(
                train_log[job.name]["fuser_dir"],
                receiver=receiver,
                sharer=sharer_model,
                receiver_tokenizer=tok_r,
                sharer_tokenizer=sharer_tok,
            )
            models[job.name] = model
            test = P.answer(model, [q.text for q in test_qs], mode="c2c", desc=f"{job.name} test", **kw)
            val = P.answer(model, [q.text for q in val_qs], mode="c2c", desc=f"{job.name} val", **kw)
            probe_qs = probes.get(job.name, probe_all)
            probe = P.answer(model, [q.text for q in probe_qs], mode="c2c", desc=f"{job.name} train probe", **kw)
            paths[job.name] = {
                "accuracy": P.accuracy(test, test_qs),
                "val_accuracy": P.accuracy(val, val_qs),
                "fuser_train_accuracy": P.accuracy(probe, probe_qs),
                "sharer_recall": P.sharer_recall(model, test_qs),
                **P.describe_fuser(model),
                "train_seconds": train_log[job.name]["seconds"],
            }
            gates[job.name] = {
                "final": C2CMode(model).gate_states()[0]["layers"],
                "trajectory": train_log[job.name]["gate_trajectory"],
            }
            eval_seconds[job.name] = time.perf_counter() - t0

    phases.run("evaluate fusers", evaluate_fusers)

    # 5. Swapped-sharer control: the sharer reads the same question about another held-out entity whose
    #    answer differs. If C2C reads the sharer's knowledge, its answers follow the other entity.
    def swapped() -> dict[str, Any]:
        partners = swap_partners(test_qs, world, seed=cfg.seed)
        sw = P.swapped_answers(models["c2c"], test_qs, partners, **kw)
        return {"true_answer_accuracy": P.accuracy(sw, test_qs), "follows_other_accuracy": P.accuracy(sw, partners)}

    swap = phases.run("swapped control", swapped)

    # 6. Latency: every headline path, query by query, in one interleaved loop.
    def timing() -> dict[str, Any]:
        n = cfg.answer_max_new_tokens
        router = extras["router"]

        def t2t_one(q: Question) -> dict[str, float]:
            note, t_note = _gen_timings(base, note_request(q), "sharer", cfg.note_max_new_tokens)
            _, t_ans = _gen_timings(base, read_prompt(P.clean_note(note), q), "receiver", n)
            return {
                "note": t_note["total"],
                "receiver_prefill": t_ans["receiver_prefill"],
                "decode": t_ans["decode"],
                "total": t_note["total"] + t_ans["total"],
            }

        def route_one(q: Question) -> dict[str, float]:
            t0 = time.perf_counter()
            c = router.choose(P.confidence(receiver, tok_r, [q.text]), P.confidence(sharer, tok_s, [q.text]))[0]
            routing = time.perf_counter() - t0
            _, t = _gen_timings(base, q.text, "sharer" if c else "receiver", n)
            return {**t, "routing": routing, "total": t["total"] + routing}

        timers = {
            "receiver": lambda q: _gen_timings(base, q.text, "receiver", n)[1],
            "sharer": lambda q: _gen_timings(base, q.text, "sharer", n)[1],
            "t2t": t2t_one,
            "routing": route_one,
            "c2c": lambda q: _gen_timings(models["c2c"], q.text, "c2c", n)[1],
        }
        return interleaved(timers, test_qs[: min(cfg.latency_queries, len(test_qs))])

    latency = phases.run("interleaved latency", timing)
    for name, lat in latency["paths"].items():
        paths[name].update(lat)

    study_results: dict[str, Any] = {"ran": False, "grid": [], "ablations": [], "sizes": [], "data": [], "seeds": []}
    if study:
        study_results = evaluate_study(cfg, paths, train_log, models, test_qs)
        extra = [j.name for j in jobs if j.name not in HEADLINE]
        # The study's own cost: its fusers' training (core-seconds; they train side by side on the run's
        # workers) and their evaluation.
        study_results["fusers"] = len(extra)
        study_results["train_core_seconds"] = sum(train_log[n]["seconds"] for n in extra if not train_log[n]["cached"])
        study_results["eval_seconds"] = sum(eval_seconds[n] for n in extra)

    results: dict[str, Any] = {
        "config": cfg.to_dict(),
        "study_run": study,
        "world": {
            "splits": cfg.world.split_sizes(),
            "test_questions": len(test_qs),
            "val_questions": len(val_qs),
            "fuser_train_questions": len(fuser_qs),
            "chance": chance_accuracy(),
        },
        "models": {"receiver": dict(r_info), "sharer": dict(s_info)},
        "warnings": warnings,
        "paths": paths,
        "swapped": swap,
        "gates": gates,
        "latency": {k: v for k, v in latency.items() if k != "paths"},
        "study": study_results,
        "fuser_training": train_log,
        "data_files": {k: str(v) for k, v in data.items()},
        "phase_seconds": phases.seconds,
    }
    results["total_seconds"] = time.perf_counter() - t_start
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


__all__ = ["HEADLINE", "DemoConfig", "Phases", "run_demo"]
