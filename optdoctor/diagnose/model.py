"""What a diagnosis is: the one object every reporter renders. Plain data, no torch, no numpy.

Everything a report shows is in here, computed once upstream (``summary.summarize``):
reporters read a Diagnosis and nothing else, never the Traces or the symptom producers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optdoctor.findings import Finding, RuleOutcome

if TYPE_CHECKING:  # the Trace side, for the writers of traces (save, TensorBoard) only
    from optdoctor.config.schema import LoadedConfig
    from optdoctor.trace import ProbeSet


@dataclass
class ProbeRow:
    """One probe as the reports' probe tables show it."""

    name: str
    kind: str  # baseline | lr_variant | continued | perturbed | reseed | lr_range | verify | seed
    lr: float | None
    steps: int | None
    seed: int | None
    status: str  # completed | diverged | interrupted
    stopped_at: int | None
    loss_initial: float | None  # train loss at the first step
    loss_final: float  # the smoothed final loss the symptoms use (symptoms._util.final_loss)
    lr_range: tuple[float, float] | None = None  # the rates an LR range test swept


@dataclass
class LayerGradient:
    """A parametrised layer's gradient norm early in the baseline probe (input to output)."""

    name: str  # module name, e.g. "0" or "encoder.fc1"
    type: str  # module class, e.g. "Linear"; "" when unknown
    grad_norm: float  # geometric mean over the first 10% of steps; 0 if a norm was 0


@dataclass
class Summary:
    """What reports show besides the findings."""

    probes: list[ProbeRow] = field(default_factory=list)  # sorted by name
    layer_profile: list[LayerGradient] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)  # the baseline's train loss per step
    meanings: dict[str, str] = field(default_factory=dict)  # symptom -> meaning, for those findings cite

    def baseline(self) -> ProbeRow | None:
        return next((p for p in self.probes if p.kind == "baseline"), None)


@dataclass
class Diagnosis:
    name: str
    config_path: str
    findings: list[Finding]
    outcomes: list[RuleOutcome]
    symptoms: dict[str, float]
    probes: ProbeSet  # the measurements, for the writers of traces (--save-trace, TensorBoard)
    status: str = "completed"  # completed | interrupted
    seconds: float = 0.0
    loaded: LoadedConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)
