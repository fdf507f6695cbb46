"""Quick start on CPU in under a minute: two tiny models of different families, a fuser trained on a few
chat examples, generation in every mode, save and load.

With real checkpoints, replace the tiny models by ``AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-0.6B")``
and friends; nothing else changes.

    python examples/quickstart.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from c2c import C2CModel, FuserConfig, fuser_size
from c2c.testing.models import tiny_model
from c2c.testing.tokenizers import build_tokenizer, default_corpus
from c2c.train import TrainConfig, train


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="c2c-quickstart-"))
    corpus = default_corpus()
    # Different families, depths, KV heads, head sizes and tokenizers: the general case.
    receiver_tok = build_tokenizer(corpus, 400, chat_template="chatml")
    sharer_tok = build_tokenizer(corpus, 520, chat_template="llama3")
    receiver = tiny_model("qwen3", num_layers=3, vocab_size=len(receiver_tok) + 8, seed=1)
    sharer = tiny_model("llama", num_layers=2, num_kv_heads=1, head_dim=32, vocab_size=len(sharer_tok) + 8, seed=2)

    model = C2CModel.from_models(
        receiver,
        sharer,
        fuser_config=FuserConfig(hidden_size=64, intermediate_size=64),
        receiver_tokenizer=receiver_tok,
        sharer_tokenizer=sharer_tok,
        seed=0,
    )
    size = fuser_size(model.fusers[0].config, model.fusers[0].geometry)
    print(f"fuser: {size.parameters:,} parameters, layer map {dict(model.fusers[0].layer_map)}")

    # A fresh fuser has closed gates: C2C is exactly the receiver.
    prompt = [{"role": "user", "content": "Where does the river flow?"}]
    assert model.generate(prompt, max_new_tokens=8) == model.generate(prompt, max_new_tokens=8, mode="receiver")

    data = work / "chats.jsonl"
    with data.open("w") as f:
        for i in range(64):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"What is {i} plus {i}?"},
                            {"role": "assistant", "content": f"It is {2 * i}."},
                        ]
                    }
                )
                + "\n"
            )
    result = train(
        model,
        str(data),
        TrainConfig(
            output_dir=str(work / "run"), max_steps=8, batch_size=8, learning_rate=1e-3, save_steps=0, progress=True
        ),
    )
    print(
        f"trained {result.global_step} steps, loss {result.train_loss:.3f}, open gates {result.open_gates}/{result.total_gates}"
    )

    for mode in ("receiver", "sharer", "c2c"):
        out = model.generate(prompt, mode=mode, max_new_tokens=12, return_dict=True)
        ms = {k: round(v * 1000, 1) for k, v in out.timings.items()}
        print(f"{mode:>8}: {out.texts[0]!r}  {ms}")

    model.save_pretrained(str(work / "fuser"))
    again = C2CModel.from_pretrained(
        str(work / "fuser"),
        receiver=receiver,
        sharer=sharer,
        receiver_tokenizer=receiver_tok,
        sharer_tokenizer=sharer_tok,
    )
    assert again.generate(prompt, max_new_tokens=8) == model.generate(prompt, max_new_tokens=8)
    print(f"saved and reloaded: {sorted(p.name for p in (work / 'fuser').iterdir())}")


if __name__ == "__main__":
    main()
