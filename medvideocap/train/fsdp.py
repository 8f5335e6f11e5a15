"""Fully sharded training (``distributed: {strategy: fsdp}``): torch's FSDP2 ``fully_shard``, one unit per
``WanTransformerBlock``, and sharded checkpoints through ``torch.distributed.checkpoint``.

Why torch's API and not accelerate's FSDP plugin: accelerate (1.16) takes its FSDP path only for GPU-like
distributed types; on CPU ranks (``MULTI_CPU``, gloo) it ignores ``fsdp_plugin`` and wraps the model in
DistributedDataParallel without a word, so that path could never be exercised off a GPU. ``fully_shard``
itself runs on CPU/gloo and CUDA/NCCL alike, so the one sharded path the trainer has is the one its
two-rank CPU test runs. accelerate keeps the rest of its job: processes, device, autocast, the loss's
reduction, the LR schedule and RNG states in ``save_state``.

What the pieces are:

* **wrap unit**: each ``WanTransformerBlock`` (diffusers' ``_no_split_modules`` for Wan), then the root,
  which holds the patch and condition embedders and the head. Parameters are sharded on their first dim
  over every rank (full sharding, ``reshard_after_forward``: a block is all-gathered for its forward and
  again for its backward).
* **mixed precision**: fp32 master weights, gradients and optimizer state (sharded); the all-gathered
  parameters are cast to the run's compute dtype (bf16/fp16), gradients reduce-scattered in fp32.
* **checkpoints**: model, optimizer and EMA shadow are saved by every rank as its own shards
  (``sharded/`` in the checkpoint, DCP's format), so no rank ever holds the whole model to save it; a
  resume loads them into the same sharding. Resharding to another world size is DCP's too (its load
  redistributes), but only a same-size resume is tested.
* **export**: the one time the whole model is assembled, on the main rank's host
  (:func:`gather_for_export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvideocap.train.config import TrainConfig
from medvideocap.train.model import trainable_params, weight_dtype

#: In a checkpoint folder: the DCP shards of model, optimizer and EMA (one file per rank).
SHARDED_DIR = "sharded"


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (the tensor itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def shard_transformer(cfg: TrainConfig, transformer: Any, accelerator: Any) -> Any:
    """``fully_shard`` each block, then the root, over every rank of the run, on its device."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if accelerator.num_processes < 2 or not dist.is_initialized():
        raise ValueError(
            "distributed.strategy=fsdp shards over several processes: start the run with `accelerate launch "
            "--num_processes N -m medvideocap.train ...` or `torchrun --nproc_per_node N -m medvideocap.train "
            "...` (on CPUs add ACCELERATE_USE_CPU=true), or set distributed.strategy=ddp"
        )
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    policy = MixedPrecisionPolicy()
    if cfg.mixed_precision != "no":
        policy = MixedPrecisionPolicy(
            param_dtype=weight_dtype(cfg.mixed_precision), reduce_dtype=torch.float32
        )
    transformer.to(accelerator.device)
    for block in transformer.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(transformer, mesh=mesh, mp_policy=policy)
    return transformer


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded gradients: the total norm over every rank's shards, as a plain
    tensor (torch returns it as a DTensor for DTensor gradients)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _state(transformer: Any, optimizer: Any, ema: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(transformer, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    if ema is not None:
        names = [n for n, _ in trainable_params(transformer)]
        state["ema"] = dict(zip(names, ema.shadow_params, strict=True))
    return state


def save_sharded(directory: Path, transformer: Any, optimizer: Any, ema: Any) -> None:
    """Every rank writes its shards of the model, optimizer state and EMA shadow (a collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(transformer, optimizer, ema), checkpoint_id=str(directory / SHARDED_DIR))


def load_sharded(directory: Path, transformer: Any, optimizer: Any, ema: Any) -> None:
    """Load what :func:`save_sharded` wrote into this run's sharded model, optimizer and EMA (a
    collective; the optimizer's state is created first, by torch, so there is a place to load into)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    where = directory / SHARDED_DIR
    if not where.is_dir():
        raise FileNotFoundError(
            f"{directory}: no {SHARDED_DIR}/ folder: the checkpoint was not written by a "
            "distributed.strategy=fsdp run; resume it with the strategy it was saved with"
        )
    state = _state(transformer, optimizer, ema)
    dcp.load(state, checkpoint_id=str(where))
    set_state_dict(
        transformer, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    if ema is not None:
        names = [n for n, _ in trainable_params(transformer)]
        for shadow, name in zip(ema.shadow_params, names, strict=True):
            shadow.copy_(state["ema"][name])


def gather_for_export(transformer: Any, ema: Any, *, main: bool) -> tuple[Any, Any]:
    """(an unsharded copy of the transformer, its EMA) on the main rank's host, (None, None) elsewhere:
    every rank takes part in gathering each tensor, the main rank keeps them on its CPU."""
    from diffusers import WanTransformer3DModel
    from diffusers.training_utils import EMAModel
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(transformer, options=options)
    shadows = [
        (s.full_tensor() if isinstance(s, DTensor) else s).cpu() for s in (ema.shadow_params if ema else [])
    ]
    if not main:
        return None, None
    plain = WanTransformer3DModel.from_config(transformer.config)
    plain.load_state_dict(full)
    plain_ema = None
    if ema is not None:
        params = [p for _, p in trainable_params(plain)]
        plain_ema = EMAModel(params, decay=ema.decay, foreach=True)
        plain_ema.shadow_params = shadows
    return plain, plain_ema
