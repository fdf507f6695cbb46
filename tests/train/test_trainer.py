"""The training function in-process: what trains, what stays frozen, the schedule, accumulation, eval,
resume, and the errors that must come before any compute."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from accelerate.tracking import GeneralTracker
from safetensors.torch import load_file
from train_support import chat_rows, fuser_state, make_pair

from c2c import C2CModel
from c2c.train import CheckpointError, DataError, TrainConfig, train
from c2c.train.step import make_optimizer


def cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = {
        "output_dir": str(tmp_path / name),
        "batch_size": 2,
        "max_steps": 4,
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.25,
        "seed": 3,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def llm_state(model) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{n}": p.detach().clone()
        for i, m in enumerate([model.receiver, *model.sharers])
        for n, p in m.named_parameters()
    }


def test_trains_only_the_fuser_and_saves_it(tmp_path):
    model = make_pair()
    llms_before, fuser_before = llm_state(model), fuser_state(model)
    steps = []
    result = train(model, chat_rows(12), cfg(tmp_path, eval_size=2), callbacks=[steps.append])

    assert result.global_step == result.total_steps == 4 and [s.step for s in steps] == [1, 2, 3, 4]
    assert result.model is model and not model.training  # handed back ready for inference
    # the LLMs: untouched, frozen, in eval mode, no gradients
    for k, v in llm_state(model).items():
        assert torch.equal(v, llms_before[k]), k
    for m in (model.receiver, *model.sharers):
        assert not m.training and all(not p.requires_grad and p.grad is None for p in m.parameters())
    # the fuser: fp32 and changed
    after = fuser_state(model)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(after[k], fuser_before[k]) for k in after)
    # what was written
    out = result.output_dir
    assert (out / "final" / "fuser_model.safetensors").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] and (out / "train_run.json").is_file()
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]
    assert {"eval_loss", "open_gates", "total_gates"} <= set(logs[-1])
    assert result.eval_loss is not None and result.total_gates == 4
    assert result.train_stats.n_kept == 12 and (result.num_train, result.num_eval) == (10, 2)
    assert result.tokens_per_second > 0
    # the saved fuser is the trained one
    loaded = C2CModel.from_pretrained(
        str(result.final_dir),
        receiver=model.receiver,
        sharer=model.sharers[0],
        receiver_tokenizer=model.receiver_tokenizer,
        sharer_tokenizer=model.sharer_tokenizers[0],
    )
    assert all(torch.equal(fuser_state(loaded)[k], after[k]) for k in after)


class RecordingTracker(GeneralTracker):
    """A complete accelerate tracker that keeps what it is given in memory."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.config: dict = {}
        self.rows: list[tuple[int, dict]] = []

    @property
    def tracker(self):
        return self.rows

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.rows.append((step, dict(values)))


def test_trackers_receive_config_and_metrics(tmp_path):
    tracker = RecordingTracker()
    train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=2, save_steps=0, eval_size=2), trackers=[tracker])
    assert tracker.config["learning_rate"] == 3e-3 and tracker.config["max_steps"] == 2
    steps = [step for step, row in tracker.rows if "loss" in row]
    assert steps == [1, 2]
    assert {"temperature", "open_gates", "learning_rate"} <= set(tracker.rows[0][1])
    assert "eval_loss" in tracker.rows[-1][1]


def test_schedule_warmup_decay_and_gate_annealing(tmp_path):
    steps = []
    train(
        make_pair(),
        chat_rows(16),
        cfg(tmp_path, max_steps=8, warmup_ratio=0.25, save_steps=0),
        callbacks=[steps.append],
    )
    lrs = [s.learning_rate for s in steps]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(3e-3)  # 2 warmup steps (25 % of 8), then the peak
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs[2:]))  # linear decay
    temps = [s.temperature for s in steps]
    assert temps[0] == 1.0 and all(a > b for a, b in itertools.pairwise(temps))
    assert temps[-1] == pytest.approx(0.001 ** (7 / 8))  # the fuser's schedule, 1.0 -> 0.001 over 8 steps
    steps.clear()
    train(
        make_pair(temperature_end=0.1),
        chat_rows(4),
        cfg(tmp_path, "b", max_steps=2, save_steps=0),
        callbacks=[steps.append],
    )
    assert [s.temperature for s in steps] == pytest.approx([1.0, 0.1**0.5])  # from the FuserConfig
    steps.clear()
    train(
        make_pair(temperature_end=0.1),
        chat_rows(4),
        cfg(tmp_path, "c", max_steps=2, save_steps=0, gate_temperature_start=2.0),
        callbacks=[steps.append],
    )
    assert steps[0].temperature == 2.0  # TrainConfig overrides the fuser


