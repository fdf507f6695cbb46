"""FSDP2 sharding of the frozen LLMs' decoder layers across processes (``shard_llms``)."""

from __future__ import annotations

import torch
from torch import nn

from c2c.cache import backbone
from c2c.model import C2CModel
from c2c.train.errors import ConfigError

__all__ = ["shard_frozen_llms"]


def shard_frozen_llms(c2c: C2CModel, device: torch.device, world: int) -> None:
    """FSDP2 (``fully_shard``) over every decoder layer of the frozen receiver and sharers.

    Each process keeps 1/world of every layer's weights; a layer's weights are gathered for its forward and
    again for the backward that carries gradients to the fused cache rows (the weights themselves get no
    gradient). Embeddings, final norms and LM heads stay whole on every process (tied embeddings cannot be
    split from their head). Every process must run the same forward calls, which the trainer guarantees
    (same number of micro-batches everywhere, no micro-batch without fused rows).
    """
    # here, not at the top: torch builds without distributed support still train on one process
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for llm in (c2c.receiver, *c2c.sharers):
        layers = getattr(backbone(llm), "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ConfigError(
                f"shard_llms: {type(llm).__name__} has no decoder layer list at .{llm.base_model_prefix}.layers"
            )
        for layer in layers:
            fully_shard(layer, mesh=mesh)  # moves this layer's shard to the mesh device
        for module in llm.modules():  # the rest (embeddings, norms, head, rotary buffers) stays whole
            tensors: list[torch.Tensor] = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            for t in tensors:
                if type(t).__name__ != "DTensor" and t.device != device:
                    t.data = t.data.to(device)
