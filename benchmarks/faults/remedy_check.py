"""What ``--verify`` achieved on the fault benchmark, and ground truth for its verdicts
(``python -m benchmarks.faults --split dev --verify``).

optdoctor's ``diagnose --verify`` tries the patched remedies of its top findings in probes of
their own and judges each (``helped``: the compared loss fell by >= 10% and the rule stopped
firing). That verdict is optdoctor's own; here every remedy it judged *fixed* is checked again
by the benchmark's plain training loop (verify.py: nothing of optdoctor, 3 seeds, 2x the probe's
steps, the same "trains well" criterion a case's one-change fix had to meet), on the case's
config with the remedy's patch applied by ``plain_config`` below (written from the patch
language's documentation in optdoctor/remedies.py, not by calling it).

The plain loop expresses config values (optimizer, its rate and arguments, schedules, model and
data arguments of the benchmark's factories), input standardisation and gradient clipping, and
L-BFGS through a closure, re-initialisation (``probe.reinit``), early stopping on its own
validation cadence, and the in-loop interventions: perturbed gradient descent and a
negative-curvature step (its eigenvector from scipy's ARPACK, not optdoctor's Lanczos; both
written from their documentation in optdoctor/config/schema.py). It does not express a model
swapped for one of optdoctor's built-ins: such a remedy is counted as *not checkable*, never as
confirmed.
"""

from __future__ import annotations

import collections
import copy
import inspect
import json
import math
import re

# probe settings the plain loop runs (verify.train reads them); any other probe.* key is not checkable
PLAIN_PROBE_KEYS = ("probe.standardize_inputs", "probe.whiten_inputs", "probe.standardize_targets", "probe.clip_grad_norm", "probe.reinit",
                    "probe.early_stopping", "probe.perturb_gd", "probe.negative_curvature_step")
