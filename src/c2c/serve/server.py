"""Running the app: uvicorn's server with a graceful shutdown that ends every open request first."""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from c2c.serve.schema import ServingEngine


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which on SIGINT / SIGTERM first ends every open request of ``engine`` with an
    error event (streams get ``{"error": ...}`` and ``[DONE]``), then shuts down as uvicorn does (stop
    accepting, wait for the now-finishing connections, lifespan shutdown)."""

    def __init__(self, config: uvicorn.Config, engine: ServingEngine) -> None:
        super().__init__(config)
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # From a signal handler (or another thread): hand the work to the loop, never block here.
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.engine.begin_shutdown)
        super().handle_exit(sig, frame)


def run_server(app: FastAPI, engine: ServingEngine, **config: Any) -> None:
    """Run ``app`` with :class:`GracefulServer` (``config``: ``uvicorn.Config`` keywords). Returns after a
    graceful shutdown on SIGINT / SIGTERM (uvicorn re-raises the signal after shutting down; a SIGINT is
    then a ``KeyboardInterrupt``, swallowed here as ``uvicorn.run`` does)."""
    with contextlib.suppress(KeyboardInterrupt):
        GracefulServer(uvicorn.Config(app, **config), engine).run()
