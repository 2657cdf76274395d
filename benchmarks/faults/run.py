"""Run optdoctor on the verified fault benchmark and print how it did.

    python -m benchmarks.faults [--split dev|test|all] [--filter SUBSTR] [--subset fast]
                                [--jobs N] [--mode inprocess|subprocess] [--out FILE]
                                [--verify [--verify-time-factor F|none] [--no-plain-check]]

Each kept case of cases.json is diagnosed with ``optdoctor diagnose cases/NAME.yaml --format
json --check`` (the CLI; ``--mode inprocess`` invokes the same CLI app inside this process to
spare Python's and torch's start-up per case, ``subprocess`` runs ``python -m optdoctor``).
A finding is *reported* when its severity is warning or error; the *first finding* is the first
reported one (findings come most important first). Prints, per split: per-cause recall,
precision and top-1, false alarms on healthy cases, the confusion matrix (true cause x first
finding), calibration (reported findings with confidence >= 0.8: how many named the true
cause) and the median diagnosis seconds per case. Always exits 0: it is a measurement.

``--verify`` diagnoses with ``--verify`` and reports what the tried remedies achieved, each
remedy optdoctor judged fixed checked again by the plain training loop (remedy_check.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.faults import grid  # the batches (nothing heavy)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES = HERE / "cases"
CAUSES = ["vanishing_gradients", "exploding_gradients", "ill_conditioning", "bad_init", "lr_too_high", "lr_too_low",
          "overfitting", "saddle_point", "local_minimum", "dead_relu"]
REPORTED = {"warning", "error"}
CONFIDENT = 0.8

# The fast subset run by tests/test_faults_subset.py: small, quick, several causes and healthy.
# Chosen by id (not by how optdoctor does on them), one per listed mechanism; cases that were
# not kept by verification are skipped.
FAST_SUBSET = [
    "lr_too_high/sgd-huge-lr/mlp/wine",
    "lr_too_low/sgd-tiny-lr/mlp/iris",
    "lr_too_low/adagrad-tiny-lr/mlp/wine",
    "ill_conditioning/raw-features/linear/wine",
    "bad_init/zero-init/mlp/wine",
    "dead_relu/negative-bias/mlp/wine",
    "saddle_point/two-weight/two_weight-init1e-06-sgd/line",
    "overfitting/random-labels/mlp-w256/iris",
    "exploding_gradients/deep-linear-gain/deep_linear-d10-g1.6/teacher",
    "healthy/mlp-relu/mlp-sgd/wine",
    "healthy/linear/linear-momentum/wine",
    "healthy/mlp-tanh/mlp-momentum/wine",
]


def load_cases(split: str = "all", filt: str | list[str] = "", subset: str | None = None) -> list[dict]:
    """The kept cases of a split; ``filt``: a substring of the id, or a list of them (any matches)."""
    manifest = json.loads((HERE / "cases.json").read_text())
    cases = [c for c in manifest["cases"] if c["kept"]]
    if subset == "fast":
        cases = [c for c in cases if c["id"] in FAST_SUBSET]
    if split != "all":
        cases = [c for c in cases if c["split"] == split]
    filts = [filt] if isinstance(filt, str) else list(filt) or [""]
    return [c for c in cases if any(f in c["id"] for f in filts)]


# --save-traces DIR keeps every case's probe traces (``diagnose --save-trace``); --replay DIR
# re-diagnoses them without probing (``optdoctor replay``): rule changes are measured in seconds.
TRACES: dict[str, Path | None] = {"save": None, "replay": None}
# --verify: diagnose with --verify; "probe" overrides the cases' probe.verify settings (written
# into a copy of the config under "folder"); "plain": check judged fixes with the plain loop.
VERIFY: dict = {"on": False, "probe": {}, "plain": True, "folder": None}


def _verify_config(case: dict) -> str:
    """A copy of the case's config with VERIFY["probe"] merged into probe.verify, its benchmark
    factories named by absolute path (the copy lives outside cases/)."""
    import tempfile

    import yaml

    if not VERIFY["probe"]:
        return case["config"]["name"] + ".yaml"
    if VERIFY["folder"] is None:
        VERIFY["folder"] = Path(tempfile.mkdtemp(prefix="optdoctor-faults-verify-"))

    def absolute(node):
        if isinstance(node, dict):
            return {k: absolute(v) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("../factories.py:"):
            return str(HERE / "factories.py") + node[len("../factories.py"):]
        return node

    cfg = absolute(case["config"])
    cfg.setdefault("probe", {}).setdefault("verify", {}).update(VERIFY["probe"])
    path = VERIFY["folder"] / (case["config"]["name"] + ".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _cli_args(case: dict) -> list[str]:
    name = case["config"]["name"]
    if TRACES["replay"] is not None:
        return ["replay", str(TRACES["replay"] / name), "--format", "json"]
    if VERIFY["on"]:
        args = ["diagnose", _verify_config(case), "--format", "json", "--check", "--verify"]
    else:
        args = ["diagnose", name + ".yaml", "--format", "json", "--check"]
    if TRACES["save"] is not None:  # the remedies' probes too, under --verify
        args += ["--save-trace", str(TRACES["save"] / name)]
    return args


def diagnose_subprocess(case: dict) -> tuple[int, str, str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "optdoctor", *_cli_args(case)], cwd=CASES, env=env,
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr[-2000:], time.perf_counter() - t0


def diagnose_inprocess(case: dict) -> tuple[int, str, str, float]:
    """The same CLI app (``optdoctor.cli.app``, what ``optdoctor`` runs), called in this process from
    the cases folder."""
    from optdoctor.cli import app

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    t0 = time.perf_counter()
    code = 0
    try:
        os.chdir(CASES)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app(_cli_args(case), standalone_mode=True, prog_name="optdoctor")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()[-2000:], time.perf_counter() - t0


def run_case(case: dict, mode: str) -> dict:
    code, stdout, stderr, secs = (diagnose_subprocess if mode == "subprocess" else diagnose_inprocess)(case)
    res = {"id": case["id"], "cause": case["cause"], "family": case["family"], "split": case["split"],
           "batch": case.get("batch", 1), "exit_code": code, "seconds": round(secs, 3), "findings": [], "status": None}
    report = None
    try:
        report = json.loads(stdout)
        res["status"] = report.get("status")
        res["findings"] = [{k: f.get(k) for k in ("cause", "severity", "rule", "confidence", "summary")}
                           for f in report["findings"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        res["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}, no JSON"
    if VERIFY["on"]:
        from benchmarks.faults import remedy_check

        t0 = time.perf_counter()
        res["verify"] = remedy_check.account(case, report, VERIFY["plain"])
        res["plain_seconds"] = round(time.perf_counter() - t0, 3)
    return res


def reported(res: dict) -> list[dict]:
    return [f for f in res["findings"] if f["severity"] in REPORTED]


def first_cause(res: dict) -> str:
    if "error" in res:
        return "ERROR"
    rep = reported(res)
    return rep[0]["cause"] if rep else "none"


def tables(results: list[dict], title: str) -> str:
    """The printed report for one split (markdown tables)."""
    lines = [f"### {title}: {len(results)} cases "
             f"({sum(r['cause'] == 'healthy' for r in results)} healthy, "
             f"{sum('error' in r for r in results)} could not be diagnosed)", ""]
    by_true = collections.defaultdict(list)
    for r in results:
        by_true[r["cause"]].append(r)
    causes = [c for c in CAUSES if c in by_true or any(f["cause"] == c for r in results for f in reported(r))]
    lines += ["| cause | n | recall | precision | top-1 |", "| --- | ---: | ---: | ---: | ---: |"]
    for c in causes:
        rs = by_true.get(c, [])
        hit = sum(any(f["cause"] == c for f in reported(r)) for r in rs)
        said = [r for r in results if any(f["cause"] == c for f in reported(r))]
        right = sum(r["cause"] == c for r in said)
        top1 = sum(first_cause(r) == c for r in rs)
        rec = f"{hit}/{len(rs)} = {hit / len(rs):.2f}" if rs else "-"
        prec = f"{right}/{len(said)} = {right / len(said):.2f}" if said else "-"
        t1 = f"{top1}/{len(rs)} = {top1 / len(rs):.2f}" if rs else "-"
        lines.append(f"| {c} | {len(rs)} | {rec} | {prec} | {t1} |")
    faulty = [r for r in results if r["cause"] != "healthy"]
    if faulty:
        t1 = sum(first_cause(r) == r["cause"] for r in faulty)
        hit = sum(any(f["cause"] == r["cause"] for f in reported(r)) for r in faulty)
        lines.append(f"| **all faults** | {len(faulty)} | {hit}/{len(faulty)} = {hit / len(faulty):.2f} | | "
                     f"{t1}/{len(faulty)} = {t1 / len(faulty):.2f} |")
    healthy = by_true.get("healthy", [])
    alarms = [r for r in healthy if reported(r)]
    lines += ["", f"False alarms on healthy cases: {len(alarms)}/{len(healthy)}"
              + (f" = {len(alarms) / len(healthy):.2f}" if healthy else "")]
    if alarms:
        cnt = collections.Counter(f["cause"] for r in alarms for f in reported(r)[:1])
        lines.append("  first finding on those: " + ", ".join(f"{c} {n}" for c, n in cnt.most_common()))

    cols = [c for c in CAUSES if any(first_cause(r) == c for r in results) or c in by_true] + ["none"]
    if any(first_cause(r) == "ERROR" for r in results):
        cols.append("ERROR")
    short = {c: c.replace("_gradients", "").replace("_", " ") for c in cols}
    lines += ["", "Confusion matrix (rows: true cause; columns: first reported finding):", "",
              "| true \\ first | " + " | ".join(short[c] for c in cols) + " |",
              "| --- |" + " ---: |" * len(cols)]
    for t in [c for c in CAUSES if c in by_true] + (["healthy"] if healthy else []):
        cnt = collections.Counter(first_cause(r) for r in by_true[t])
        lines.append(f"| {t} | " + " | ".join(str(cnt.get(c, 0) or ".") for c in cols) + " |")

    conf = [(f, r) for r in results for f in reported(r) if (f.get("confidence") or 0) >= CONFIDENT]
    good = sum(f["cause"] == r["cause"] for f, r in conf)
    conf_first = [(reported(r)[0], r) for r in results if reported(r)
                  and (reported(r)[0].get("confidence") or 0) >= CONFIDENT]
    good_first = sum(f["cause"] == r["cause"] for f, r in conf_first)
    lines += ["", f"Calibration: reported findings with confidence >= {CONFIDENT}: "
              + (f"{good}/{len(conf)} = {good / len(conf):.2f} named the true cause" if conf else "none")
              + (f"; first findings only: {good_first}/{len(conf_first)} = {good_first / len(conf_first):.2f}"
                 if conf_first else "")]
    secs = [r["seconds"] for r in results]
    if secs:
        lines.append(f"Diagnosis time per case: median {statistics.median(secs):.2f} s, max {max(secs):.2f} s "
                     f"(slowest: {max(results, key=lambda r: r['seconds'])['id']})")
    return "\n".join(lines)


def by_batch(results: list[dict]) -> str:
    """Headline figures per batch of mechanism families (grid.SPLIT_SEEDS): batch 2's families
    were added after batch 1's test split had been looked at, batch 3's after both, each batch
    split among its own families."""
    lines = []
    for b in sorted({r.get("batch", 1) for r in results}):
        rs = [r for r in results if r.get("batch", 1) == b]
        faulty = [r for r in rs if r["cause"] != "healthy"]
        healthy = [r for r in rs if r["cause"] == "healthy"]
        hit = sum(any(f["cause"] == r["cause"] for f in reported(r)) for r in faulty)
        t1 = sum(first_cause(r) == r["cause"] for r in faulty)
        fa = sum(bool(reported(r)) for r in healthy)
        lines.append(f"batch {b}: {len(rs)} cases; true cause reported {hit}/{len(faulty)}, first finding right "
                     f"{t1}/{len(faulty)}, healthy with a warning/error {fa}/{len(healthy)}")
    return "\n".join(lines)


def misdiagnoses(results: list[dict]) -> str:
    groups = collections.defaultdict(list)
    for r in results:
        fc = first_cause(r)
        if fc != (r["cause"] if r["cause"] != "healthy" else "none"):
            groups[(r["cause"], fc)].append(r["id"])
    lines = ["Misdiagnosed (true cause -> first reported finding):"]
    for (t, f), ids in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        lines.append(f"- {t} -> {f} ({len(ids)}): " + ", ".join(ids))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["dev", "test", "all"], default="dev")
    ap.add_argument("--filter", action="append", default=[], help="only cases whose id contains this (repeatable: any)")
    ap.add_argument("--batch", type=int, choices=sorted(grid.SPLIT_SEEDS), default=None,
                    help="only this batch of mechanism families (default: all; see grid.SPLIT_SEEDS)")
    ap.add_argument("--subset", choices=["fast"], default=None, help="the small fast subset the test suite runs")
    ap.add_argument("--jobs", type=int, default=1, help="cases diagnosed at once (subprocesses)")
    ap.add_argument("--mode", choices=["inprocess", "subprocess"], default="inprocess")
    ap.add_argument("--out", default=None, help="raw results JSON (default: benchmarks/faults/results-SPLIT.json)")
    ap.add_argument("--quiet", action="store_true", help="no per-case progress on stderr")
    ap.add_argument("--save-traces", default=None, metavar="DIR", help="keep each case's probe traces under DIR")
    ap.add_argument("--replay", default=None, metavar="DIR", help="re-diagnose traces saved with --save-traces (no probing)")
    ap.add_argument("--verify", action="store_true",
                    help="diagnose with --verify; report the remedies tried and check judged fixes with the plain loop")
    ap.add_argument("--verify-time-factor", default="none", metavar="F|none",
                    help="probe.verify.time_factor for every case (default none: no time limit, so what is tried "
                         "does not depend on the machine's load; 'config' keeps each config's own, 1.5 by default)")
    ap.add_argument("--no-plain-check", action="store_true", help="with --verify: skip the plain-loop check")
    args = ap.parse_args(argv)
    if args.verify:
        if args.replay:
            ap.error("--verify probes: it cannot replay")
        VERIFY["on"], VERIFY["plain"] = True, not args.no_plain_check
        if args.verify_time_factor != "config":
            VERIFY["probe"] = {"time_factor": None if args.verify_time_factor == "none" else float(args.verify_time_factor)}
    if args.save_traces:
        TRACES["save"] = Path(args.save_traces).resolve()
    if args.replay:
        TRACES["replay"] = Path(args.replay).resolve()
    sys.path.insert(0, str(ROOT))
    cases = load_cases(args.split, args.filter, args.subset)
    if args.batch:
        cases = [c for c in cases if c.get("batch", 1) == args.batch]
    mode = "subprocess" if args.jobs > 1 else args.mode
    t0 = time.perf_counter()
    results: list[dict] = []

    def one(case):
        res = run_case(case, mode)
        if not args.quiet:
            v = res.get("verify")
            extra = (f"; remedies run {sum(x['ran'] for x in v['remedies'])}, judged fixed {v['judged_fixed']}, "
                     f"confirmed {v['confirmed']} (+{res['plain_seconds']:.1f} s)") if v else ""
            print(f"[{len(results) + 1}/{len(cases)}] {res['id']}: {first_cause(res)} ({res['seconds']:.1f} s{extra})",
                  file=sys.stderr, flush=True)
        results.append(res)
        return res

    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, cases))
    else:
        for c in cases:
            one(c)
    order = {c["id"]: i for i, c in enumerate(cases)}
    results.sort(key=lambda r: order[r["id"]])
    stem = f"results-{'verify-' if args.verify else ''}{args.subset or args.split}.json"
    out = Path(args.out) if args.out else HERE / stem
    out.write_text(json.dumps({"split": args.split, "subset": args.subset, "mode": mode, "jobs": args.jobs,
                               "verify": {"probe.verify": VERIFY["probe"], "plain_check": VERIFY["plain"]} if args.verify
                               else None,
                               "wall_seconds": round(time.perf_counter() - t0, 1), "results": results}, indent=1))
    splits = ["dev", "test"] if args.split == "all" else [args.split]
    for s in splits:
        rs = [r for r in results if r["split"] == s]
        if rs:
            print(tables(rs, f"{s} split" + (f" (subset {args.subset})" if args.subset else "")))
            print()
            print(by_batch(rs))
            print()
            print(misdiagnoses(rs))
            print()
            if args.verify:
                from benchmarks.faults import remedy_check

                print(remedy_check.tables(rs, CAUSES, f"{s} split" + (f" (subset {args.subset})" if args.subset else "")))
                print()
    print(f"mode {mode}, jobs {args.jobs}, {len(results)} cases in {time.perf_counter() - t0:.0f} s; raw results: "
          f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0
