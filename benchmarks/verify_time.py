"""What `--verify` costs: `optdoctor diagnose` with and without it, on every bundled sample.

    python benchmarks/verify_time.py [--rounds 1] [SAMPLE ...]

For each sample config (default: every sample_runs/*.yaml in the manifest), ``--rounds``
interleaved pairs (the order alternating every round) of whole processes: ``python -m optdoctor
diagnose CONFIG --format json`` and the same with ``--verify`` at the shipped time limit
(``probe.verify.time_factor`` 1.5: remedies are tried only while they fit in half the plain
diagnosis' time, and the report lists the ones skipped for time). Wall time from start to exit.
Prints, per sample, the median seconds of each, the median per-pair ratio verify / plain, how
many remedies were tried and how many were skipped for time, how many fixes were trained longer
(``probe.verify.longer``) and how many were not, for time; then the median and the largest
ratio over the samples (the issue's target: a median of at most 1.5x, or the report says what
it skipped).
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

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _samples() -> list[str]:
    manifest = yaml.safe_load((ROOT / "sample_runs" / "manifest.yaml").read_text())  # file name -> expectation
    return [str(Path("sample_runs") / name) for name in manifest]


def _run(cfg: str, verify: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "optdoctor", "diagnose", cfg, "--format", "json"] + (["--verify"] if verify else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=900)
    secs = time.perf_counter() - t0
    try:
        return secs, json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{cfg}: no JSON report (exit {p.returncode}): {p.stderr[-1500:]}")


def _tried(report: dict) -> tuple[int, int, int, int]:
    """(remedies whose probe ran, remedies skipped for time, fixes trained longer, fixes not
    trained longer for time) over the report's findings."""
    tried = skipped = longer = not_longer = 0
    for f in report.get("findings", []):
        for v in f.get("verification") or []:
            if v.get("probe"):
                tried += 1
            elif str(v.get("reason", "")).startswith("skipped for time"):
                skipped += 1
            run = v.get("longer") or {}
            longer += "fixed" in run
            not_longer += str(run.get("reason", "")).startswith("not trained longer")
    return tried, skipped, longer, not_longer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", nargs="*")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    samples = args.samples or _samples()
    print(f"{'sample':44s} {'plain s':>8s} {'verify s':>9s} {'ratio':>6s} {'tried':>6s} {'skipped':>8s} {'longer':>7s} "
          f"{'not longer':>10s}")
    medians = []
    for cfg in samples:
        plain, ver, ratios, tried, skipped, longer, not_longer = [], [], [], [], [], [], []
        for r in range(args.rounds):
            first_verify = r % 2 == 1
            for verify in ((True, False) if first_verify else (False, True)):
                secs, report = _run(cfg, verify)
                (ver if verify else plain).append(secs)
                if verify:
                    t, s, lg, nl = _tried(report)
                    tried.append(t)
                    skipped.append(s)
                    longer.append(lg)
                    not_longer.append(nl)
            ratios.append(ver[-1] / plain[-1])
        m = statistics.median(ratios)
        medians.append(m)
        print(f"{cfg:44s} {statistics.median(plain):8.2f} {statistics.median(ver):9.2f} {m:6.2f} "
              f"{statistics.median(tried):6g} {statistics.median(skipped):8g} {statistics.median(longer):7g} "
              f"{statistics.median(not_longer):10g}")
    print(f"\nmedian ratio over {len(samples)} samples: {statistics.median(medians):.2f}x (largest {max(medians):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
