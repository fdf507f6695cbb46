"""Shared fixtures: tiny models of real architectures and local tokenizers (all built in-process)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    from c2c.testing.tokenizers import default_corpus

    return default_corpus()


@pytest.fixture(scope="session")
def tok_chatml(corpus):
    from c2c.testing.tokenizers import build_tokenizer

    return build_tokenizer(corpus, 400, model="bpe", chat_template="chatml")


@pytest.fixture(scope="session")
def tok_llama3(corpus):
    from c2c.testing.tokenizers import build_tokenizer

    return build_tokenizer(corpus, 520, model="bpe", chat_template="llama3")
