"""TensorBoard logs of a diagnosis: one run per probe, written from the Traces after probing.

    write_diagnosis(diag, "tb/")      # every probe + the findings, config and layout
    write_probe(trace, "tb/")         # one probe -> tb/<probe>/events.out.tfevents.*

Writing happens after the probes ran, from the Trace (plain numpy), so it costs the training
nothing per step and works on a diverged or interrupted probe, or a trace loaded from disk
(``optdoctor replay``). Like every stage below the Trace it does not import torch.

Writer: tensorboard's own ``EventFileWriter`` and protos, all values of one step packed into
one Event. Measured on an 8-probe, 200-step diagnosis, 78k values, on a loaded 2-core machine
(``benchmarks/tensorboard_write.py --compare``): ``write_diagnosis`` 0.6-0.7 s; one
``SummaryWriter.add_scalar`` per value 5.1-6.9 s; one tensorboard Event per value 3.5-5.0 s.
Most of the time goes to the record checksum (CRC32C in pure Python, ~0.17 us per byte), so
fewer, larger records win. ``torch.utils.tensorboard`` would also import torch (1.3-2.4 s
cold), which replaying a saved trace otherwise never pays; these imports take ~0.5 s.

The package: ``tags`` (Trace -> tag names and values: the one table of series -> tags),
``markdown`` (the diagnosis and each probe as markdown text), ``writing`` (protos, event files).
"""

from optdoctor.report.tensorboard.markdown import diagnosis_markdown, probe_markdown
from optdoctor.report.tensorboard.tags import scalar_points
from optdoctor.report.tensorboard.writing import diagnosis_metrics, flatten_config, write_diagnosis, write_probe

__all__ = ["diagnosis_markdown", "diagnosis_metrics", "flatten_config", "probe_markdown", "scalar_points",
           "write_diagnosis", "write_probe"]
