"""C2C's KV connector for vLLM (``c2c_kv_connector``). The module is loaded by vLLM's processes, in vLLM's own
environment, from this folder on their ``PYTHONPATH``; c2c itself never imports it."""
