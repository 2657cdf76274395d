"""Wall time of whole `optdoctor diagnose` processes with and without a time budget.

    python benchmarks/budget.py [CONFIG] [--budgets 10s 30s 60s] [--repeats 3] [--default-repeats 1]

For each budget (and for no budget, ``--default-repeats`` times), runs
``python -m optdoctor diagnose CONFIG --format json [--budget B]`` as a fresh process, timed
from before the process starts to after it exits (interpreter start, torch import and exit
included: what a user or a CI job waits for). Prints per budget the median wall time, the
worst wall / budget (the contract: at most 1.2), the probes that ran, the baseline's steps and
the findings. CONFIG defaults to the ResNet-20-shaped fixture of the budget tests.

Timings on a shared machine are noisy: the load average is printed with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "tests" / "fixtures" / "budget" / "resnet.yaml"


def run(config: Path, budget: str | None) -> tuple[float, dict, int]:
    cmd = [sys.executable, "-m", "optdoctor", "diagnose", str(config), "--format", "json"]
    if budget:
        cmd += ["--budget", budget]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr}")
    return wall, json.loads(r.stdout), r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--budgets", nargs="*", default=["10s", "30s", "60s"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--default-repeats", type=int, default=1, help="runs without a budget (0: skip)")
    args = ap.parse_args()
    from optdoctor.probes.budget import parse_budget

    cases = [(b, args.repeats) for b in args.budgets] + ([(None, args.default_repeats)] if args.default_repeats else [])
    print(f"{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}")
    print(f"{'budget':>8} {'wall (median)':>14} {'worst/budget':>13} {'load':>5}  probes (baseline steps)  findings")
    for budget, n in cases:
        walls, loads = [], []
        out: dict = {}
        for _ in range(n):
            loads.append(os.getloadavg()[0])
            wall, out, _ = run(args.config, budget)
            walls.append(wall)
        probes = out["probes"]
        base = probes.get("baseline", {})
        ran = ", ".join(sorted(probes))
        worst = f"{max(walls) / parse_budget(budget):.2f}" if budget else "-"
        causes = ", ".join(f["rule"] for f in out["findings"]) or "none"
        print(f"{budget or 'none':>8} {statistics.median(walls):>12.1f} s {worst:>13} {statistics.median(loads):>5.1f}  "
              f"{ran} ({base.get('steps')})  {causes}")
        print(f"{'':>8} walls: {', '.join(f'{w:.1f}' for w in walls)} s")
        if "budget" in out:
            b = out["budget"]
            cal = b.get("calibration", {})
            print(f"{'':>10}(last run) start-up {cal.get('started_at')} s, planned at {cal.get('planned_at')} s, "
                  f"probing done at {b['used']} s; probes (estimate/took s): "
                  + ", ".join(f"{k} {v['estimate']}/{v['took']}" for k, v in b.get("probes", {}).items()))
            for c in b["cut"]:
                print(f"{'':>10}- {c}")


if __name__ == "__main__":
    main()