def test_loss_goes_down(tmp_path):
    steps = []
    train(
        make_pair(variant="no_gate"),
        chat_rows(4),
        cfg(tmp_path, max_steps=12, batch_size=4, learning_rate=1e-2, save_steps=0),
        callbacks=[steps.append],
    )
    assert steps[-1].loss < steps[0].loss - 0.2, [s.loss for s in steps]


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    # Token-weighted loss over the whole step: 2 x 2 accumulated == one batch of 4 (no noise: no gate, no dropout).
    a = train(
        make_pair(variant="no_gate"), chat_rows(8), cfg(tmp_path, "a", batch_size=4, save_steps=0, max_steps=2)
    ).model
    b = train(
        make_pair(variant="no_gate"),
        chat_rows(8),
        cfg(tmp_path, "b", batch_size=2, gradient_accumulation_steps=2, save_steps=0, max_steps=2),
    ).model
    sa, sb = fuser_state(a), fuser_state(b)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_autocast_keeps_fp32_master_weights(tmp_path):
    # The GPU recipe (bf16 autocast, fp32 fuser) run on CPU; a run with another precision in the same
    # process must not trip over accelerate's process-wide state.
    steps = []
    result = train(
        make_pair(),
        chat_rows(4),
        cfg(tmp_path, max_steps=2, save_steps=0, mixed_precision="bf16"),
        callbacks=[steps.append],
    )
    assert all(p.dtype == torch.float32 for p in result.model.fusers.parameters())
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    assert train(make_pair(), chat_rows(4), cfg(tmp_path, "b", max_steps=1, save_steps=0)).global_step == 1


def test_no_weight_decay_on_gates_norms_and_biases():
    model = make_pair()
    opt = make_optimizer(model, TrainConfig())
    names = {id(p): n for n, p in model.fusers.named_parameters()}
    decayed = [names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    free = [names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    assert (
        any("gate_logit" in n for n in free)
        and any("norm" in n for n in free)
        and any(n.endswith("bias") for n in free)
    )
    assert len(decayed) + len(free) == len(list(model.fusers.parameters()))


def test_gate_learning_rate_is_a_group_of_its_own(tmp_path):
    model = make_pair()
    names = {id(p): n for n, p in model.fusers.named_parameters()}
    opt = make_optimizer(model, TrainConfig(learning_rate=1e-4, gate_learning_rate=0.5))
    gates = [g for g in opt.param_groups if g["lr"] == 0.5]
    assert len(gates) == 1 and gates[0]["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in gates[0]["params"]) == sorted(
        n for n in names.values() if n.endswith("gate_logit")
    )
    assert all(g["lr"] == 1e-4 for g in opt.param_groups if g is not gates[0])
    # unset: the two groups of before (checkpoints of earlier runs still load)
    assert [g["lr"] for g in make_optimizer(model, TrainConfig(learning_rate=1e-4)).param_groups] == [1e-4, 1e-4]

    def gate_change(**kw) -> tuple[float, float]:
        m = make_pair()
        before = fuser_state(m)
        train(m, chat_rows(4), cfg(tmp_path, str(kw), max_steps=2, save_steps=0, **kw))
        after = fuser_state(m)
        moved = {k: float((after[k] - before[k]).abs().max()) for k in after}
        return max(v for k, v in moved.items() if k.endswith("gate_logit")), max(
            v for k, v in moved.items() if not k.endswith("gate_logit")
        )

    gate_slow, rest_slow = gate_change(gate_learning_rate=1e-9)
    gate_same, rest_same = gate_change()
    assert gate_slow < 1e-7 and gate_same > 1e-4  # AdamW moves a parameter by about its learning rate per step
    assert rest_slow == pytest.approx(rest_same, rel=0.5) and rest_slow > 1e-4


# ---------------------------------------------------------------------- errors before compute


def test_output_folder_of_another_run_is_refused(tmp_path):
    train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=2))
    with pytest.raises(CheckpointError, match="already holds a training run"):
        train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=2))
    with pytest.raises(CheckpointError, match="(?s)holds a different run.*learning_rate"):
        train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=2, learning_rate=1e-3, resume=True))
    with pytest.raises(CheckpointError, match="(?s)holds a different run.*pair.sharers"):
        train(make_pair(seed=5), chat_rows(8), cfg(tmp_path, max_steps=2, resume=True))
    with pytest.raises(CheckpointError, match="(?s)holds a different run.*data.train"):
        train(make_pair(), chat_rows(9), cfg(tmp_path, max_steps=2, resume=True))
    final = load_file(tmp_path / "run" / "final" / "fuser_model.safetensors")
    # the same run resumes (nothing left to do) and --overwrite-output-dir starts over
    assert train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=2, resume=True)).global_step == 2
    again = load_file(tmp_path / "run" / "final" / "fuser_model.safetensors")
    assert all(torch.equal(again[k], final[k]) for k in final)
    # --overwrite-output-dir deletes the old run only once the new data and models checked out
    with pytest.raises(DataError):
        train(make_pair(), chat_rows(2) + [{"messages": []}], cfg(tmp_path, max_steps=1, overwrite_output_dir=True))
    assert (tmp_path / "run" / "final" / "fuser_model.safetensors").is_file()
    train(make_pair(), chat_rows(8), cfg(tmp_path, max_steps=1, overwrite_output_dir=True))
    assert json.loads((tmp_path / "run" / "train_result.json").read_text())["global_step"] == 1


