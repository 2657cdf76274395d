"""The terminal report: verdict first, then each finding with its evidence and remedies, then
a compact picture of the loss curve and of the per-layer gradient norms, then the probes.
Everything comes from the Diagnosis (its ``summary`` holds the pictures' numbers)."""

from __future__ import annotations

import io
import math

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from optdoctor.findings import first_clause
from optdoctor.report.base import fails, reporter
from optdoctor.report.numbers import fmt

BLOCKS = "▁▂▃▄▅▆▇█"
STYLE = {"error": "bold white on red", "warning": "bold black on yellow", "info": "bold white on blue"}


def _chunk_means(v: list[float], width: int) -> list[float]:
    """Means over ``width`` consecutive chunks, the first ``len % width`` one longer."""
    size, extra = divmod(len(v), width)
    out, i = [], 0
    for c in range(width):
        n = size + (c < extra)
        out.append(sum(v[i:i + n]) / n)
        i += n
    return out


def sparkline(values, width: int = 48, log: bool = True) -> str:
    v = [float(x) for x in values if math.isfinite(x)]
    if not v:
        return ""
    if len(v) > width:  # mean over equal chunks
        v = _chunk_means(v, width)
    if log and min(v) > 0 and math.log10(max(v) / min(v)) > 0.3:
        v = [math.log10(x) for x in v]
        lo, hi = min(v), max(v)
    else:  # a narrow range drawn on [0, max] so that a flat loss looks flat, not like noise
        lo, hi = min(0.0, min(v)), max(v)
    if hi - lo < 1e-12:
        return BLOCKS[3] * len(v)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[min(max(round((x - lo) / (hi - lo) * top), 0), top)] for x in v)


def _verdict(diag, fail_on: str) -> Text:
    counts = {s: sum(f.severity == s for f in diag.findings) for s in ("error", "warning", "info")}
    failing = [f for f in diag.findings if fails(f.severity, fail_on)]
    serious = [f for f in diag.findings if f.severity in ("error", "warning")]
    t = Text()
    if failing:
        t.append(" FAIL ", style="bold white on red")
    elif serious:
        t.append(" WARN ", style="bold black on yellow")
    else:
        t.append(" OK ", style="bold white on green")
    parts = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
    if serious:
        causes = []
        for f in serious:
            if f.cause not in causes:
                causes.append(f.cause)
        t.append(f"  {', '.join(parts)}: " + ", ".join(causes), style="bold")
    else:
        t.append("  no problem found: the probes trained as a healthy setup does" + (f" ({', '.join(parts)})" if parts else ""), style="bold")
    if diag.status == "interrupted":
        t.append("  [interrupted: partial measurements]", style="yellow")
    return t


def _finding(console: Console, f, meanings: dict[str, str]) -> None:
    head = Text()
    head.append(f" {f.severity.upper()} ", style=STYLE[f.severity])
    head.append(f" {f.rule} {f.name}", style="bold")
    head.append(f"   cause: {f.cause} · confidence {f.confidence:.2f}", style="dim")
    if f.onset is not None:
        head.append(f" · from step {f.onset}", style="dim")
    if f.seeds:
        head.append(f" · in {f.seeds['fired']} of {f.seeds['of']} seeds", style="dim")
    console.print(head)
    console.print(Padding(Text(f.summary), (0, 0, 0, 3)))
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(style="dim")
    spread = (f.seeds or {}).get("spread", {})
    for name, v in f.evidence.items():
        meaning = meanings.get(name, "")
        value = fmt(v) + (f" [{fmt(spread[name][0])}, {fmt(spread[name][1])}]" if name in spread else "")
        table.add_row("   " + name, value, meaning)
    console.print(table)
    if f.blame:
        where = f" ({f.location['file']}:{f.location['line']}:{f.location['col']})" if f.location else ""
        console.print(Text(f"   at {f.blame}{where}", style="magenta"))
    remedies = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    remedies.add_column(justify="right", no_wrap=True)
    remedies.add_column(style="green")
    for i, r in enumerate(f.remedies, 1):
        remedies.add_row(f"   {i}.", r)
    console.print(remedies)
    if f.verification:
        _verification(console, f)
    console.print()


