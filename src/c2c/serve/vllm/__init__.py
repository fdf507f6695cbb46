"""The vLLM engine of ``c2c serve --engine vllm``: c2c fuses, vLLM decodes.

Modules: :mod:`~c2c.serve.vllm.prefill` (fused rows per request, the one call into c2c's fusion),
:mod:`~c2c.serve.vllm.handover` (shared-memory files vLLM reads), ``kv_connector/c2c_kv_connector.py``
(the ``KVConnectorBase_V1`` that loads them into vLLM's paged cache; runs inside vLLM),
:mod:`~c2c.serve.vllm.server` (finding vLLM, running its server), :mod:`~c2c.serve.vllm.client`
(streaming token ids), :mod:`~c2c.serve.vllm.engine` (the :class:`~c2c.serve.engine.Engine` over them),
:mod:`~c2c.serve.vllm.launch` (the Python entry point, :func:`launch_engine`).
"""

from c2c.serve.vllm.engine import VLLMEngine
from c2c.serve.vllm.launch import VLLMOptions, launch_engine
from c2c.serve.vllm.server import VLLMUnavailable

__all__ = ["VLLMEngine", "VLLMOptions", "VLLMUnavailable", "launch_engine"]
