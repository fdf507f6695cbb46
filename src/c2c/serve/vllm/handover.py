"""Hand-over of fused rows from c2c's process to vLLM's: one raw tensor file per request in shared memory.

The format is the connector's contract, defined once in ``kv_connector/c2c_kv_rows.py``: a little-endian
tensor ``[L, 2, P, H, D]`` and a small dict, sent in the request's ``kv_transfer_params["c2c"]``, that
describes it. Files are written under a temporary name and renamed, so vLLM never sees half a file; the store
deletes a file when its request has ended and every file it still owns when it closes.

``/dev/shm`` (RAM) is the default: vLLM must run on the same host. A directory on a shared filesystem
works across hosts, at that filesystem's speed.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from c2c.serve.vllm.kv_connector.c2c_kv_rows import describe


@dataclass
class Handover:
    """One written hand-over. ``params`` goes into ``kv_transfer_params["c2c"]``."""

    path: str
    params: dict[str, Any]
    nbytes: int
    seconds: float


class HandoverStore:
    """Writes hand-over files into ``directory`` and removes them again."""

    def __init__(self, directory: str = "/dev/shm") -> None:
        if not os.path.isdir(directory):
            raise ValueError(
                f"hand-over directory {directory!r} does not exist; give an existing directory on a RAM disk "
                "(/dev/shm) or a filesystem that vLLM's processes can read"
            )
        if not os.access(directory, os.W_OK):
            raise ValueError(f"hand-over directory {directory!r} is not writable by this process")
        self.directory = directory
        self.prefix = f"c2c-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._live: set[str] = set()
        self._lock = threading.Lock()

    def write(self, rows: Tensor) -> Handover:
        """Write ``rows [L, 2, P, H, D]`` and describe them for the connector."""
        return self.write_with(tuple(rows.shape), rows.dtype, lambda dst: dst.copy_(rows.detach()))

    def write_with(self, shape: tuple[int, ...], dtype: torch.dtype, fill: Callable[[Tensor], object]) -> Handover:
        """Create a hand-over of ``shape`` ``[L, 2, P, H, D]`` and let ``fill`` write the rows straight into the
        mapped file (one copy from wherever they are; no staging tensor). Published only once complete."""
        if len(shape) != 5 or shape[1] != 2:
            raise ValueError(f"rows must be [L, 2, P, H, D], got {tuple(shape)}")
        t0 = time.perf_counter()
        path = os.path.join(self.directory, f"{self.prefix}{uuid.uuid4().hex}.kv")
        tmp = path + ".tmp"
        numel = math.prod(shape)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        with self._lock:
            self._live.add(path)
        try:
            with open(tmp, "wb") as f:
                f.truncate(nbytes)
            if numel:
                fill(torch.from_file(tmp, shared=True, size=numel, dtype=dtype).view(shape))
            os.replace(tmp, path)  # vLLM sees the file complete or not at all
        except BaseException:
            self.release(path)
            _unlink(tmp)
            raise
        return Handover(path, describe(path, tuple(shape), dtype), nbytes, time.perf_counter() - t0)

    def release(self, path: str) -> None:
        """Delete one hand-over (its request has ended). Idempotent. Counted live until the file is gone."""
        _unlink(path)
        with self._lock:
            self._live.discard(path)

    @property
    def live(self) -> int:
        """Hand-overs written and not yet released."""
        with self._lock:
            return len(self._live)

    def close(self) -> None:
        """Delete every hand-over this store still owns (also leftovers of an interrupted write)."""
        with self._lock:
            paths, self._live = list(self._live), set()
        for p in paths:
            _unlink(p)
            _unlink(p + ".tmp")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
