"""Per-layer gradient norms when gradients are sharded across ranks (FSDP2 / DTensor)."""

from __future__ import annotations

import torch

from optdoctor.probes.instruments.grad_norms import GradNorms


class ShardedGradNorms(GradNorms):
    """``GradNorms`` for parameters that are DTensors: each rank holds a shard of every
    gradient, so the squared norms of the local shards are summed over ranks in ONE all-reduce
    per measurement (a replicated DTensor, whole on every rank, counts 1/world per rank).
    Same series as ``GradNorms``; every rank must reach the measured steps together (they do:
    the schedule is the same on every rank)."""

    def after_backward(self, step: int) -> None:
        if not self.due(step) or not self.params:
            return
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_initialized() else 1
        local, weight, present = [], [], []
        for p in self.params:
            g = p.grad
            present.append(g is not None)
            if g is None:
                continue
            placements = getattr(g, "placements", None)
            if placements is not None:
                sharded = any(type(pl).__name__ in ("Shard", "_StridedShard") for pl in placements)
                g = g.to_local()
                weight.append(1.0 if sharded else 1.0 / world)
            else:
                weight.append(1.0 / world)  # a plain tensor: the same on every rank
            local.append(g.detach())
        if local:
            sq = torch.stack(torch._foreach_norm(local)).to(torch.float64) ** 2 * torch.tensor(weight, dtype=torch.float64, device=local[0].device)
        else:
            sq = torch.zeros(0, dtype=torch.float64)
        if world > 1:
            buf = sq.cpu() if dist.get_backend() == "gloo" else sq
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            sq = buf
        norms = sq.sqrt()
        if not all(present):
            full = torch.full((len(present),), float("nan"), dtype=torch.float64)
            full[[i for i, ok in enumerate(present) if ok]] = norms.cpu()
            norms = full
        self.recorder.log(self.RAW, step, norms)
