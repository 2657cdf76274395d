"""What the in-loop Monitor costs: the same training loop with and without it.

    python benchmarks/monitor_overhead.py [--steps 300] [--repeats 9] [--every 10]

For each model, in ONE process, interleaved ``--repeats`` rounds after a warm-up round (the
order alternating every round), the same model init, data, batch order, optimizer and steps:

- ``plain``: forward, loss, zero_grad, backward, step (and nothing else);
- ``monitor``: the same loop with ``optdoctor.Monitor(model, opt)`` at its default schedule
  (loss every step; gradient norms and update ratios every ``--every`` steps (default 20, the
  Monitor's), activations/histograms/cosines every 5x that; a checkpoint every 100 steps),
  ``monitor.step(loss)`` after each step, and ``close()`` (not ``diagnose``: that is a one-off
  after training, reported separately).

Prints the median seconds of each, the median over rounds of the per-round ratio
monitor/plain (the issue's target: at most 1.1x on the small MLP and CNN) and the median
seconds of one ``diagnose()`` at the end. Also checks that the monitored loop trains exactly
as the plain one (same final loss): instruments must not change what they measure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

torch.set_num_threads(1)

import optdoctor  # noqa: E402
from optdoctor import data, models  # noqa: E402

F = torch.nn.functional


def mlp_setup():
    (X, y), _ = data.blobs()
    torch.manual_seed(0)
    model = models.mlp(in_dim=20, out_dim=4, depth=3, width=64, act="relu", init="kaiming_normal")
    return model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), X, y


def cnn_setup():
    (X, y), _ = data.bars(image_size=8)
    torch.manual_seed(0)
    model = models.cnn(in_channels=1, out_dim=4, image_size=8, channels=[8, 16])
    return model, lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3), X, y


MODELS = {"mlp-3x64": mlp_setup, "cnn-8-16": cnn_setup}


def run(setup, steps: int, monitor_kw: dict | None) -> tuple[float, float, float]:
    model, make_opt, X, y = setup()
    opt = make_opt(model)
    g = torch.Generator().manual_seed(0)
    batches = []
    perm, pos = torch.randperm(len(X), generator=g), 0
    for _ in range(steps):
        if pos + 64 > len(X):
            perm, pos = torch.randperm(len(X), generator=g), 0
        idx = perm[pos:pos + 64]
        pos += 64
        batches.append((X[idx], y[idx]))
    t0 = time.perf_counter()
    mon = optdoctor.Monitor(model, opt, **monitor_kw) if monitor_kw is not None else None
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
    last = float(loss.detach())
    elapsed = time.perf_counter() - t0
    diag_s = 0.0
    if mon is not None:
        t1 = time.perf_counter()
        mon.diagnose()
        diag_s = time.perf_counter() - t1
        mon.close()
    return elapsed, last, diag_s


def bench(name: str, steps: int, repeats: int, every: int) -> dict:
    setup = MODELS[name]
    kw = {"every": every, "detail_every": 5 * every}
    run(setup, steps, None)
    run(setup, steps, kw)  # warm-up
    plain, mon, ratios, diag = [], [], [], []
    for r in range(repeats):
        order = [None, kw] if r % 2 == 0 else [kw, None]
        got = {}
        for k in order:
            got["monitor" if k else "plain"] = run(setup, steps, k)
        plain.append(got["plain"][0])
        mon.append(got["monitor"][0])
        diag.append(got["monitor"][2])
        ratios.append(got["monitor"][0] / got["plain"][0])
        if got["monitor"][1] != got["plain"][1]:
            raise SystemExit(f"{name}: the monitored loop trained differently ({got['monitor'][1]} vs {got['plain'][1]})")
    return {"plain": statistics.median(plain), "monitor": statistics.median(mon), "ratio": statistics.median(ratios),
            "diagnose": statistics.median(diag)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--only", choices=sorted(MODELS))
    args = ap.parse_args(argv)
    print(f"{args.steps} steps, every={args.every}, {args.repeats} interleaved rounds, medians")
    print(f"{'model':<10} {'plain s':>8} {'monitor s':>10} {'ratio':>7} {'diagnose s':>11}")
    for name in ([args.only] if args.only else MODELS):
        r = bench(name, args.steps, args.repeats, args.every)
        print(f"{name:<10} {r['plain']:>8.3f} {r['monitor']:>10.3f} {r['ratio']:>6.3f}x {r['diagnose']:>11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
