"""``--format junit``: JUnit XML, one testsuite per config and one testcase per rule evaluated.

A rule that fired at or above ``--fail-on`` is a ``<failure>`` (message: the summary; text:
evidence and remedies); a rule that could not be evaluated is ``<skipped>`` (message: which
symptoms were missing); every other rule passes, and a finding below ``--fail-on`` is noted in
that passing testcase's ``<system-out>``. No ``time``/``timestamp`` attributes: the bytes are
the same for the same diagnosis (CI systems treat a missing time as 0).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from optdoctor.findings import Finding
from optdoctor.report.base import fails, reporter
from optdoctor.report.numbers import fmt
from optdoctor.report.sarif import report_path

# characters XML 1.0 cannot carry at all, even escaped (ElementTree would write them as is)
_ILLEGAL_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _ILLEGAL_XML.sub("\ufffd", str(text))


def details(f: Finding) -> str:
    lines = [f"{f.rule} {f.name}: cause {f.cause}, severity {f.severity}, confidence {fmt(f.confidence, exact=True)}",
             f.summary]
    if f.blame:
        where = f" ({report_path(str(f.location['file']))}:{f.location['line']}:{f.location['col']})" if f.location else ""
        lines.append(f"at {f.blame}{where}")
    if f.onset is not None:
        lines.append(f"from probe step {f.onset}")
    if f.evidence:
        lines.append("evidence:")
        lines += [f"  {k} = {fmt(v, exact=True)}" for k, v in f.evidence.items()]
    if f.remedies:
        lines.append("remedies:")
        lines += [f"  {i}. {r}" for i, r in enumerate(f.remedies, 1)]
    return "\n".join(lines) + "\n"


def _case(suite: ET.Element, classname: str, rule: str, name: str, path: str, f: Finding | None) -> ET.Element:
    attrs = {"classname": classname, "name": f"{rule} {name}", "file": path}
    if f is not None and f.location and f.location.get("line"):
        attrs["line"] = str(f.location["line"])
    return ET.SubElement(suite, "testcase", {k: _clean(v) for k, v in attrs.items()})


def junit_tree(diag, fail_on: str = "error") -> ET.Element:
    classname = f"optdoctor.{diag.name}"
    path = report_path(diag.config_path)
    by_rule = {f.rule: f for f in diag.findings}
    cases = [(o.rule, o.name, o.status, o.reason) for o in diag.outcomes]
    seen = {o.rule for o in diag.outcomes}
    # a finding with no outcome (a Diagnosis assembled elsewhere) still gets its testcase
    cases += [(f.rule, f.name, "fired", "") for f in diag.findings if f.rule not in seen]

    suites = ET.Element("testsuites", name="optdoctor")
    suite = ET.SubElement(suites, "testsuite", name=_clean(classname))
    props = ET.SubElement(suite, "properties")
    for k, v in (("config", path), ("status", diag.status), ("fail-on", fail_on)):
        ET.SubElement(props, "property", name=k, value=_clean(v))
    failures = skipped = 0
    for rule, name, status, reason in cases:
        f = by_rule.get(rule) if status == "fired" else None
        case = _case(suite, _clean(classname), rule, name, path, f)
        if status == "not_evaluated":
            skipped += 1
            ET.SubElement(case, "skipped", message=_clean(reason or "not evaluated"))
        elif f is not None and fails(f.severity, fail_on):
            failures += 1
            el = ET.SubElement(case, "failure", message=_clean(f.summary), type=f.severity)
            el.text = _clean(details(f))
        elif f is not None:
            out = ET.SubElement(case, "system-out")
            out.text = _clean(f"fired with severity {f.severity}, below --fail-on {fail_on}\n" + details(f))
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    for el in (suites, suite):
        el.attrib.update(counts)
    return suites


@reporter("junit")
def render_junit(diag, fail_on: str = "error") -> str:
    root = junit_tree(diag, fail_on)
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
