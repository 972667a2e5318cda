"""A frozen model sharded over the processes with FSDP2 (a teacher too big for one GPU), and telling whether a model
is sharded (its ``generate`` must then keep every process stepping until all are done).

``accelerate`` shards the *student* when the launch asks for FSDP (``examples/accelerate/fsdp.yaml``). A teacher is
not trained, so it needs neither a launcher plugin nor an optimizer: :func:`shard_frozen` applies
``torch.distributed.fsdp.fully_shard`` to each decoder layer and then the whole model, over every process of the run
(any multi-process launch: DDP or FSDP, GPUs or gloo on CPUs). Each process then keeps 1/N of the weights; a forward
gathers one layer at a time and frees it after, so the teacher's whole weights never sit on one device.
"""

from __future__ import annotations

from typing import Any


def is_sharded(model: Any) -> bool:
    """Whether any part of ``model`` is an FSDP (1 or 2) unit."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def shard_frozen(model: Any) -> Any:
    """``model`` sharded in place over every process (FSDP2, no gradients), and returned.

    Raises:
        ValueError: the run has one process (nothing to shard over), or the model names no decoder layer class
            (``_no_split_modules``) to shard by.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if processes < 2:
        raise ValueError(f"sharding the teacher needs a multi-process launch (accelerate launch --num_processes N, N "
                         f"≥ 2); this run has {processes} process")  # fmt: skip
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules) to shard by; run "
                         "the teacher whole (teacher.shard: false)")  # fmt: skip
    model.requires_grad_(False)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    # FSDP2 leaves the root's parameters (embeddings, output layer, final norm) gathered after a forward, expecting a
    # backward; a teacher has none, so they are freed again after every forward
    model.register_forward_hook(lambda module, _args, _output: module.reshard())
    model._is_fsdp_managed_module = True  # transformers' generate then keeps every process stepping (synced_gpus)
    return model


def local_parameter_count(model: Any) -> int:
    """Parameters this process holds (its shards' only, for a sharded model)."""
    total = 0
    for parameter in model.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        total += int(local.numel())
    return total
