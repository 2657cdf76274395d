"""Instruments: one class per file, each declaring its series, schedule and needs
(``base.py``); ``InstrumentSet`` attaches them to a model and an optimizer by hooks. Adding an
instrument is one file here plus its test; ``default_instruments`` is where a probe's set is
chosen.

    layers, acts = discover(model, example_inputs)        # forward order, fixed once
    ctx = Context(model, optimizer, Recorder(), layers, acts)
    inst = InstrumentSet(default_instruments(steps=200)).attach(ctx)
    ... any training loop: forward, backward, optimizer.step() ...
    inst.detach(); inst.finish(trace)
"""

from __future__ import annotations

from typing import Any

from optdoctor.probes.instruments.activations import Activations
from optdoctor.probes.instruments.base import At, Context, Every, Instrument, InstrumentSet, Schedule, Series
from optdoctor.probes.instruments.curvature import Curvature
from optdoctor.probes.instruments.data_stats import DataStats, data_stats
from optdoctor.probes.instruments.evaluation import Evaluation
from optdoctor.probes.instruments.grad_cosine import GradCosine
from optdoctor.probes.instruments.grad_histogram import GradHistogram
from optdoctor.probes.instruments.grad_norms import GradNorms
from optdoctor.probes.instruments.functional import FUNCTIONS, FunctionalActivations, is_site, site_name
from optdoctor.probes.instruments.layers import (
    SIGMOID_SAT,
    TANH_SAT,
    activation_kind,
    activation_modules,
    discover,
    parametrised_layers,
)
from optdoctor.probes.instruments.layer_scales import LayerScales
from optdoctor.probes.instruments.position_grads import PositionGrads
from optdoctor.probes.instruments.update_ratios import UpdateRatios
from optdoctor.probes.instruments.weight_symmetry import WeightSymmetry, weight_row_spread

__all__ = [
    "Activations", "At", "Context", "Curvature", "DataStats", "Evaluation", "Every", "FUNCTIONS", "FunctionalActivations",
    "GradCosine", "GradHistogram", "GradNorms", "Instrument", "InstrumentSet", "LayerScales", "PositionGrads", "SIGMOID_SAT", "Schedule", "Series",
    "TANH_SAT", "UpdateRatios", "WeightSymmetry", "activation_kind", "activation_modules", "data_stats",
    "default_instruments", "discover", "is_site", "parametrised_layers", "site_name", "weight_row_spread",
]


def default_instruments(steps: int, *, full: bool = True, seed: int = 0, has_acts: bool = True,
                        evaluation: dict[str, Any] | None = None,
                        curvature: dict[str, Any] | None = None) -> list[Instrument]:
    """The instruments of one probe of ``steps`` steps.

    Every probe: gradient norms, update ratios, activation statistics (the variants' dead
    fractions are counterfactual evidence, OD406), init symmetry, each layer's output scale at
    the first step, and ``evaluation``
    (``Evaluation``'s keyword arguments) when given. ``full`` (the baseline) adds gradient
    histograms, input statistics and ``curvature`` (``Curvature``'s keyword arguments) when
    given, and, for sequence inputs, the gradient per position (~20 times per probe).
    Activation statistics and histograms are measured ~10 times per probe. ``GradCosine`` is
    not in the set: no rule reads it yet, and it cost ~5 ms of a 0.1 s probe (attach it to a
    loop of your own, or add it here when a symptom needs it)."""
    every = max(1, steps // 10)
    out: list[Instrument] = [GradNorms(), UpdateRatios(), WeightSymmetry(), LayerScales()]
    if has_acts:
        out.append(Activations(every=every, window=2))
    if evaluation is not None:
        out.append(Evaluation(**evaluation))
    if full:
        out += [GradHistogram(every=every, seed=seed), DataStats(), PositionGrads(every=max(1, steps // 20))]
        if curvature is not None:
            out.append(Curvature(**curvature))
    return out