def _name(v: dict) -> str:
    """A tried remedy's short name; a combination's names both of its remedies, so it may run longer."""
    return first_clause(v["remedy"], 140 if v.get("combines") else 70)


def _verification(console: Console, f) -> None:
    """What each tried remedy measurably changed (--verify), best first."""
    if f.confirmed is True:
        word = "confirmed: a tried remedy fixed it"
    elif f.confirmed is False:
        word = "no tried remedy helped: the cause may lie elsewhere"
    elif any(v["applicable"] for v in f.verification):
        word = "a tried remedy improved the loss, but none fixed it"
    else:
        word = "no remedy could be applied automatically"
    console.print(Text(f"   tried ({word}):", style="bold"))
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column()
    for v in f.verification:
        if not v["applicable"]:
            table.add_row(Text("   –", style="dim"), Text(f"{_name(v)}: not tried ({v['reason']})", style="dim"))
            continue
        mark = Text("   ✓", style="green") if v["helped"] else Text("   ~", style="yellow") if v.get("improved") else Text("   ✗", style="red")
        line = f"{_name(v)}: {v['metric'].replace('.final', '')} {fmt(v['before'])} → {fmt(v['after'])}"
        if v.get("after_train_mode") is not None:  # the model as evaluated did clearly worse than in training
            line += f" in eval mode (training mode: {fmt(v['after_train_mode'])})"
        alone = [next((w["after"] for w in f.verification if w["remedy"] == r and not w.get("combines")), None)
                 for r in v.get("combines") or []]
        if alone and None not in alone:  # a combination: what each of its remedies reached alone
            line += f" (alone: {fmt(alone[0])} and {fmt(alone[1])})"
        changes = [f"{n} {fmt(a)} → {fmt(b)}" for n, (a, b) in list(v["symptoms"].items())[:2]]
        if changes:
            line += "; " + ", ".join(changes)
        if v.get("note"):  # a rule's or_patch ran: the config could not take its first form
            line += "; tried as " + ", ".join(f"{k}: {val}" for k, val in v["patch"].items())
        if v.get("cost"):
            line += f"; {v['cost']:.2g}x time/step"
        if v.get("seeds"):
            line += f"; fixed on {v['seeds']['fixed']}/{v['seeds']['of']} more seeds"
        elif v.get("seeds_note"):
            line += f"; {v['seeds_note']}"
        for e in v.get("interventions", {}).get("negative_curvature", []):
            if e.get("eta"):
                line += (f"; escape at step {e['step']}: lambda_min {fmt(e['lambda_min'])}, a step of {fmt(e['eta'])} along its "
                         f"eigenvector took the batch loss {fmt(e['loss_before'])} → {fmt(e['loss_after'])}")
            else:
                line += f"; at step {e['step']}: {e.get('outcome', 'no step')}"
        kicks = v.get("interventions", {}).get("perturb_gd", [])
        if kicks:
            line += f"; {len(kicks)} kick(s) at step(s) {', '.join(str(k['step']) for k in kicks[:5])}"
        longer = v.get("longer") or {}
        if v["helped"] and longer.get("fixed"):
            line += f"; still fixed when trained {longer['steps']} steps"
        elif v["helped"] and longer.get("reason"):
            line += f"; {longer['reason']}"
        if v.get("improved"):
            seeds = v.get("seeds") or {}
            line += (" — better, but the finding still holds" if v["still_fires"]
                     else " — better, but not a fix on every seed" if seeds.get("of") and seeds["fixed"] < seeds["of"]
                     else f" — better, but not a fix when trained {longer['steps']} steps" if longer.get("fixed") is False
                     else " — better, but it still ends above the initial or chance loss")
        elif not v["helped"]:
            line += " — did not help" + (" (the finding still holds)" if v["still_fires"] else "")
        table.add_row(mark, line)
    console.print(table)
    pick = next((v for v in f.verification if v.get("recommended")), None)
    if pick is not None:
        console.print(Text(f"   recommended: {_name(pick)} ({pick['why']})", style="bold green"))


