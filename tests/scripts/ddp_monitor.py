"""A DDP training loop with the Monitor, for ``torchrun --nproc_per_node=2`` (gloo, CPU).

    torchrun --nproc_per_node=2 tests/scripts/ddp_monitor.py OUT_DIR [--single | --fsdp]

Each rank trains on its half of every global batch of 64; with ``--single`` (no torchrun) one
process trains on the whole global batch: the per-layer gradient norms must be the same.
``--fsdp``: the model is sharded with FSDP2 (``fully_shard``, per Linear and the root) instead of
DDP: gradients are DTensor shards, norms need the all-reduce of squared norms.
Rank 0 prints the report and writes OUT_DIR/grad_norm.npy, acts.npy (the activation statistics),
data_stats.json and diagnosis.json, after checking that every rank holds the same activation and
input statistics; other ranks print nothing and write nothing.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

torch.set_num_threads(1)

import optdoctor  # noqa: E402
from optdoctor import data, models  # noqa: E402

F = torch.nn.functional
ACT_KEYS = ("act.dead_frac", "act.sat_frac", "act.scale", "act.unit_diversity")


def main() -> int:
    out = Path(sys.argv[1])
    single = "--single" in sys.argv
    fsdp = "--fsdp" in sys.argv
    tag = "_single" if single else ("_fsdp" if fsdp else "")
    if not single:
        dist.init_process_group("gloo")
    rank, world = (0, 1) if single else (dist.get_rank(), dist.get_world_size())
    torch.manual_seed(0)
    model = models.mlp(in_dim=20, out_dim=4, depth=6, width=32, act="tanh", init="xavier_normal")
    model[3] = torch.nn.ReLU()  # one ReLU among the tanh layers: dead fractions as well as saturation
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        net = fully_shard(model, mesh=mesh)
    else:
        net = model if single else torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    (X, y), (Xv, yv) = data.blobs()
    with optdoctor.Monitor(net, opt, every=1, detail_every=5, checkpoint_every=10,
                           tensorboard=out / f"tb{tag}") as mon:
        for step in range(30):
            lo = (step * 64) % 448
            xb, yb = X[lo:lo + 64], y[lo:lo + 64]
            share = 64 // world
            xb, yb = xb[rank * share:(rank + 1) * share], yb[rank * share:(rank + 1) * share]
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
            if step % 10 == 9 and not fsdp:
                with torch.no_grad():
                    model.eval()
                    o = model(Xv)
                    model.train()
                mon.validate(F.cross_entropy(o, yv), (o.argmax(1) == yv).float().mean())
        diag = mon.diagnose()
        text = mon.report("text")
        trace = mon.trace()
    acts = np.stack([trace.values(k) for k in ACT_KEYS]) if not fsdp else None  # (4, T, A)
    if not single:  # every rank holds the combined activation and input statistics, not its own
        got = [None] * world
        dist.all_gather_object(got, (acts, trace.meta.get("data_stats")))
        if rank == 0:
            for a, d in got[1:]:
                assert (a is None and acts is None) or np.array_equal(a, acts, equal_nan=True), "ranks disagree on act.*"
                assert d == trace.meta.get("data_stats"), "ranks disagree on data_stats"
    if rank == 0:
        print(text)
        if acts is not None:
            np.save(out / f"acts{tag}.npy", acts)
            (out / f"data_stats{tag}.json").write_text(json.dumps(trace.meta["data_stats"]))
        np.save(out / f"grad_norm{tag}.npy", trace.values("grad.norm"))
        np.save(out / f"loss{tag}.npy", trace.values("loss.train"))
        (out / f"diagnosis{tag}.json").write_text(mon.report("json"))
    assert diag is not None and diag.findings is not None  # every rank holds the diagnosis
    if not single:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
