"""Serving: an OpenAI-compatible server (``c2c serve``: chat completions and completions), a comparison page
and a terminal chat (``c2c chat``).

Modules: :mod:`~c2c.serve.protocol` (wire format), :mod:`~c2c.serve.schema` (limits, prompt costs, events,
refusals, and the two interfaces: ``Backend`` below the engine, ``ServingEngine`` above it, which another
engine implements to be served by the same app, page and chat), :mod:`~c2c.serve.engine` (admission, queue,
micro-batching, streaming events), :mod:`~c2c.serve.backend` (``C2CModel`` adapter), :mod:`~c2c.serve.app`
(FastAPI, graceful shutdown), :mod:`~c2c.serve.chat` (terminal), :mod:`~c2c.serve.cli` (command functions).
FastAPI and uvicorn come with the ``serve`` extra: ``pip install 'c2c[serve]'``.
"""