def test_checkpoint_of_another_pair_is_refused(tmp_path):
    other = make_pair(receiver_family="llama", sharer_family="qwen2")
    other.save_pretrained(str(tmp_path / "other_fuser"))
    with pytest.raises(CheckpointError, match="(?s)built for a different model pair.*receiver model_type"):
        train(make_pair(), chat_rows(8), cfg(tmp_path, init_fuser=str(tmp_path / "other_fuser")))
    assert not (tmp_path / "run" / "train_run.json").exists()


def test_data_problems_stop_before_anything_is_written(tmp_path):
    with pytest.raises(DataError, match="Nothing is left to train on"):
        train(make_pair(), chat_rows(4), cfg(tmp_path, max_length=8))
    with pytest.raises(DataError, match="row 1: the conversation has no assistant turn"):
        train(make_pair(), chat_rows(1) + [{"messages": [{"role": "user", "content": "hi"}]}], cfg(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        train(make_pair(), str(tmp_path / "missing.jsonl"), cfg(tmp_path))
    with pytest.raises(DataError, match="no training data"):
        train(make_pair(), None, cfg(tmp_path))
    assert not (tmp_path / "run").exists()


def test_pair_of_models_needs_tokenizers(tmp_path):
    model = make_pair()
    with pytest.raises(Exception, match="no receiver tokenizer"):
        train((model.receiver, model.sharers[0]), chat_rows(4), cfg(tmp_path))


def test_pair_without_chat_template_trains_on_plain_text_and_records_it(tmp_path):
    model = make_pair("plain", "plain", sharer_family="qwen2")
    result = train(model, chat_rows(4, "prompt_response"), cfg(tmp_path, max_steps=1, save_steps=0))
    assert result.global_step == 1 and result.train_stats.n_template_fallback == 0
    recorded = json.loads((result.final_dir / "fuser_config.json").read_text())["c2c_config"]
    assert recorded["prompt_format"] == "text" and result.model.config.prompt_format == "text"
    # single-turn chat rows convert explicitly: the same examples, the same training
    again = train(
        make_pair("plain", "plain", sharer_family="qwen2"),
        chat_rows(4),
        cfg(tmp_path, "msgs", max_steps=1, save_steps=0),
    )
    assert again.train_stats == result.train_stats
    assert all(torch.equal(a, b) for a, b in zip(fuser_state(again.model).values(), fuser_state(result.model).values()))
    # a chat template the user turns off: plain text too, and recorded so
    off = train(make_pair(), chat_rows(4), cfg(tmp_path, "off", max_steps=1, save_steps=0, use_chat_template=False))
    assert off.model.config.prompt_format == "text"
    with pytest.raises(DataError, match="no chat template"):
        train(make_pair("plain", "plain"), chat_rows(4), cfg(tmp_path, "b", use_chat_template=True))
