"""The demo's tiny LMs: what they are trained on is what the library feeds them, and the disk cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from c2c.demo.corpus import Example, qa_rows, receiver_corpus, sharer_corpus, split_questions
from c2c.demo.lms import (
    RECEIVER,
    SHARER,
    LMConfig,
    build_model,
    cache_key,
    encode_example,
    lr_factor,
    pretrain,
    pretrained_pair,
    prompt_ids,
    train_tokenizer,
)
from c2c.demo.quality import receiver_check, sharer_check
from c2c.demo.world import World, WorldConfig
from c2c.fuser import FuserConfig
from c2c.model import C2CConfig, C2CModel
from c2c.train.data import ExampleRenderer

WORLD = WorldConfig(seed=1, n_receiver=8, n_practice=8, n_fuser=10, n_val=2, n_test=4)
TINY_R = dataclasses.replace(
    RECEIVER,
    num_layers=1,
    hidden_size=32,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    epochs=2,
    batch_size=16,
    extra_rounds=0,
)
TINY_S = dataclasses.replace(
    SHARER,
    num_layers=2,
    hidden_size=40,
    num_heads=2,
    num_kv_heads=2,
    head_dim=20,
    intermediate_size=64,
    epochs=2,
    batch_size=16,
    extra_rounds=0,
)


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WORLD)


@pytest.fixture(scope="module")
def tokenizers(world: World):
    return train_tokenizer(receiver_corpus(world), TINY_R), train_tokenizer(sharer_corpus(world), TINY_S)


def test_tokenizers_differ_and_carry_their_families_specials(tokenizers) -> None:
    tok_r, tok_s = tokenizers
    assert len(tok_r) != len(tok_s)
    assert tok_r.eos_token == "<|im_end|>" and tok_s.eos_token == "<|eot_id|>"
    assert prompt_ids(tok_s, "Where?")[0] == tok_s.bos_token_id  # Llama-style BOS, Qwen-style none
    assert prompt_ids(tok_r, "Where?")[0] != tok_r.bos_token_id


def test_pretraining_format_is_what_the_trainer_and_generate_read(world: World, tokenizers) -> None:
    """The receiver learns answers after exactly the ids ``c2c.train`` trains the fuser on and
    ``C2CModel.generate`` prompts with; a mismatch would make every C2C number meaningless."""
    tok_r, tok_s = tokenizers
    c2c = C2CModel.from_models(
        build_model(TINY_R, tok_r),
        build_model(TINY_S, tok_s),
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
        receiver_tokenizer=tok_r,
        sharer_tokenizer=tok_s,
        config=C2CConfig(alignment_shift=1, token_alignment="offsets"),
    )
    renderer = ExampleRenderer(tok_r, c2c.aligners, chat=False, alignment_shift=1)
    for i, row in enumerate(qa_rows(split_questions(world, "fuser")[:6])):
        ids, mask = encode_example(tok_r, Example(prompt=row["prompt"], response=row["response"]))
        rendered = renderer(row, i)
        assert ids == rendered["receiver_ids"] + rendered["response_ids"]
        assert mask == [0] * len(rendered["receiver_ids"]) + [1] * len(rendered["response_ids"])
        batch = c2c.encode(row["prompt"])
        assert batch.input_ids[0].tolist() == prompt_ids(tok_r, row["prompt"])
        # The sharer reads its own natural tokenization (what it was pretrained on).
        assert batch.sharer_input_ids[0][0].tolist() == prompt_ids(tok_s, row["prompt"])


def test_documents_are_trained_everywhere_pairs_only_on_the_response(tokenizers) -> None:
    tok_r, _ = tokenizers
    ids, mask = encode_example(tok_r, Example(text="Bo lives in Lima."))
    assert all(mask) and ids[-1] == tok_r.eos_token_id
    ids, mask = encode_example(tok_r, Example(prompt="Where does Bo live?", response=" Lima"))
    assert mask[0] == 0 and mask[-1] == 1 and ids[-1] == tok_r.eos_token_id


def test_cache_key_follows_every_setting() -> None:
    k = cache_key(WORLD, TINY_R, "receiver")
    assert k == cache_key(WORLD, TINY_R, "receiver")
    assert k != cache_key(dataclasses.replace(WORLD, seed=2), TINY_R, "receiver")
    assert k != cache_key(WORLD, dataclasses.replace(TINY_R, epochs=3), "receiver")
    assert k != cache_key(WORLD, TINY_R, "sharer")
    assert k != cache_key(WORLD, dataclasses.replace(TINY_R, embedding_lr_scale=10.0), "receiver")


def test_input_embeddings_train_at_their_own_rate(world: World) -> None:
    """Two AdamW groups when the input embeddings have their own rate; the schedule scales both alike."""
    import random

    from c2c.demo.lms import _param_groups, _round

    corpus = sharer_corpus(world)
    lm = dataclasses.replace(TINY_S, epochs=1, embedding_lr_scale=10.0)
    tok = train_tokenizer(corpus, lm)
    model = build_model(lm, tok)
    groups = _param_groups(model, lm)
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert groups[1]["params"] == [model.get_input_embeddings().weight]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(_param_groups(model, dataclasses.replace(lm, embedding_lr_scale=1.0))) == 1
    opt = torch.optim.AdamW(groups, lr=lm.lr)
    before = model.get_input_embeddings().weight.detach().clone()
    encoded = [[encode_example(tok, ex) for ex in g] for g in corpus[:4]]
    _round(
        model,
        opt,
        encoded,
        lm,
        random.Random(0),
        epochs=1,
        peak_lr=lm.lr,
        pad_id=tok.pad_token_id,
        desc="t",
        position=0,
    )
    low, high = (g["lr"] for g in opt.param_groups)
    assert low > 0 and high == pytest.approx(10 * low)
    assert not torch.equal(before, model.get_input_embeddings().weight)


def test_pretrain_saves_and_the_second_call_loads_the_same_models(tmp_path: Path) -> None:
    pair = pretrained_pair(WORLD, TINY_R, TINY_S, tmp_path)  # both missing: two worker processes
    for role, family in (("receiver", "Qwen3ForCausalLM"), ("sharer", "LlamaForCausalLM")):
        model, tok, info = pair[role]
        assert not info["cached"] and info["steps"] > 0 and Path(info["path"]).is_dir()
        assert info["final_loss"] < info["first_loss"]
        assert type(model).__name__ == family
    again = pretrained_pair(WORLD, TINY_R, TINY_S, tmp_path)
    for role in ("receiver", "sharer"):
        (model, tok, info), (model2, tok2, info2) = pair[role], again[role]
        assert info2["cached"] and info2["path"] == info["path"]
        assert tok2.get_vocab() == tok.get_vocab()
        ids = torch.tensor([prompt_ids(tok, "Where does Bo live?")])
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, model2(input_ids=ids).logits)


def test_pretraining_is_deterministic(tmp_path: Path) -> None:
    """Same configs, fresh cache, in-process this time: the very same weights as in worker processes."""
    a = pretrained_pair(WORLD, TINY_R, TINY_S, tmp_path / "a", parallel=False)
    b = pretrained_pair(WORLD, TINY_R, TINY_S, tmp_path / "b")
    for role in ("receiver", "sharer"):
        sa, sb = a[role][0].state_dict(), b[role][0].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_learning_rate_schedules_warm_up_then_end_at_a_tenth(schedule: str) -> None:
    total, warm = 1000, 50
    f = [lr_factor(s, total, warm, schedule) for s in range(total + 1)]
    assert f[0] == pytest.approx(1 / warm) and max(f) == pytest.approx(1.0, abs=0.01)
    assert f[:warm] == sorted(f[:warm])  # linear warmup
    assert f[warm:] == sorted(f[warm:], reverse=True)  # never rises again
    assert f[total] == pytest.approx(0.1)
    if schedule == "wsd":  # constant until 80 %, where the decay starts
        assert f[799] == 1.0 and f[900] == pytest.approx(0.55)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_factor(10, 100, 5, "step")


def test_sharer_reads_questions_and_notes_about_its_entities_only(world: World) -> None:
    """The sharer's corpus: per fact, one question group and one note group (each over the question's
    paraphrases), so notes get as much practice as answers; nothing else."""
    corpus = sharer_corpus(world)
    entities = world.split("fuser", "val", "test")
    assert all(ex.is_pair for group in corpus for ex in group)
    assert len(corpus) == len(entities) * (4 + 4)
    notes = [g for g in corpus if g[0].prompt.startswith("In one clear sentence")]
    assert len(notes) == 4 * len(entities) and all(len(g) == 2 for g in corpus)
    sharer_names = {e.name for e in entities}
    for group in corpus:
        words = {w.strip("?.,:") for ex in group for w in (ex.prompt + ex.response).split()}
        mentioned = {e.name for e in world.entities if e.name in words}
        assert len(mentioned) == 1 and mentioned <= sharer_names, (group[0].prompt, mentioned)


def test_lm_config_refuses_an_unknown_schedule_up_front() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'; use one of cosine, wsd"):
        dataclasses.replace(SHARER, schedule="linear")


def test_pretraining_runs_extra_rounds_until_the_bar_and_says_when_it_is_missed(world: World) -> None:
    corpus = sharer_corpus(world)
    lm = dataclasses.replace(TINY_S, epochs=1, extra_rounds=2, extra_epochs=1, bar=0.9)
    tok = train_tokenizer(corpus, lm)
    scores = iter([0.1, 0.5, 0.95])
    seen: list[float] = []

    def check(model) -> dict:
        seen.append(next(scores))
        return {"score": seen[-1]}

    info = pretrain(build_model(lm, tok), tok, corpus, lm, desc="t", check=check)
    assert seen == [0.1, 0.5, 0.95] and info["bar_met"] is True and info["epochs"] == 3
    assert [r["peak_lr"] for r in info["rounds"]] == [lm.lr, lm.lr * lm.extra_lr_scale, lm.lr * lm.extra_lr_scale]
    missed = pretrain(build_model(lm, tok), tok, corpus, lm, desc="t", check=lambda m: {"score": 0.0})
    assert missed["bar_met"] is False and len(missed["rounds"]) == 3  # bounded: 1 + extra_rounds
    once = pretrain(build_model(lm, tok), tok, corpus, lm, desc="t", check=lambda m: {"score": 1.0})
    assert once["bar_met"] is True and len(once["rounds"]) == 1


def test_quality_checks_fail_an_untrained_model_on_entities_the_test_never_uses(world: World) -> None:
    """A fresh model answers nothing; the checks read only fuser/val (sharer) and val/receiver entities."""
    for role, make, lm, corpus in (
        ("sharer", sharer_check, TINY_S, sharer_corpus(world)),
        ("receiver", receiver_check, TINY_R, receiver_corpus(world)),
    ):
        tok = train_tokenizer(corpus, lm)
        q = make(world, tok)(build_model(lm, tok))
        assert q["score"] < 0.3, role
        expected = {"sharer": 8 * (WORLD.n_fuser + WORLD.n_val), "receiver": 8 * (WORLD.n_val + WORLD.n_receiver)}
        assert q["questions"] == expected[role]


@pytest.mark.parametrize(
    "bad",
    [
        {"bar": 0.0},
        {"bar": 1.5},
        {"epochs": 0},
        {"extra_rounds": -1},
        {"extra_epochs": 0},
        {"embedding_lr_scale": 0.0},
        {"embedding_lr_scale": -2.0},
    ],
)
def test_lm_config_refuses_a_bad_budget(bad: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(TINY_S, **bad)
    assert isinstance(TINY_S, LMConfig)


def test_extra_rounds_practise_the_attribute_that_lags(world: World) -> None:
    from c2c.demo.lms import LAGGING_REPEAT, _practise_lagging

    corpus = sharer_corpus(world)
    encoded = [[([i], [1])] for i in range(len(corpus))]  # one stand-in sequence per group
    quality = {"by_attribute": {"city": 1.0, "job": 0.99, "color": 0.98, "pet": 0.4}}
    out = _practise_lagging(encoded, corpus, quality, dataclasses.replace(TINY_S, bar=0.97))
    pets = sum(1 for g in corpus if g[0].attribute == "pet")
    assert pets == len(corpus) // 4
    assert len(out) == len(corpus) + (LAGGING_REPEAT - 1) * pets
    assert _practise_lagging(encoded, corpus, None, TINY_S) == encoded  # nothing known: every group once
