"""Callbacks that drive the same ``Monitor`` from a trainer's hooks.

    from optdoctor.integrations.lightning import OptDoctor      # pip install optdoctor[lightning]
    from optdoctor.integrations.transformers import OptDoctor   # pip install optdoctor[transformers]

Both print the diagnosis at the end of training and save it as JSON (rank 0 only).
"""


def finish(monitor, json_path, follow_up: bool = False, printer=print) -> object:
    """Diagnose (every rank), then on rank 0 print the text report and write the JSON report."""
    from pathlib import Path

    from optdoctor import distributed

    diag = monitor.diagnose(follow_up=follow_up)
    if distributed.is_main():
        printer(monitor.report("text"))
        if json_path is not None:
            path = Path(json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(monitor.report("json"))
            printer(f"optdoctor: diagnosis written to {path}")
    return diag
