"""What token alignment needs to know about one fast tokenizer, and a tokenizer fingerprint.

:class:`TokInfo` gathers special ids, roles (bos/eos/unk/pad), the specials it frames every text with,
byte-level token bytes and mid-text decoding for one tokenizer; :func:`fingerprint` hashes everything that decides how a tokenizer cuts and
renders text (persistence records it next to a trained fuser); :class:`LRU` is the bounded, thread-safe
cache the aligner keeps its per-token work in.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

from .specials import frame_of

__all__ = ["LRU", "MISSING", "ROLES", "TokInfo", "backend_json", "cached_batch", "fingerprint"]

ROLES = ("bos", "eos", "unk", "pad")
"""Special-token roles, in the priority used when one id holds several."""
MISSING: Any = object()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level tokenizers."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


_BYTE_OF: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


class LRU(OrderedDict):
    """A bounded dict evicting the least recently used entry; safe to share between threads (a server
    aligns requests concurrently)."""

    def __init__(self, maxsize: int = 65536) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled empty (a cache): locks do not pickle, and worker processes rebuild entries on demand.
        return (type(self), (self.maxsize,))

    def get_lru(self, key: Any, default: Any = MISSING) -> Any:
        with self._lock:
            if key not in self:
                return default
            self.move_to_end(key)
            return self[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)


def backend_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data.pop("truncation", None)
    data.pop("padding", None)
    return data


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Stable hash (sha256 hex) of a tokenizer's vocabulary, merges, normaliser/pre-tokeniser/decoder,
    added and special tokens and chat template. Survives ``save_pretrained``/``from_pretrained``; the Python
    class is left out since the same files load as different classes without tokenizing differently."""
    if getattr(tokenizer, "is_fast", False):
        backend: Any = backend_json(tokenizer)
    else:
        backend = sorted(tokenizer.get_vocab().items())
    payload = {
        "backend": backend,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TokInfo:
    """What the aligner needs from one fast tokenizer, computed once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"the {name} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; TokenAligner needs "
                "character offsets: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        self.tok = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.special_ids: set[int] = set(tokenizer.all_special_ids)
        for idx, added in tokenizer.added_tokens_decoder.items():
            if getattr(added, "special", False):
                self.special_ids.add(int(idx))
        self.role_of: dict[int, str] = {}
        self.role_id: dict[str, int] = {}
        for role in ROLES:
            role_idx = getattr(tokenizer, f"{role}_token_id", None)
            if role_idx is None:
                continue
            self.role_id[role] = int(role_idx)
            self.role_of.setdefault(int(role_idx), role)
            self.special_ids.add(int(role_idx))
        # The specials the post-processor puts around every text (BOS in front for Llama, none for Qwen).
        self.lead_ids, self.trail_ids = frame_of(self.backend)
        decoder = json.loads(self.backend.to_str()).get("decoder") or {}
        self.byte_level = "ByteLevel" in json.dumps(decoder)
        self._bytes: dict[int, bytes | None] = {}
        # A context token decoded in front of each token keeps word-initial spaces that decoders drop on a
        # sequence's first token (Metaspace, WordPiece).
        ctx = self.backend.encode("a", add_special_tokens=False).ids
        self.ctx_id: int | None = ctx[-1] if ctx else None
        self.ctx_text = self.backend.decode([self.ctx_id], skip_special_tokens=False) if ctx else ""

    def token_bytes(self, rid: int) -> bytes | None:
        """Raw bytes of a byte-level token (None for other tokenizers, specials and unknown ids)."""
        if not self.byte_level:
            return None
        if rid not in self._bytes:
            token = self.backend.id_to_token(rid)
            ok = token is not None and rid not in self.special_ids and all(c in _BYTE_OF for c in token)
            self._bytes[rid] = bytes(_BYTE_OF[c] for c in token) if ok else None
        return self._bytes[rid]

    def decode_in_context(self, batch: list[list[int]]) -> list[str]:
        """Decode each id list as it reads mid-text (leading spaces kept)."""
        if not batch:
            return []
        if self.ctx_id is None:
            return self.backend.decode_batch(batch, skip_special_tokens=False)
        out = self.backend.decode_batch([[self.ctx_id, *ids] for ids in batch], skip_special_tokens=False)
        texts = []
        for ids, text in zip(batch, out):
            if text.startswith(self.ctx_text):
                texts.append(text[len(self.ctx_text) :])
            else:
                texts.append(self.backend.decode(ids, skip_special_tokens=False))
        return texts


def cached_batch(cache: LRU, keys: list[Any], compute: Callable[[list[Any]], list[Any]]) -> dict[Any, Any]:
    """Values for ``keys`` from ``cache``, computing the missing ones in one batch call."""
    out: dict[Any, Any] = {}
    missing = []
    for key in dict.fromkeys(keys):
        value = cache.get_lru(key)
        if value is MISSING:
            missing.append(key)
        else:
            out[key] = value
    for key, value in zip(missing, compute(missing) if missing else []):
        cache.put(key, value)
        out[key] = value
    return out
