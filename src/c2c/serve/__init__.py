"""Serving: an OpenAI-compatible server (``c2c serve``), a comparison page and a terminal chat (``c2c chat``).

Modules: :mod:`~c2c.serve.protocol` (wire format), :mod:`~c2c.serve.schema` (limits, events, refusals,
backend protocol), :mod:`~c2c.serve.engine` (queue, micro-batching,
streaming events), :mod:`~c2c.serve.backend` (``C2CModel`` adapter), :mod:`~c2c.serve.app` (FastAPI),
:mod:`~c2c.serve.chat` (terminal), :mod:`~c2c.serve.cli` (command functions). FastAPI and uvicorn come
with the ``serve`` extra: ``pip install 'c2c[serve]'``.
"""
