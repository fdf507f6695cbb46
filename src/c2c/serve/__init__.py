"""Serving: an OpenAI-compatible server (``c2c serve``: chat completions and completions), a comparison page
and a terminal chat (``c2c chat``).

Modules: :mod:`~c2c.serve.protocol` (wire format), :mod:`~c2c.serve.schema` (limits, prompt costs, events,
refusals, and the two interfaces: ``Backend`` below the engine, ``ServingEngine`` above it, which another
engine implements to be served by the same app, page and chat), :mod:`~c2c.serve.handle` (one request's
event stream and cancellation), :mod:`~c2c.serve.engine` (admission, queue, micro-batching, streaming
events), :mod:`~c2c.serve.streaming` (per-row text streams), :mod:`~c2c.serve.backend` (``C2CModel``
adapter), :mod:`~c2c.serve.errors` (OpenAI-shaped errors), :mod:`~c2c.serve.middleware` (API key, body
limit), :mod:`~c2c.serve.relay` (handle events to responses and SSE streams), :mod:`~c2c.serve.app` (FastAPI
routes), :mod:`~c2c.serve.server` (uvicorn with a graceful shutdown), :mod:`~c2c.serve.chat` (terminal),
:mod:`~c2c.serve.cli` (command functions), :mod:`~c2c.serve.vllm` (``--engine vllm``).
FastAPI and uvicorn come with the ``serve`` extra: ``pip install 'c2c[serve]'``.
"""
