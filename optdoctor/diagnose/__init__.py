"""Diagnosis: config -> probes -> symptoms -> rules -> the Diagnosis every reporter renders.

    model.py        Diagnosis and what reports show besides findings (plain data)
    summary.py      ProbeSet -> that report model (probe table, layer profile), computed once
    orchestrate.py  run_diagnosis (``optdoctor diagnose``), replay_diagnosis (``optdoctor replay``)
    gate.py         when the plateau follow-up probes run: the gates of the rules that read them
    verify.py       --verify: patched remedies tried in probes of their own
    seeds.py        probe.seeds > 1: the whole set per seed; findings kept by majority

Imports torch (through probes/) only when ``run_diagnosis`` is called.
"""

from optdoctor.diagnose.gate import followups_wanted, is_plateau, plateau_gate
from optdoctor.diagnose.model import Diagnosis, LayerGradient, ProbeRow, Summary
from optdoctor.diagnose.orchestrate import (
    evaluate_probes,
    replay_diagnosis,
    run_diagnosis,
    save_traces,
    saved_config,
    snapshots,
)
from optdoctor.diagnose.summary import summarize

__all__ = ["Diagnosis", "LayerGradient", "ProbeRow", "Summary", "evaluate_probes", "followups_wanted",
           "is_plateau", "plateau_gate", "replay_diagnosis", "run_diagnosis", "save_traces", "saved_config", "snapshots",
           "summarize"]
