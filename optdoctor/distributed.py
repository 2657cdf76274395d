"""torch.distributed, as the monitor uses it (DESIGN.md, "Two drivers, one pipeline").

- DDP averages gradients during backward: per-layer norms read at ``optimizer.step()`` are the
  global ones on every rank, no collective needed.
- Sharded gradients (FSDP2/DTensor): each rank holds a shard, so per-layer norms take one
  all-reduce of squared shard norms per measurement (``instruments/sharded_grad_norms.py``);
  there the monitor measures losses and gradient norms only (the other instruments read whole
  tensors), and follow-up probes are not supported.
- Decisions reduce over ranks: training losses are averaged across ranks in one all-reduce per
  checkpoint (a NaN on any rank makes the mean NaN: a divergence on any rank is a divergence),
  and the diagnosis is computed on rank 0 and broadcast, so every rank holds the same findings.
  Statistics of the data each rank sees are those of the whole global batch: activation
  statistics are combined at each measured step (two all-reduces of counts and sums,
  ``instruments/activations.py``), input statistics at ``diagnose`` (one all-reduce of
  per-feature sums, ``instruments/data_stats.py``).
- Only rank 0 prints or writes files.
- Every collective here is called by every rank at the same point of the same calls (the
  monitor's checkpoints and ``diagnose``), so no rank waits for one that never comes.

Without an initialised process group every function is the single-process identity.
"""

from __future__ import annotations

from typing import Any


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device():
    """Where this backend's collectives want their tensors: gloo CPU ones, NCCL device ones."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_across_ranks(t):
    """``t`` (a float64 tensor) averaged over ranks, in place; one all-reduce. Gloo wants CPU
    tensors, NCCL device ones: the tensor is moved to the backend's device and back."""
    if not active():
        return t
    import torch.distributed as dist

    buf = t.to(device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / dist.get_world_size()).to(t.device)


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for results, not for tensors per step)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