# schedule arguments that are absolute rates: "x0.1" or "$lr.range_suggested" of the rate scales
# them too, by new/old (remedies.py)
ABSOLUTE_LR_ARGS = ("base_lr", "max_lr", "eta_min", "min_lr")
MULTIPLY = re.compile(r"^\s*[x×*]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
PLACEHOLDER = re.compile(r"^\s*\$([A-Za-z_][\w.]*)\s*(?:([*/])\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")
REPORTED = ("warning", "error")


class NotCheckable(Exception):
    """The plain loop cannot express this patch (the message says why)."""


def _factory(spec: str):
    from benchmarks.faults import verify as plain

    if not spec.startswith("../factories.py:"):
        raise NotCheckable(f"{spec} is not one of the benchmark's factories")
    return plain._fn(spec)


def _default(cfg: dict, section: str, arg: str):
    params = inspect.signature(_factory(cfg[section]["factory"])).parameters
    if arg not in params:
        raise NotCheckable(f"{cfg[section]['factory']} takes no argument {arg!r}")
    d = params[arg].default
    return None if d is inspect.Parameter.empty else d


def _value(value, current, cfg: dict, symptoms: dict, steps: int):
    """A patch value resolved: "x0.1" multiplies the current number, "$lr"/"$steps"/"$symptom"
    (optionally "*k" or "/k") stand for the rate, the run's steps (the plain loop's, which trains
    longer than the probe: a schedule spans the run) or a measured symptom; dicts recursively."""
    if isinstance(value, dict):
        return {k: _value(v, current.get(k) if isinstance(current, dict) else None, cfg, symptoms, steps)
                for k, v in value.items()}
    if not isinstance(value, str):
        return value
    m = MULTIPLY.match(value)
    if m:
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            raise NotCheckable(f"cannot multiply {current!r}")
        out = current * float(m.group(1))
        return max(1, round(out)) if isinstance(current, int) else out
    p = PLACEHOLDER.match(value)
    if not p:
        return value
    name, op, k = p.groups()
    base = cfg["optimizer"]["lr"] if name == "lr" else steps if name == "steps" else symptoms.get(name)
    if base is None or not isinstance(base, (int, float)) or not math.isfinite(base):
        raise NotCheckable(f"needs {name}, which the diagnosis did not report")
    if op is None:
        return base
    out = base * float(k) if op == "*" else base / float(k)
    return max(1, round(out)) if isinstance(base, int) else out


def plain_config(cfg: dict, patch: dict, symptoms: dict, steps: int) -> dict:
    """The case config (a dict, as in cases.json) with a remedy's patch applied, for verify.train;
    NotCheckable when the plain loop cannot run it. ``steps``: the plain loop's training steps.
    ``schedule: null`` drops the case's schedule (the rate stays at optimizer.lr). Whether a
    patch moves the rate the way its rule's cause wants is optdoctor's applicability check, not
    re-done here: only patches optdoctor ran and judged fixed reach the plain loop."""
    out = copy.deepcopy(cfg)
    sets_opt_args = any(k == "optimizer.args" or k.startswith("optimizer.args.") for k in patch)
    for key, value in patch.items():
        optional, key = key.endswith("?"), key.rstrip("?")  # "model.args.X?": only if the factory takes X
        parts = key.split(".")
        if optional and parts[0] in ("model", "data") and len(parts) == 3 and parts[1] == "args":
            if parts[2] not in inspect.signature(_factory(out[parts[0]]["factory"])).parameters:
                continue
        if parts[0] == "probe" and key not in PLAIN_PROBE_KEYS:
            raise NotCheckable(f"{key}: the plain loop does not run this probe setting")
        if key == "model.factory" or key == "data.factory":
            _factory(value)  # raises unless it is one of the benchmark's own
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        current = node.get(parts[-1])
        if current is None and parts[0] in ("model", "data") and len(parts) == 3 and parts[1] == "args":
            current = _default(out, parts[0], parts[2])
        elif parts[0] in ("model", "data") and len(parts) == 3 and parts[1] == "args":
            _default(out, parts[0], parts[2])  # the factory must take it
        if key == "schedule" and value is None and not cfg.get("schedule"):
            raise NotCheckable("schedule: null, but the case configures no schedule to drop")
        node[parts[-1]] = _value(copy.deepcopy(value), current, cfg, symptoms, steps)
        measured = PLACEHOLDER.match(value) if isinstance(value, str) else None
        peak = symptoms.get("lr.peak_over_config")
        if key == "optimizer.lr" and measured and measured.group(1) not in ("lr", "steps") and out.get("schedule") \
                and "max_lr" in (out["schedule"].get("args") or {}) and "schedule" not in patch \
                and peak is not None and math.isfinite(peak) and peak > 1:
            # a measured rate is the rate to train at: a schedule with its own peak (max_lr) that
            # peaked above the configured rate peaks at the measured one instead (everything
            # scaled by measured / peak)
            node[parts[-1]] = node[parts[-1]] / peak
        relative = isinstance(value, str) and bool(MULTIPLY.match(value) or PLACEHOLDER.match(value))
        if key == "optimizer.lr" and relative and out.get("schedule") and "schedule" not in patch:
            # a relative or measured rate ("x0.1", "$lr.range_suggested") scales the schedule's own
            # absolute rates by new/old; a literal number sets the optimizer's rate alone
            factor = node[parts[-1]] / cfg["optimizer"]["lr"]
            args = out["schedule"].setdefault("args", {})
            for a in ABSOLUTE_LR_ARGS:
                if isinstance(args.get(a), (int, float)) and not isinstance(args[a], bool):
                    args[a] = args[a] * factor
                elif isinstance(args.get(a), list):
                    args[a] = [x * factor for x in args[a]]
        if key == "optimizer.name" and not sets_opt_args:
            out["optimizer"]["args"] = {}
    out["optimizer"].setdefault("args", {})
    return out


# "As well as the fix": a remedy that matches the case's own one-change fix seed by seed, to
# within this much of q_val (the share of the reference loss removed), trains as well as the fix,
# even where the fix itself landed just above ``good`` and the remedy just below. Counted in a
# column of its own, never as "confirmed". Chosen after the dev run at 941627e showed remedies
# equivalent to the fix (standardising mixed-unit inputs or targets) a few thousandths below good
# where the fix was a few thousandths above.
FIX_TOL = 0.01


def check(case: dict, patch: dict, symptoms: dict) -> dict:
    """The plain loop's verdict on one remedy: trains well on every seed (verify.trains_well, with
    the no-overfitting bound for overfitting cases, as for the case's own fix)."""
    import torch

    from benchmarks.faults import verify as plain

    torch.set_num_threads(1)  # as verify.py's own runs (small models: faster on one thread here)
    steps = plain.VERIFY_FACTOR * case["config"]["probe"]["steps"]
    try:
        cfg = plain_config(case["config"], patch, symptoms, steps)
    except NotCheckable as e:
        return {"checkable": False, "why": str(e)}
    fix_q = {s: r["q_val"] for s, r in zip(plain.SEEDS, case.get("fix_runs", []))}
    seeds = []
    for s in plain.SEEDS:
        try:
            run = plain.train(cfg, s, steps)
            rise = case["cause"] == "overfitting"
            ok, why = plain.trains_well(run, case["good"], check_rise=rise)
            # the secondary verdict: as well as the case's own fix on this seed, within FIX_TOL
            # (differs from ok only where the fix itself landed within FIX_TOL of good)
            bar = case["good"] if fix_q.get(s) is None else min(case["good"], fix_q[s] - FIX_TOL)
            as_fix = plain.trains_well(run, bar, check_rise=rise)[0]
            seeds.append({"seed": s, "ok": ok, "why": why, "q_val": run["q_val"], "diverged": run["diverged"],
                          "as_fix": as_fix})
        except Exception as e:  # noqa: BLE001 -- the patched config does not run in the plain loop: not a fix
            seeds.append({"seed": s, "ok": False, "why": f"error: {type(e).__name__}: {e}", "as_fix": False})
    return {"checkable": True, "trains_well": all(x["ok"] for x in seeds),
            "as_fix": all(x["as_fix"] for x in seeds), "seeds": seeds}


def tried(report: dict) -> list[dict]:
    """Every remedy --verify considered for the reported findings, with its verdict."""
    out = []
    for f in report.get("findings", []):
        for v in f.get("verification") or []:
            out.append({"rule": f.get("rule"), "cause": f.get("cause"), "severity": f.get("severity"),
                        "remedy": v.get("remedy", "")[:80], "patch": v.get("patch"), "ran": bool(v.get("probe")),
                        "applicable": v.get("applicable"), "reason": v.get("reason") or "",
                        "fixed": bool(v.get("helped")), "improved": bool(v.get("improved")),
                        "before": v.get("before"), "after": v.get("after"), "gain": v.get("gain"),
                        "after_train_mode": v.get("after_train_mode"),
                        "cost_per_step": v.get("cost"), "seeds": v.get("seeds"), "recommended": v.get("recommended"),
                        "combines": v.get("combines") or []})
    return out


def _key(patch: dict) -> str:
    return json.dumps(patch, sort_keys=True)


def account(case: dict, report: dict | None, plain_check: bool = True) -> dict:
    """The per-case record: remedies tried and judged, and the plain loop's check of each distinct
    patch optdoctor judged fixed."""
    rec = {"remedies": tried(report or {})}
    rec["tried_any"] = any(r["ran"] for r in rec["remedies"])
    rec["judged_fixed"] = any(r["fixed"] for r in rec["remedies"])
    checks: dict[str, dict] = {}
    if plain_check and case["cause"] != "healthy":
        for r in rec["remedies"]:
            if r["fixed"] and _key(r["patch"]) not in checks:
                checks[_key(r["patch"])] = {"patch": r["patch"], **check(case, r["patch"], (report or {}).get("symptoms", {}))}
    rec["plain"] = list(checks.values())
    return _verdicts(rec)


def _verdicts(rec: dict) -> dict:
    """The case's counts from its plain-loop checks."""
    rec["confirmed"] = any(c.get("trains_well") for c in rec["plain"])
    rec["confirmed_as_fix"] = any(c.get("trains_well") or c.get("as_fix") for c in rec["plain"])
    rec["false_fixed"] = [c["patch"] for c in rec["plain"] if c["checkable"] and not c["trains_well"]]
    rec["not_checkable"] = [c["patch"] for c in rec["plain"] if not c["checkable"]]
    return rec


def _share(k: int, n: int) -> str:
    return f"{k}/{n} = {k / n:.2f}" if n else "-"


def tables(results: list[dict], causes: list[str], title: str) -> str:
    """The printed --verify report for one split (markdown tables)."""
    faulty = [r for r in results if r["cause"] != "healthy"]
    healthy = [r for r in results if r["cause"] == "healthy"]
    lines = [(f"### {title}, --verify: {len(results)} cases ({len(healthy)} healthy, "
              f"{sum('error' in r for r in results)} could not be diagnosed)"), "",
             ("| cause | n | a remedy tried | judged fixed (optdoctor) | confirmed (plain loop) | confirmed or matching the fix "
              "| remedies judged fixed | confirmed | false 'fixed' | not checkable |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def row(name, rs):
        checks = [c for r in rs for c in r["verify"]["plain"]]
        return (f"| {name} | {len(rs)} | {_share(sum(r['verify']['tried_any'] for r in rs), len(rs))} "
                f"| {_share(sum(r['verify']['judged_fixed'] for r in rs), len(rs))} "
                f"| {_share(sum(r['verify']['confirmed'] for r in rs), len(rs))} "
                f"| {_share(sum(bool(r['verify'].get('confirmed_as_fix')) for r in rs), len(rs))} | {len(checks)} "
                f"| {sum(bool(c.get('trains_well')) for c in checks)} "
                f"| {sum(c['checkable'] and not c['trains_well'] for c in checks)} "
                f"| {sum(not c['checkable'] for c in checks)} |")

    for c in causes:
        rs = [r for r in faulty if r["cause"] == c]
        if rs:
            lines.append(row(c, rs))
    if faulty:
        lines.append(row("**all faults**", faulty))
    quiet = [r for r in healthy if not r["verify"]["tried_any"]]
    lines += ["", f"Healthy cases where --verify tried nothing: {_share(len(quiet), len(healthy))}"]
    busy = [r for r in healthy if r["verify"]["tried_any"]]
    if busy:
        lines.append("  tried remedies on: " + ", ".join(
            f"{r['id']} ({', '.join(sorted({x['rule'] for x in r['verify']['remedies'] if x['ran']}))})" for r in busy))
    remedies = [x for r in faulty for x in r["verify"]["remedies"]]
    skipped = collections.Counter(_why(x["reason"]) for x in remedies if not x["ran"])
    lines += ["", f"Remedies considered on faulty cases: {len(remedies)}; probes run {sum(x['ran'] for x in remedies)}, "
              f"judged fixed {sum(x['fixed'] for x in remedies)}"
              + ("; not run: " + "; ".join(f"{w} ({n})" for w, n in skipped.most_common()) if skipped else "")]
    lines += ["", recommended_line(faulty)]
    if any(x.get("combines") for r in faulty for x in r["verify"]["remedies"]):
        lines += ["", combinations_line(faulty)]
    none = [r for r in faulty if not r["verify"]["confirmed"]]
    if none:
        lines += ["", "Faulty cases with no remedy confirmed by the plain loop (judged fixed by optdoctor? first finding):"]
        for r in none:
            first = next((f["cause"] for f in r["findings"] if f["severity"] in REPORTED), "none")
            lines.append(f"- {r['id']}: {'judged fixed' if r['verify']['judged_fixed'] else 'none judged fixed'}; "
                         f"first finding {first}" + ("; ERROR " + r["error"] if "error" in r else ""))
    false = [(r["id"], p) for r in faulty for p in r["verify"]["false_fixed"]]
    if false:
        lines += ["", "False 'fixed' verdicts (optdoctor: fixed; plain loop: does not train well on 3 seeds):"]
        lines += [f"- {i}: {json.dumps(p)}" for i, p in false]
    unc = [(r["id"], p) for r in faulty for p in r["verify"]["not_checkable"]]
    if unc:
        lines += ["", "Judged fixed but not checkable by the plain loop (interventions):"]
        lines += [f"- {i}: {json.dumps(p)}" for i, p in unc]
    lines += ["", by_remedy(faulty, causes)]
    lines.append("")
    for name, rs in (("faulty", faulty), ("healthy", healthy)):
        if rs:
            import statistics

            secs, plain = [r["seconds"] for r in rs], [r.get("plain_seconds", 0) for r in rs]
            lines.append(f"Time per {name} case: diagnosis with --verify median {statistics.median(secs):.1f} s, max "
                         f"{max(secs):.1f} s" + (f"; plain-loop checks median {statistics.median(plain):.1f} s, max "
                                                 f"{max(plain):.1f} s" if name == "faulty" else ""))
    return "\n".join(lines)


def recommended_line(faulty: list[dict]) -> str:
    """What a user acts on: the remedy each reported finding recommends, and the plain loop's
    verdict on it (a recommended remedy is always one judged fixed, so it was checked)."""
    counts: collections.Counter = collections.Counter()
    for r in faulty:
        plain = {_key(c["patch"]): c for c in r["verify"]["plain"]}
        for x in r["verify"]["remedies"]:
            if x.get("recommended"):
                c = plain.get(_key(x["patch"]), {})
                counts["confirmed" if c.get("trains_well") else "not checkable" if c.get("checkable") is False
                       else "refuted" if c else "not checked"] += 1
    n = sum(counts.values())
    return (f"Recommended remedies (one per finding that had a fix): {n}; plain loop: confirmed "
            f"{_share(counts['confirmed'], n)}, refuted {counts['refuted']}, not checkable {counts['not checkable']}"
            + (f", not checked {counts['not checked']}" if counts["not checked"] else ""))


def combinations_line(faulty: list[dict]) -> str:
    """The remedies --verify made of two fixes tried together (probe.verify.combine): how many
    ran, were judged fixed and were confirmed or refuted by the plain loop, and the cases whose
    only confirmed fix is a combination."""
    ran = fixed = confirmed = refuted = 0
    only: list[str] = []
    for r in faulty:
        plain = {_key(c["patch"]): c for c in r["verify"]["plain"]}
        combos = {_key(x["patch"]) for x in r["verify"]["remedies"] if x.get("combines")}
        for x in r["verify"]["remedies"]:
            if x.get("combines"):
                c = plain.get(_key(x["patch"]), {})
                ran += x["ran"]
                fixed += x["fixed"]
                confirmed += bool(c.get("trains_well"))
                refuted += c.get("checkable") is True and not c.get("trains_well")
        ok = {k for k, c in plain.items() if c.get("trains_well")}
        if ok and ok <= combos:
            only.append(r["id"])
    return (f"Combinations (two fixes tried together): ran {ran}, judged fixed {fixed}; plain loop: confirmed "
            f"{confirmed}, refuted {refuted}; cases confirmed only through a combination: {len(only)}"
            + (" (" + ", ".join(only) + ")" if only else ""))


def _why(reason: str) -> str:
    """A reason a remedy was not run, without its numbers and object addresses."""
    reason = re.sub(r"\s*\([^()]*\.yaml:\d+\)", "", reason)  # the config's line: a temporary copy's
    reason = re.sub(r"(?:/[\w.+-]+)+/", "", reason)  # folders
    reason = re.sub(r"0x[0-9a-f]+", "0x…", reason)
    reason = re.sub(r"(?<![\w.])-?\d+(\.\d+)?(e[-+]?\d+)?", "#", reason)
    return reason[:120]


def by_remedy(faulty: list[dict], causes: list[str]) -> str:
    """Per true cause, each remedy patch --verify considered: on how many cases it was considered,
    ran, was judged fixed, and confirmed / refuted / not checkable by the plain loop."""
    lines = [("Remedies per true cause (cases where it was considered / ran / judged fixed / plain loop: "
              "confirmed, refuted, not checkable):"), "",
             "| true cause | remedy patch | considered | ran | judged fixed | confirmed | refuted | not checkable |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in causes:
        rows: dict[str, list[int]] = {}
        for r in (r for r in faulty if r["cause"] == c):
            seen: dict[str, list[bool]] = {}
            for x in r["verify"]["remedies"]:
                k = _key(x["patch"])
                s = seen.setdefault(k, [False, False])
                s[0] |= x["ran"]
                s[1] |= x["fixed"]
            checks = {_key(p["patch"]): p for p in r["verify"]["plain"]}
            for k, (ran, fixed) in seen.items():
                row = rows.setdefault(k, [0] * 6)
                p = checks.get(k, {})
                for i, hit in enumerate((True, ran, fixed, bool(p.get("trains_well")),
                                         p.get("checkable") is True and not p.get("trains_well"),
                                         p.get("checkable") is False)):
                    row[i] += hit
        for k, row in sorted(rows.items(), key=lambda kv: (-kv[1][3], -kv[1][2], -kv[1][0])):
            lines.append(f"| {c} | `{k}` | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The --verify tables again from a raw results file, nothing run
    (``python -m benchmarks.faults.remedy_check benchmarks/faults/results-verify-dev.json``)."""
    import argparse
    import sys
    from pathlib import Path

    from benchmarks.faults.run import CAUSES

    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults.remedy_check", description=main.__doc__.splitlines()[0])
    ap.add_argument("results", help="a results file written by python -m benchmarks.faults --verify")
    ap.add_argument("--recheck", action="store_true",
                    help="run the plain loop again on the remedies it could not check (after the plain loop learnt to "
                         "express more patches) and write the verdicts back into RESULTS; optdoctor is not run")
    args = ap.parse_args(argv)
    raw = json.loads(Path(args.results).read_text())
    if not raw.get("verify"):
        print(f"{args.results} was not written by a --verify run", file=sys.stderr)
        return 2
    if args.recheck:
        from benchmarks.faults.run import load_cases

        cases = {c["id"]: c for c in load_cases("all")}
        n = 0
        for r in raw["results"]:
            rec = r.get("verify") or {}
            for i, c in enumerate(rec.get("plain", [])):
                if not c.get("checkable", True):
                    rec["plain"][i] = {"patch": c["patch"], **check(cases[r["id"]], c["patch"], {})}
                    n += 1
            if rec.get("plain"):
                _verdicts(rec)
        Path(args.results).write_text(json.dumps(raw, indent=1))
        print(f"re-checked {n} remedies the plain loop could not check before; {args.results} updated", file=sys.stderr)
    for split in ("dev", "test"):
        rs = [r for r in raw["results"] if r["split"] == split]
        if rs:
            print(tables(rs, CAUSES, f"{split} split" + (f" (subset {raw['subset']})" if raw.get("subset") else "")))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
