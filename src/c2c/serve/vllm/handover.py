"""Hand-over of fused rows from c2c's process to vLLM's: one raw tensor file per request in shared memory.

The format is the connector's contract, defined once in ``kv_connector/c2c_kv_rows.py``: a little-endian
tensor ``[L, 2, P, H, D]`` and a small dict, sent in the request's ``kv_transfer_params["c2c"]``, that
describes it. Files are written under a temporary name and renamed, so vLLM never sees half a file; the store
deletes a file when its request has ended and every file it still owns when it closes.

``/dev/shm`` (RAM) is the default: vLLM must run on the same host. A directory on a shared filesystem
works across hosts, at that filesystem's speed.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
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
        if rows.dim() != 5 or rows.shape[1] != 2:
            raise ValueError(f"rows must be [L, 2, P, H, D], got {tuple(rows.shape)}")
        t0 = time.perf_counter()
        data = rows.detach().to("cpu").contiguous()
        path = os.path.join(self.directory, f"{self.prefix}{uuid.uuid4().hex}.kv")
        tmp = path + ".tmp"
        with self._lock:
            self._live.add(path)
        try:
            # Raw bytes of any dtype (bfloat16 has no numpy type): view as bytes, write, then publish by rename.
            raw = data.reshape(-1).view(torch.uint8).numpy()
            raw.tofile(tmp)
            os.replace(tmp, path)
        except BaseException:
            self.release(path)
            _unlink(tmp)
            raise
        params = describe(path, tuple(data.shape), data.dtype)
        return Handover(path, params, int(raw.nbytes), time.perf_counter() - t0)

    def release(self, path: str) -> None:
        """Delete one hand-over (its request has ended). Idempotent."""
        with self._lock:
            self._live.discard(path)
        _unlink(path)

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
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
