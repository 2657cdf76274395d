"""How long writing a diagnosis' TensorBoard logs takes (optdoctor/report/tensorboard/).

    python benchmarks/tensorboard_write.py [--repeats 7] [--config C.yaml | --traces DIR] [--compare]

Probes a typical diagnosis once (default: the deep-sigmoid sample below, 6 probes of 200
steps; or a config of yours, or traces saved with ``--save-trace``), then writes its logs
``--repeats`` times into fresh folders and prints the median seconds, next to the probing
time. Writing happens after probing, from the traces: training pays nothing per step.

``--compare`` also times the alternatives for the same scalars: ``torch.utils.tensorboard``'s
``SummaryWriter.add_scalar`` per value, tensorboard's ``EventFileWriter`` with one Event per
value, and one Event per step (what optdoctor does); and the cold import time of each writer
(a fresh interpreter each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = """\
name: deep-sigmoid
model: {factory: optdoctor.models:mlp, args: {depth: 8, width: 32, act: sigmoid}}
data: {factory: optdoctor.data:blobs, batch_size: 64}
optimizer: {name: sgd, lr: 0.1}
probe: {steps: 200}
"""


def probe(config: Path | None, traces: Path | None):
    """(Diagnosis, probing seconds or None)."""
    if traces is not None:
        from optdoctor.diagnose import replay_diagnosis, saved_config
        from optdoctor.engine.rules import load_rules

        return replay_diagnosis(traces, load_rules(), loaded=saved_config(traces)), None
    from optdoctor.config import load_config
    from optdoctor.diagnose import run_diagnosis

    with tempfile.TemporaryDirectory() as tmp:
        if config is None:
            config = Path(tmp) / "deep-sigmoid.yaml"
            config.write_text(SAMPLE)
        t0 = time.perf_counter()
        diag = run_diagnosis(load_config(config))
        return diag, time.perf_counter() - t0


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            fn(Path(tmp))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_value_rows(trace):
    """(tag, step, value) of every finite scalar optdoctor writes for this trace."""
    from optdoctor.report.tensorboard import scalar_points

    for tag, (steps, values) in scalar_points(trace).items():
        yield from zip([tag] * len(steps), steps.tolist(), values.tolist())


def torch_per_value(diag, out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for name, trace in diag.probes.traces.items():
        w = SummaryWriter(str(out / name))
        for tag, step, value in per_value_rows(trace):
            w.add_scalar(tag, value, step)
        w.close()


def tensorboard_per_value(diag, out: Path) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for name, trace in diag.probes.traces.items():
        w = EventFileWriter(str(out / name))
        for tag, step, value in per_value_rows(trace):
            w.add_event(Event(step=step, wall_time=time.time(),
                              summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))
        w.close()


def packed_scalars_only(diag, out: Path) -> None:
    from optdoctor.report.tensorboard.writing import _Run, scalar_points

    for name, trace in diag.probes.traces.items():
        run = _Run(out / name)
        run.scalars(scalar_points(trace))
        run.write()


def cold_import(module: str, repeats: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--config", type=Path, help="probe this config instead of the deep-sigmoid sample")
    parser.add_argument("--traces", type=Path, help="use traces saved with --save-trace (no probing)")
    parser.add_argument("--compare", action="store_true", help="also time SummaryWriter and one Event per value")
    args = parser.parse_args()

    from optdoctor.report.tensorboard import scalar_points, write_diagnosis

    diag, probe_s = probe(args.config, args.traces)
    n_values = sum(len(s) for t in diag.probes.traces.values() for s, _ in scalar_points(t).values())
    steps = sorted({t.meta.get("steps") for t in diag.probes.traces.values()})
    print(f"diagnosis: {len(diag.probes.traces)} probes, steps {steps}, {n_values} scalar values"
          + (f", probing took {probe_s:.2f} s" if probe_s else ""))
    write = median_seconds(lambda out: write_diagnosis(diag, out), args.repeats)
    print(f"write_diagnosis: {write:.3f} s median of {args.repeats}"
          + (f" ({100 * write / probe_s:.0f}% of the probing time)" if probe_s else ""))
    if args.compare:
        for label, fn in [("one Event per step (optdoctor, scalars only)", packed_scalars_only),
                          ("tensorboard EventFileWriter, one Event per value", tensorboard_per_value),
                          ("torch SummaryWriter.add_scalar per value", torch_per_value)]:
            print(f"{label}: {median_seconds(lambda out: fn(diag, out), args.repeats):.3f} s median")
        for module in ("torch.utils.tensorboard", "torch",
                       "tensorboard.summary.writer.event_file_writer, tensorboard.plugins.hparams.plugin_data_pb2"):
            print(f"cold import {module}: {cold_import(module):.2f} s")


if __name__ == "__main__":
    main()
