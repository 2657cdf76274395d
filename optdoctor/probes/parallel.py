"""``optdoctor diagnose`` under torchrun: whole probes split across ranks, traces gathered.

    torchrun --nproc_per_node=2 -m optdoctor diagnose config.yaml

torch.distributed is the engine (DESIGN.md): each rank runs whole probes of the plan (probe i on
rank i mod world), then every rank gathers every trace (``all_gather_object``), so that each
holds the same ProbeSet and what follows (symptoms, rules, reports) is unchanged; the CLI lets
rank 0 alone print and write. A probe builds its model from its own seed and draws its batches
from its own generator, so it gives the same trace on any rank: the findings are those of one
process. Two waves, as ``run_probes``: the baseline with the learning-rate variants and the LR
range test; then, on a plateau, the follow-ups (the baseline's final weights broadcast from the
rank that ran it). Every collective is called by every rank, also when a probe raises: the error
travels with the gathered results and is raised on every rank.
"""

from __future__ import annotations

import os
from typing import Callable

from optdoctor.probes.runner import (
    LR_RANGE_STEPS,
    PERTURB_EPS,
    RESEEDS,
    ProbeSpec,
    plan_variants,
    run_lr_range,
    run_probe,
    standardized_probe,
    target_standardized_probe,
    whitened_probe,
)
from optdoctor.probes.setup import Setup, fraction_steps
from optdoctor.trace import ProbeSet


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _init() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def choose(run_probes: Callable) -> Callable:
    """``run_probes`` itself in one process; the rank-splitting twin under torchrun."""
    return run_probes_across_ranks if launched() else run_probes


def _share(jobs: list[tuple[str, Callable]], progress) -> dict:
    """Run job i on rank i mod world; every rank gets every result, in plan order."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    mine: dict[str, tuple] = {}
    for i, (name, job) in enumerate(jobs):
        if i % world != rank:
            continue
        try:
            mine[name] = ("ok", job(progress if rank == 0 else None))
        except Exception as e:  # noqa: BLE001 - raised on every rank after the gather
            mine[name] = ("error", e)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    merged = {k: v for part in gathered for k, v in part.items()}
    for name, _ in jobs:
        status, value = merged[name]
        if status == "error":
            raise value
    return {name: merged[name][1] for name, _ in jobs}


def run_probes_across_ranks(setup: Setup, progress=None, followups: Callable[..., bool] | None = None,
                            budget=None) -> ProbeSet:
    """``runner.run_probes`` with its probes split across the ranks of a process group. A time
    ``budget`` (``setup`` already carries its plan) stops each rank's probes at its hard limit;
    probes are not skipped for it here (every rank must run its share of the same list)."""
    _init()
    stop = budget.stop if budget is not None else None
    cfg = setup.cfg
    hess_steps = fraction_steps(cfg.probe.hessian.at, cfg.probe.steps) if cfg.probe.hessian.enabled else []
    base = ProbeSpec(steps=cfg.probe.steps, seed=cfg.seed, hessian_steps=hess_steps)
    specs = [base] + plan_variants(setup)

    def probe(spec: ProbeSpec, keep_state: bool = False):
        def job(prog):
            trace, state = run_probe(setup, spec, prog, stop=stop)
            return (trace, state if keep_state else None)

        return job

    jobs = [(s.name, probe(s, keep_state=s is base)) for s in specs]
    if cfg.probe.lr_range:
        steps = min(LR_RANGE_STEPS, max(20, cfg.probe.steps))
        jobs.append(("lr_range", lambda prog: (run_lr_range(setup, steps, progress=prog, stop=stop), None)))
    results = _share(jobs, progress)
    probes = ProbeSet({name: trace for name, (trace, _) in results.items()})
    probes.data_stats = dict(probes.baseline.meta.get("data_stats", {}))
    base_state = results[base.name][1]
    if followups is not None and not cfg.probe.standardize_inputs and followups(probes, "standardized"):
        spec, std_setup = standardized_probe(setup)
        for name, (trace, _) in _share([(spec.name, lambda prog: (run_probe(std_setup, spec, prog, stop=stop)[0], None))], progress).items():
            probes.traces[name] = trace
    rerun = whitened_probe(setup) if followups is not None and not cfg.probe.whiten_inputs and \
        followups(probes, "whitened") else None
    if rerun is not None:
        spec, w_setup = rerun
        for name, (trace, _) in _share([(spec.name, lambda prog: (run_probe(w_setup, spec, prog, stop=stop)[0], None))], progress).items():
            probes.traces[name] = trace
    if followups is not None and not cfg.probe.standardize_targets and followups(probes, "target_standardized"):
        spec, std_setup = target_standardized_probe(setup)
        for name, (trace, _) in _share([(spec.name, lambda prog: (run_probe(std_setup, spec, prog, stop=stop)[0], None))], progress).items():
            probes.traces[name] = trace
    if followups is not None and cfg.probe.variants.perturb and followups(probes, "plateau"):
        steps = cfg.probe.variants.steps or cfg.probe.steps
        more = [ProbeSpec(name="continued", kind="continued", steps=steps, seed=cfg.seed + 1, full=False, start_state=base_state),
                ProbeSpec(name="perturbed", kind="perturbed", steps=steps, seed=cfg.seed + 1, full=False,
                          start_state=base_state, perturb=PERTURB_EPS)]
        more += [ProbeSpec(name=f"reseed_{i}", kind="reseed", steps=cfg.probe.steps, seed=cfg.seed + i, full=False)
                 for i in range(1, RESEEDS + 1)]
        for name, (trace, _) in _share([(s.name, probe(s)) for s in more], progress).items():
            probes.traces[name] = trace
    return probes
