"""``python -m c2c.serve.vllm --model M [...]``: print the command that starts a vLLM server for c2c to attach to."""

from c2c.serve.vllm.server import main

main()
