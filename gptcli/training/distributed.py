"""What the training loop needs from distribution: the accelerator and full (unsharded) state.

accelerate owns devices, mixed precision and distribution (DDP under
`torchrun`, gloo on CPU; FSDP2 with --fsdp). Checkpoints hold the full model
and the full optimizer state in one format whatever the mode, so a run saved
under FSDP resumes under DDP, in one process or with another world size: the
functions below gather that state on rank 0 and hand each rank its shard
back when resuming. Every gather is a collective: all ranks call it.
"""

from __future__ import annotations

import os
from typing import Any

from gptcli.training.precision import mixed_precision
from gptcli.training.settings import TrainSettings


def make_accelerator(settings: TrainSettings, device: Any, world_size: int = 1) -> Any:
    """The accelerator for `device` (the run's resolved torch.device): FSDP2 with --fsdp under
    torchrun, else DDP (several processes) or a single process."""
    from accelerate import Accelerator

    if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        import torch

        torch.cuda.set_device(device.index)  # accelerate uses the current device: honour --device cuda:N
    device_type = device.type
    mp = mixed_precision(settings.precision, device_type)
    if not (settings.fsdp and world_size > 1):
        return Accelerator(cpu=device_type == "cpu", mixed_precision=mp)
    from accelerate.utils import DistributedType

    plugin = _fsdp_plugin(mp)
    acc = Accelerator(cpu=device_type == "cpu", mixed_precision=mp, fsdp_plugin=plugin)
    if acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate enables FSDP only on accelerators and would silently train DDP on CPUs, although
        # torch's fully_shard runs on gloo (checked with torch 2.13: same losses and gradient norms as
        # DDP); its FSDP2 code paths (prepare, no_sync, clipping, state dicts) then work unchanged.
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
    if not getattr(acc, "is_fsdp2", False):
        from gptcli.errors import GptcliError

        raise GptcliError(
            f"--fsdp could not be enabled on {device_type} (accelerate chose {acc.distributed_type}).",
            hint="Run without --fsdp to train data-parallel (DDP).",
        )
    return acc


def _fsdp_plugin(mp: str) -> Any:
    """FSDP2 (fully_shard) with one unit per transformer block (the model's _no_split_modules)."""
    import torch

    from gptcli.errors import UsageError

    try:
        from accelerate.utils import FullyShardedDataParallelPlugin
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # Low-precision compute, but gradients are reduced in fp32, as DDP does under autocast.
        policy = (
            MixedPrecisionPolicy(
                param_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[mp], reduce_dtype=torch.float32
            )
            if mp != "no"
            else MixedPrecisionPolicy()
        )
        return FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            reshard_after_forward=True,
            cpu_offload=False,
            state_dict_type="FULL_STATE_DICT",
            mixed_precision_policy=policy,
            cpu_ram_efficient_loading=False,
            activation_checkpointing=False,
        )
    except (ImportError, TypeError, ValueError) as exc:
        import accelerate

        raise UsageError(
            f"--fsdp needs FSDP2 (accelerate >= 1.6 with torch >= 2.6); found accelerate "
            f"{accelerate.__version__}, torch {torch.__version__} ({exc}).",
            hint="Upgrade them, or run without --fsdp (DDP).",
        ) from None


def load_optimizer_state(optimizer: Any, saved: dict[str, Any], fsdp: bool) -> None:
    """Load a full optimizer state; under FSDP each rank keeps its shard of every tensor."""
    if fsdp:
        import torch
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {}
        for idx, values in saved["state"].items():
            p = params[int(idx)]
            state[idx] = {
                k: distribute_tensor(v, p.device_mesh, p.placements)
                if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape
                else v
                for k, v in values.items()
            }
        saved = {**saved, "state": state}
    optimizer.load_state_dict(saved)


def full_optimizer_state(optimizer: Any, fsdp: bool, main: bool) -> dict[str, Any]:
    """The full optimizer state, in the format a plain optimizer's state_dict() has (on rank 0 under FSDP)."""
    saved = optimizer.state_dict()
    if not fsdp:
        return saved
    from torch.distributed.tensor import DTensor

    state = {}
    for idx in sorted(saved["state"]):  # the same order on every rank: each gather is a collective
        values = {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in saved["state"][idx].items()}
        if main:
            state[idx] = values
    return {**saved, "state": state}


def full_model_state(model: Any, tied_aliases: set[str]) -> dict[str, Any]:
    """The full model state dict of an FSDP model, gathered on rank 0, without the tied aliases."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # not accelerate's get_state_dict: with torch 2.13 its options return the DTensor shards
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # gathered copies no longer share storage, so save_pretrained cannot see the tie: drop the alias
    # (lm_head.weight) here, as an unsharded save does
    return {k: v for k, v in full.items() if k not in tied_aliases}


def tied_aliases(model: Any) -> set[str]:
    """Names of parameters that are the same tensor as an earlier one (tied output embeddings)."""
    first: dict[int, str] = {}
    aliases = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.add(name)
        else:
            first[id(p)] = name
    return aliases


def gather_rng_states(acc: Any) -> list[dict[str, Any]]:
    """Every rank's random states, gathered on rank 0 (a collective)."""
    from gptcli.training.checkpoint import rng_state

    mine = rng_state()
    if acc.num_processes == 1:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * acc.num_processes if acc.is_main_process else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered or []
