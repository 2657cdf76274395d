"""`optdoctor diagnose` in one process against the same command under torchrun (issue 12 item 4).

    python benchmarks/diagnose_torchrun.py [--nproc 2] [--rounds 5] [CONFIG ...]

For each config (default: three bundled samples), ``--rounds`` interleaved rounds after a
warm-up round, the order alternating every round: ``python -m optdoctor diagnose CONFIG
--format json --check`` as one process, and the same under ``python -m torch.distributed.run
--standalone --nproc_per_node=N`` (whole probes split across the ranks, traces gathered, rank 0
reports). Whole processes, wall time from start to exit (Python's and torch's start-up
included: that is what a user waits for). Prints each one's median seconds and the median of the
per-round ratio torchrun / one process, and checks that every run printed the same JSON report
as the first one-process run (the findings must not depend on how the plan was split).

On a machine with fewer cores than ``--nproc`` x probe threads the ranks share cores, so the
ratio says what splitting the plan buys there, not on a cluster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ["sample_runs/lr-too-high.yaml", "sample_runs/vanishing-gradients.yaml", "sample_runs/ill-conditioning.yaml"]


def _run(cmd: list[str]) -> tuple[float, str, int]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return time.perf_counter() - t0, p.stdout, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=SAMPLES)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    same = True
    print(f"{'config':40s} {'one process s':>14s} {'torchrun s':>11s} {'ratio':>7s}  same report")
    for cfg in args.configs:
        diag = ["-m", "optdoctor", "diagnose", cfg, "--format", "json", "--check"]
        one = [sys.executable, *diag]
        multi = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", *diag]
        _, ref, code = _run(one)  # warm-up round: also the reference report
        _run(multi)
        t_one, t_multi, ratios, ok = [], [], [], True
        for r in range(args.rounds):
            order = [(one, t_one), (multi, t_multi)]
            for cmd, times in (order if r % 2 == 0 else order[::-1]):
                secs, out, rc = _run(cmd)
                times.append(secs)
                ok &= out == ref and rc == code
            ratios.append(t_multi[-1] / t_one[-1])
        same &= ok
        print(f"{cfg:40s} {statistics.median(t_one):14.2f} {statistics.median(t_multi):11.2f} "
              f"{statistics.median(ratios):7.2f}  {'yes' if ok else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
