"""ProbeSet -> what the reports show besides the findings (a pure function, numpy only).

One definition per number: a probe's final loss is the smoothed one the symptoms use
(``symptoms._util.final_loss``: the mean of the last 10% of steps, inf if it diverged), in the
text table, the JSON and TensorBoard alike.
"""

from __future__ import annotations

import numpy as np

from optdoctor.diagnose.model import LayerGradient, ProbeRow, Summary
from optdoctor.findings import Finding
from optdoctor.symptoms import SYMPTOMS
from optdoctor.symptoms._util import final_loss
from optdoctor.trace import ProbeSet, Trace

PROFILE_SHARE = 10  # the layer profile: gradient norms over the first 1/10 of the baseline's steps


def probe_row(name: str, t: Trace) -> ProbeRow:
    loss = t.values("loss.train") if t.has("loss.train") else []
    lr_range = (t.meta["lr_min"], t.meta["lr_max"]) if "lr_min" in t.meta and "lr_max" in t.meta else None
    return ProbeRow(name=name, kind=t.kind, lr=t.meta.get("lr"), steps=t.meta.get("steps"), seed=t.meta.get("seed"),
                    status=t.status, stopped_at=t.stopped_at,
                    loss_initial=float(loss[0]) if len(loss) else None, loss_final=final_loss(t), lr_range=lr_range)


def layer_profile(t: Trace) -> list[LayerGradient]:
    """Per-layer gradient norm, geometric mean over the first 10% of steps (steps where some
    norm is not finite are left out); empty when the layers are unknown."""
    if not t.has("grad.norm"):
        return []
    G = t.values("grad.norm")
    early = G[: max(1, len(G) // PROFILE_SHARE)]
    early = early[np.all(np.isfinite(early), axis=1)]
    names = list(t.meta.get("layers", []))
    if not len(early) or len(names) != G.shape[1]:
        return []
    with np.errstate(divide="ignore"):
        per = np.exp(np.log(early).mean(axis=0))  # 0 if a norm was 0
    types = list(t.meta.get("layer_types") or [""] * len(names))
    return [LayerGradient(str(n), str(ty), float(v)) for n, ty, v in zip(names, types, per)]


def summarize(probes: ProbeSet, findings: list[Finding] = ()) -> Summary:
    base = probes.traces.get("baseline")
    curve = [float(x) for x in base.values("loss.train")] if base is not None and base.has("loss.train") else []
    cited = {n for f in findings for n in f.evidence}
    return Summary(
        probes=[probe_row(name, t) for name, t in sorted(probes.traces.items())],
        layer_profile=layer_profile(base) if base is not None else [],
        loss_curve=curve,
        meanings={n: SYMPTOMS[n].meaning for n in sorted(cited) if n in SYMPTOMS},
    )