def _pictures(console: Console, summary) -> None:
    loss = summary.loss_curve
    finite = [x for x in loss if math.isfinite(x)]
    if finite:
        line = Text("   loss   ")
        line.append(fmt(float(finite[0])) + " ")
        line.append(sparkline(loss), style="cyan")
        line.append(" " + fmt(float(finite[-1])))
        base = summary.baseline()
        if base is not None and base.status == "diverged":
            line.append(f"  diverged at step {base.stopped_at}", style="red")
        console.print(line)
    layers = summary.layer_profile
    if layers:
        logs = [math.log10(g.grad_norm) if g.grad_norm > 0 else -math.inf for g in layers]
        live = [lg for lg in logs if math.isfinite(lg)]
        lo, hi = (min(live), max(live)) if live else (0.0, 0.0)
        console.print(Text("   gradient norm per layer, input to output (first 10% of steps, log scale)", style="dim"))
        names = [f"{g.name} {g.type}".strip() for g in layers]
        width = max(len(n) for n in names)
        for n, g, lg in zip(names, layers, logs):
            if not math.isfinite(lg):
                bar = 0
            else:
                bar = 1 + int(round((lg - lo) / (hi - lo) * 30)) if hi > lo else 16
            row = Text(f"   {n:<{width}} ")
            row.append("█" * bar, style="magenta")
            row.append(f" {fmt(g.grad_norm)}")
            console.print(row)


def _probes(console: Console, summary) -> None:
    table = Table(title=None, box=None, padding=(0, 2), header_style="dim")
    for col in ("probe", "lr", "steps", "status", "loss start → end"):
        table.add_column(col)
    for p in summary.probes:
        loss = f"{fmt(p.loss_initial)} → {fmt(p.loss_final)}"
        status = p.status + (f" @ {p.stopped_at}" if p.stopped_at is not None else "")
        lr = fmt(p.lr)
        if p.lr_range is not None:  # the LR range test sweeps the rate
            lr = f"{fmt(p.lr_range[0])}→{fmt(p.lr_range[1])}"
            loss = "see lr.range_* symptoms"
        table.add_row(p.name, lr, str(p.steps), status, loss)
    console.print(table)


def _budget(console: Console, b: dict) -> None:
    """What a time budget (probe.budget / --budget) cut: the findings rest on shorter probes."""
    head = f"   time budget {fmt(b['seconds'])} s (hard limit {fmt(b['limit'])} s): probing used {fmt(b['used'])} s"
    console.print(Text(head + ("; nothing was cut" if not b["cut"] else "; cut to fit:"), style="yellow" if b["cut"] else "dim"),
                  soft_wrap=True)
    for c in b["cut"]:
        console.print(Text(f"     - {c}", style="yellow"), soft_wrap=True)


@reporter("text")
def render_text(diag, fail_on: str = "error", color: bool = False, width: int = 100) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width, highlight=False, markup=False,
                      color_system="standard" if color else None)
    n = len(diag.summary.probes)
    console.print(Text(f"optdoctor · {diag.name} ({diag.config_path}) · {n} probe{'s' * (n != 1)} · {diag.seconds:.1f} s", style="dim"),
                  soft_wrap=True)
    console.print(_verdict(diag, fail_on), soft_wrap=True)
    console.print()
    for f in diag.findings:
        _finding(console, f, diag.summary.meanings)
    _pictures(console, diag.summary)
    console.print()
    _probes(console, diag.summary)
    fired = sum(o.status == "fired" for o in diag.outcomes)
    skipped = [o for o in diag.outcomes if o.status == "not_evaluated"]
    line = f"   {len(diag.outcomes)} rules, {fired} fired, {len(skipped)} not evaluated"
    if skipped:
        line += " (" + "; ".join(f"{o.rule}: {o.reason}" for o in skipped[:3]) + ("; ..." if len(skipped) > 3 else "") + ")"
    console.print(Text(line, style="dim"), soft_wrap=True)
    if "budget" in diag.extra:
        _budget(console, diag.extra["budget"])
    return "\n".join(row.rstrip(" ") for row in buf.getvalue().split("\n"))
