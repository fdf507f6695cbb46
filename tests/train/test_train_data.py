"""Data pipeline: loading both chat layouts from JSONL/JSON/parquet, rendering, prefix check, alignment,
length filter, batching."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import chat_rows, tokenizer

from c2c.alignment.tokens import TokenAligner
from c2c.train import DataError, ExampleRenderer
from c2c.train.batching import TrainCollator, count_response_tokens, epoch_batches
from c2c.train.data import prepare_dataset, split_eval
from c2c.train.sources import load_rows
from c2c.train.turns import Fields


def renderer(receiver: str = "qwen3", sharer: str = "llama3", **kw) -> ExampleRenderer:
    rt = tokenizer(receiver)
    chat = kw.pop("chat", bool(rt.chat_template))
    return ExampleRenderer(rt, [TokenAligner(rt, tokenizer(sharer))], chat=chat, **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_loads_every_file_format(tmp_path, fmt):
    rows = chat_rows(5, "conversations", system=True)
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    ds = load_rows(str(path))
    assert len(ds) == 5
    assert ds[2]["conversations"][1]["value"] == rows[2]["conversations"][1]["value"]


def test_missing_malformed_and_unsupported_files_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    with pytest.raises(DataError, match="could not read .*bad.jsonl"):
        load_rows(str(bad))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported extension"):
        load_rows(str(csv))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(empty))
    with pytest.raises(DataError, match="matches no file"):
        load_rows(str(tmp_path / "*.parquet"))


def test_layouts_and_system_turns_render_the_same_conversation():
    r = renderer("qwen3", "qwen3")
    by_messages = r(chat_rows(1, "messages", system=True)[0], 0)
    by_conversations = r(chat_rows(1, "conversations", system=True)[0], 0)
    assert by_messages == by_conversations
    text = tokenizer("qwen3").decode(by_messages["receiver_ids"])
    assert text.startswith("<|im_start|>system\nanswer briefly<|im_end|>")


def test_mixed_layouts_in_one_file(tmp_path):
    rows = chat_rows(2, "messages") + chat_rows(2, "conversations") + chat_rows(2, "prompt_response")
    ds, stats = prepare_dataset(
        str(write_jsonl(tmp_path / "mix.jsonl", rows)), renderer(), max_length=512, progress=False
    )
    assert stats.n_kept == 6 and len(ds) == 6


# ---------------------------------------------------------------------- rendering


def test_instruction_response_split_follows_the_template():
    """Instruction = all turns but the last with generation prompt (thinking off); response = the rest
    of the rendered conversation; the ids concatenate to exactly what the receiver would read."""
    tok = tokenizer("qwen3")
    row = chat_rows(1)[0]
    ex = renderer("qwen3", "qwen3")(row, 0)
    instr = tok.apply_chat_template(
        row["messages"][:1], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert instr.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(ex["receiver_ids"]) == instr
    assert tok.decode(ex["response_ids"]) == row["messages"][1]["content"] + "<|im_end|>\n"
    assert not ex["template_fallback"]


def test_template_that_breaks_the_prefix_is_reported():
    # Test ChatML: the generation prompt has an empty think block that the rendered last turn lacks.
    row = chat_rows(1)[0]
    with pytest.raises(DataError, match="breaks the prefix property"):
        renderer("chatml", "chatml", on_template_mismatch="error")(row, 3)
    ex = renderer("chatml", "chatml", on_template_mismatch="warn")(row, 3)
    tok = tokenizer("chatml")
    assert ex["template_fallback"]
    assert tok.decode(ex["response_ids"]) == row["messages"][1]["content"] + tok.eos_token
    with pytest.warns(UserWarning, match="2 rows .* not a prefix"):
        _, stats = prepare_dataset(chat_rows(2), renderer("chatml", "chatml"), max_length=512, progress=False)
    assert stats.n_template_fallback == 2 and stats.first_fallback_row == 0


def test_template_rows_are_never_fused_and_identical_tokenizers_copy_ids():
    tok = tokenizer("qwen3")
    ex = renderer("qwen3", "qwen3")(chat_rows(1)[0], 0)
    ids, index = ex["receiver_ids"], ex["sharer_index"][0]
    specials = set(tok.all_special_ids)
    for i, (rid, si) in enumerate(zip(ids, index)):
        if rid in specials:
            assert si == -1, f"special/template token {tok.decode([rid])!r} at {i} is fused"
        if si >= 0:
            assert ex["sharer_ids"][0][si] == rid  # identity alignment
    content = tok.decode([r for r, s in zip(ids, index) if s >= 0])
    assert content == chat_rows(1)[0]["messages"][0]["content"]
    assert ex["n_fused"] == sum(1 for s in index[:-1] if s >= 0)


def test_heterogeneous_sharer_reads_its_own_template_and_aligned_content():
    ex = renderer("qwen3", "llama3")(chat_rows(1)[0], 0)
    s_text = tokenizer("llama3").decode(ex["sharer_ids"][0])
    assert s_text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert len(ex["sharer_index"][0]) == len(ex["receiver_ids"])
    assert ex["n_fused"] > 0


def test_plain_prompt_response_without_chat_template():
    tok = tokenizer("plain")
    assert not tok.chat_template
    r = ExampleRenderer(tok, [TokenAligner(tok, tokenizer("llama3"))], chat=False)
    row = chat_rows(1, "prompt_response")[0]
    ex = r(row, 0)
    assert ex["receiver_ids"] == tok(row["prompt"])["input_ids"]  # plain text with the tokenizer's BOS
    assert ex["response_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["response_ids"][:-1]) == row["response"]
    with pytest.raises(DataError, match="no chat template"):
        ExampleRenderer(tok, [TokenAligner(tok, tok)], chat=True)
    # a chat-layout row with one user turn is that prompt as plain text, whatever its layout
    for layout in ("messages", "conversations"):
        assert r(chat_rows(1, layout)[0], 0) == ex


@pytest.mark.parametrize(
    "row, match",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "row 4: the conversation has no assistant turn"),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "wizard", "value": "x"}]},
            "unknown role 'wizard'",
        ),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "no user turn before"),
        ({"messages": []}, "non-empty list of turns"),
        ({"text": "hello"}, "no 'messages', 'conversations' or 'prompt'/'response' fields"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "content must be text"),
    ],
)
def test_bad_rows_name_the_row_and_the_problem(row, match):
    with pytest.raises(DataError, match=match):
        renderer()(row, 4)


def test_bad_row_in_a_file_fails_before_training(tmp_path):
    rows = chat_rows(3) + [{"messages": [{"role": "user", "content": "no reply"}]}]
    with pytest.raises(DataError, match="row 3: the conversation has no assistant turn"):
        prepare_dataset(str(write_jsonl(tmp_path / "d.jsonl", rows)), renderer(), max_length=512, progress=False)


def test_trailing_user_turn_is_dropped_and_custom_fields_work():
    rows = [
        {
            "chat": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "more?"},
            ]
        }
    ]
    r = renderer("qwen3", "qwen3", fields=Fields(layout="messages", messages="chat"))
    ex = r(rows[0], 0)
    assert "more?" not in tokenizer("qwen3").decode(ex["receiver_ids"] + ex["response_ids"])


# ---------------------------------------------------------------------- filtering and batching


def test_length_filter_counts_what_it_drops():
    rows = chat_rows(6)
    rows[1]["messages"][0]["content"] += " and" * 40
    rows[4]["messages"][1]["content"] += " and" * 40
    ds, stats = prepare_dataset(rows, renderer(), max_length=60, progress=False)
    assert stats.n_rows == 6 and stats.n_too_long == 2 and stats.n_kept == 4 == len(ds)
    assert max(ds["length"]) <= 60 < stats.longest
    assert "dropped 2 longer than 60" in stats.summary()
    with pytest.raises(DataError, match="Nothing is left to train on.*raise max_length"):
        prepare_dataset(rows, renderer(), max_length=10, progress=False)


def test_max_examples_takes_the_first_rows():
    ds, stats = prepare_dataset(chat_rows(10), renderer(), max_length=512, max_examples=3, progress=False)
    assert stats.n_rows == 3 and len(ds) == 3


def test_render_cache_is_reused_until_render_version_changes(tmp_path, monkeypatch):
    # a file-backed source caches its rendered rows on disk, keyed by the renderer fingerprint: a new
    # RENDER_VERSION must render afresh instead of silently reusing rows rendered by older code
    import c2c.train.render as render

    path = write_jsonl(tmp_path / "data.jsonl", chat_rows(3))
    first, _ = prepare_dataset(str(path), renderer(), max_length=512, progress=False)
    again, _ = prepare_dataset(str(path), renderer(), max_length=512, progress=False)
    assert first.cache_files and again.cache_files == first.cache_files
    monkeypatch.setattr(render, "RENDER_VERSION", render.RENDER_VERSION + "-next")
    bumped, _ = prepare_dataset(str(path), renderer(), max_length=512, progress=False)
    assert bumped.cache_files != first.cache_files


def test_collated_batch_masks_everything_but_the_response():
    ds, _ = prepare_dataset(chat_rows(3), renderer(), max_length=512, progress=False)
    rows = [ds[i] for i in range(3)]
    rt = tokenizer("qwen3")
    batch = TrainCollator(rt.pad_token_id, [tokenizer("llama3").pad_token_id])(rows)
    p = batch.prefix_len
    for i, row in enumerate(rows):
        # every instruction's last token sits at column P, the response follows it
        assert batch.input_ids[i, p].item() == row["receiver_ids"][-1]
        resp = batch.labels[i][batch.labels[i] != -100].tolist()
        assert resp == row["response_ids"]
        assert batch.input_ids[i, p + 1 : p + 1 + len(resp)].tolist() == resp
        assert batch.fuse_mask[i].sum().item() == row["n_fused"]
    assert count_response_tokens(batch) == sum(len(r["response_ids"]) for r in rows)
    assert not batch.fuse_mask[:, -1].any()  # the last instruction token is never fused


def test_epoch_batches_split_one_global_batch_across_processes():
    n, b = 23, 3
    single = epoch_batches(n, batch_size=2 * b, world_size=1, rank=0, seed=5, epoch=1)
    r0 = epoch_batches(n, batch_size=b, world_size=2, rank=0, seed=5, epoch=1)
    r1 = epoch_batches(n, batch_size=b, world_size=2, rank=1, seed=5, epoch=1)
    assert len(single) == len(r0) == len(r1) == 4
    for g, (a, c) in enumerate(zip(r0, r1)):
        assert a + c == single[g]
    # every row exactly once per epoch, and epochs reshuffle
    assert sorted(i for mb in single for i in mb) == list(range(n))
    assert epoch_batches(n, batch_size=6, world_size=1, rank=0, seed=5, epoch=2) != single
    # a last global batch smaller than the process count is dropped, never left to one process
    assert len(epoch_batches(7, batch_size=3, world_size=3, rank=2, seed=0, epoch=0)) == 1


def test_eval_split_is_deterministic_and_disjoint():
    ds, _ = prepare_dataset(chat_rows(10), renderer(), max_length=512, progress=False)
    tr1, ev1 = split_eval(ds, size=3, fraction=0.0, seed=1)
    _tr2, ev2 = split_eval(ds, size=3, fraction=0.0, seed=1)
    assert ev1["receiver_ids"] == ev2["receiver_ids"] and len(ev1) == 3 and len(tr1) == 7
    assert not {tuple(x) for x in tr1["receiver_ids"]} & {tuple(x) for x in ev1["receiver_ids"]}
    with pytest.raises(DataError, match="would take all"):
        split_eval(ds, size=10, fraction=0.0, seed=1)


def test_collator_output_is_a_valid_model_batch():
    from train_support import make_pair

    model = make_pair()
    ds, _ = prepare_dataset(chat_rows(2), renderer(), max_length=512, progress=False)
    batch = TrainCollator.for_model(model)([ds[0], ds[1]])
    out = model(batch)
    assert out.num_tokens == count_response_tokens(batch)
    assert torch.isfinite(out.loss)


def test_parallel_rendering_matches_serial_and_reports_bad_rows():
    rows = chat_rows(12)
    serial, _ = prepare_dataset(rows, renderer(), max_length=512, progress=False)
    parallel, _ = prepare_dataset(rows, renderer(), max_length=512, num_proc=2, progress=False)
    assert serial["receiver_ids"] == parallel["receiver_ids"] and serial["sharer_index"] == parallel["sharer_index"]
    with pytest.raises(DataError, match="row 12: the conversation has no assistant turn"):
        prepare_dataset(
            rows + [{"messages": [{"role": "user", "content": "x"}]}],
            renderer(),
            max_length=512,
            num_proc=2,
            progress=False,
        )


def test_reference_layout_trains_on_the_rows_inference_reads(tok_chatml):
    """A fuser in the reference row layout (chat_rows='reference') is trained on the rows generation fuses:
    one receiver rendering, every instruction row but the last."""
    from c2c import C2CConfig, C2CModel, FuserConfig
    from c2c.alignment.tokens import TokenAligner
    from c2c.testing.models import tiny_model
    from c2c.train.render import ExampleRenderer

    aligner = TokenAligner(tok_chatml, tok_chatml)
    renderer = ExampleRenderer(tok_chatml, [aligner], chat=True, chat_rows="reference")
    row = {"messages": [{"role": "user", "content": "the river runs north"}, {"role": "assistant", "content": "yes"}]}
    out = renderer(row, 0)
    n = len(out["receiver_ids"])
    assert out["sharer_ids"][0] == out["receiver_ids"]
    assert out["sharer_index"][0] == list(range(n - 1)) + [-1]
    r = tiny_model("qwen3", num_layers=2, seed=1, vocab_size=len(tok_chatml) + 8)
    s = tiny_model("qwen2", num_layers=2, seed=2, vocab_size=len(tok_chatml) + 8)
    model = C2CModel.from_models(
        r,
        s,
        fuser_config=FuserConfig(hidden_size=16, intermediate_size=16),
        receiver_tokenizer=tok_chatml,
        sharer_tokenizer=tok_chatml,
        config=C2CConfig(chat_rows="reference"),
    )
    batch = model.encode(row["messages"][:1])
    assert batch.input_ids[0].tolist() == out["receiver_ids"]
    assert batch.sharer_index[0][0].tolist() == out["sharer_index"][0]
    content = ExampleRenderer(tok_chatml, [aligner], chat=True)(row, 0)
    assert content["sharer_index"][0] != out["sharer_index"][0]
