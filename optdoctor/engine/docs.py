"""Rule documentation, rendered from the one source: the rule file (ruff's fixed sections)."""

from __future__ import annotations

import textwrap

from optdoctor.engine.rules import Rule

SECTIONS = (("what", "What it means"), ("why", "Why it happens"), ("detection", "How it is detected"),
            ("false_positives", "Known false positives"), ("remedies", "Remedies"))


def explain(rule: Rule, width: int = 88) -> str:
    def para(text: str) -> str:
        return "\n".join(textwrap.fill(p, width, initial_indent="  ", subsequent_indent="  ")
                         for p in text.strip().split("\n\n")) + "\n"

    out = [f"{rule.id} {rule.name}  (cause: {rule.cause}, severity: {rule.severity}, family: {rule.family})\n\n"]
    for key, title in SECTIONS:
        if key == "remedies":
            out.append(f"{title}\n")
            out += [textwrap.fill(r.text, width, initial_indent=f"  {i}. ", subsequent_indent="     ") + "\n"
                    for i, r in enumerate(rule.remedies, 1)]
            if rule.docs.get("remedies"):
                out.append(para(rule.docs["remedies"]))
            out.append("\n")
        elif rule.docs.get(key):
            out.append(f"{title}\n{para(rule.docs[key])}\n")
    out.append(f"Condition\n  {rule.when.source}\n")
    if rule.for_ > 1:
        out.append(f"  (must hold at the last {rule.for_} checkpoints)\n")
    out.append("\n")
    if rule.gate is not None:
        out.append(f"Follow-up probes (continued, perturbed, reseed) run when\n  {rule.gate.source}\n\n")
    if rule.params:
        out.append("Parameters (override in [tool.optdoctor.params] or with --param)\n")
        for p in rule.params.values():
            out.append(f"  {p.name} = {p.default:g}" + (f"  {p.doc}" if p.doc else "") + "\n")
        out.append("\n")
    if rule.blame:
        out.append(f"Blamed config key\n  {rule.blame}\n\n")
    if any(r.patch for r in rule.remedies):
        out.append(f"Remedies tried by --verify are judged by\n  {rule.verify}\n\n")
    if rule.references:
        out.append("References\n" + "".join(f"  - {r}\n" for r in rule.references))
    return "".join(out)
