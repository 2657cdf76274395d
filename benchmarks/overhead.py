"""What the per-step instruments cost: an instrumented probe against the same plain training loop.

    python benchmarks/overhead.py [--steps 200] [--repeats 7] [--only NAME] [--profile]

For each model below, in ONE process, interleaved A/B/C ``--repeats`` times (after a warm-up
round, the order rotating every round):

- ``plain``: the bare loop -- same model and init (``Setup.build_model``), same data, same batch
  order (the probe's ``torch.Generator`` permutation), same optimizer and steps; only forward,
  loss, zero_grad, backward, step and ``float(loss)``;
- ``probe``: ``run_probe`` itself with ``full=True`` and no curvature: GradNorms, UpdateRatios,
  Activations, WeightSymmetry, GradHistogram, DataStats, the layer-order discovery pass and the
  loss/lr logging exactly as a diagnosis attaches them, plus
  its two checkpoint evaluations (steps 0 and end; ``probe.val_every`` = steps);
- ``lite``: ``run_probe`` with ``full=False`` (what the variant probes run: no histograms, no
  input statistics, no curvature).

Prints the median seconds of each and the median over rounds of the per-round ratio
probe/plain (and lite/plain). The issue's target: under 1.3x for the per-step instruments.
It also checks that the plain loop *is* the same training: its loss series must equal the
probe's bit for bit (instruments must not change what they measure).

``--profile`` runs cProfile over a few probes of each model and prints where the time outside
the plain loop's work goes (the functions of optdoctor/probes/ and the torch calls they make).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from optdoctor.config import load_config  # noqa: E402
from optdoctor.probes.runner import ProbeSpec, run_probe  # noqa: E402
from optdoctor.probes.setup import Setup, prepare  # noqa: E402

PROBE = "probe: {{steps: {steps}, val_every: {steps}, hessian: {{enabled: false}}, threads: 1}}\n"
MODELS = {
    # the samples' small MLP
    "mlp-3x64": """\
model: {factory: optdoctor.models:mlp, args: {depth: 3, width: 64, act: relu, init: kaiming_normal}}
data: {factory: optdoctor.data:blobs, batch_size: 64}
optimizer: {name: sgd, lr: 0.05, args: {momentum: 0.9}}
""",
    "mlp-10x64": """\
model: {factory: optdoctor.models:mlp, args: {depth: 10, width: 64, act: tanh, init: xavier_normal}}
data: {factory: optdoctor.data:blobs, batch_size: 64}
optimizer: {name: sgd, lr: 0.05, args: {momentum: 0.9}}
""",
    # the healthy-cnn sample
    "cnn-8-16": """\
model: {factory: optdoctor.models:cnn, args: {channels: [8, 16]}}
data: {factory: optdoctor.data:bars, args: {n_train: 512, image_size: 8}, batch_size: 64}
optimizer: {name: adamw, lr: 3e-3}
""",
}


def plain_loop(setup: Setup, steps: int, seed: int) -> list[float]:
    """The user's training as it would run without optdoctor: run_probe's loop minus instruments."""
    cfg = setup.cfg
    model = setup.build_model(seed)
    optimizer = setup.optimizer_cls(model.parameters(), lr=cfg.optimizer.lr, **cfg.optimizer.args)
    gen = torch.Generator().manual_seed(seed)
    n = setup.train.n  # tensors (probes.batches.TensorSource): indexed directly
    bs = setup.batch_size
    model.train()
    perm, pos = torch.randperm(n, generator=gen), 0
    losses = []
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        *X, y = setup.train.take(perm[pos:pos + bs].to(setup.device))
        pos += bs
        loss = setup.loss_fn(model(*X), y)
        losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return losses


def variants(setup: Setup, steps: int, seed: int):
    return {
        "plain": lambda: plain_loop(setup, steps, seed),
        "probe": lambda: run_probe(setup, ProbeSpec(steps=steps, seed=seed, full=True)),
        "lite": lambda: run_probe(setup, ProbeSpec(steps=steps, seed=seed, full=False)),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, setup: Setup, steps: int, repeats: int) -> dict:
    seed = setup.cfg.seed
    runs = variants(setup, steps, seed)
    # same training? (instruments must not change what they measure)
    plain = plain_loop(setup, steps, seed)
    trace, _ = run_probe(setup, ProbeSpec(steps=steps, seed=seed, full=True))
    same = plain == trace.values("loss.train").tolist() and trace.status == "completed"
    for fn in runs.values():  # warm-up round
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate the order every round
            times[k].append(timed(runs[k]))
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in ("probe", "lite")}
    return {
        "name": name, "steps": steps, "params": trace.meta["n_params"], "layers": len(trace.meta["layers"]),
        "acts": len(trace.meta["act_layers"]), "same": same,
        "median": {k: statistics.median(v) for k, v in times.items()}, "ratio": ratio,
    }


def profile(setup: Setup, steps: int, rounds: int = 3) -> str:
    seed = setup.cfg.seed
    run_probe(setup, ProbeSpec(steps=steps, seed=seed))  # warm
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        run_probe(setup, ProbeSpec(steps=steps, seed=seed, full=True))
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"probes[/\\](instruments[/\\]\w+|recorder|runner)\.py", 25)
    stats.sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", choices=sorted(MODELS))
    ap.add_argument("--profile", action="store_true", help="cProfile where the instrumented probe spends its time")
    args = ap.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} steps, "
          f"{args.repeats} interleaved rounds, medians")
    print(f"{'model':<10} {'params':>7} {'L':>3} {'A':>3} {'plain s':>8} {'probe s':>8} {'lite s':>8} "
          f"{'probe/plain':>12} {'lite/plain':>11}  same losses")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in MODELS.items():
            if args.only and name != args.only:
                continue
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text + PROBE.format(steps=args.steps))
            setup = prepare(load_config(path))
            r = bench(name, setup, args.steps, args.repeats)
            results.append(r)
            m, q = r["median"], r["ratio"]
            print(f"{name:<10} {r['params']:>7} {r['layers']:>3} {r['acts']:>3} {m['plain']:>8.3f} {m['probe']:>8.3f} "
                  f"{m['lite']:>8.3f} {q['probe']:>11.2f}x {q['lite']:>10.2f}x  {'yes' if r['same'] else 'NO'}")
            if args.profile:
                print(profile(setup, args.steps))
    worst = max(r["ratio"]["probe"] for r in results)
    print(f"worst probe/plain: {worst:.2f}x (target < 1.3x)")
    return 0 if all(r["same"] for r in results) and math.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
