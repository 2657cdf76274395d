"""``OptDoctor``: the Monitor as a Lightning callback.

    trainer = lightning.Trainer(callbacks=[OptDoctor()])

Gradients are measured at ``on_before_optimizer_step``: after gradient accumulation and AMP
unscaling, before Lightning clips them. The training loss comes from ``training_step``'s
output, validation from ``trainer.callback_metrics`` (``val_loss``/``val_acc`` by default).
At the end of fit the diagnosis is printed and saved as JSON (rank 0), and its key symptoms go
to the trainer's loggers. Under ``strategy="ddp"`` every rank monitors, rank 0 reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the extra is not installed
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:
        raise ImportError("optdoctor.integrations.lightning needs Lightning: pip install 'optdoctor[lightning]'") from e

from optdoctor.integrations import finish


class OptDoctor(Callback):
    """Args: ``json_path`` (default ``<trainer.default_root_dir>/optdoctor.json``),
    ``val_loss``/``val_acc`` (keys of ``trainer.callback_metrics``), ``follow_up`` (run the
    counterfactual probes at the end; needs ``loss_fn``), and any ``Monitor`` keyword argument.
    With ``loss_fn`` (``loss_fn(pl_module(x), y)``: the loss your ``training_step`` computes)
    and ``(x, y)`` batches, the last ``keep_batches`` batches are kept: the Hessian's spectrum is
    measured at the end (the curvature rules are then evaluated) and ``follow_up`` has data."""

    def __init__(self, json_path: str | Path | None = None, val_loss: str = "val_loss", val_acc: str = "val_acc",
                 follow_up: bool = False, **monitor_kw: Any) -> None:
        self.json_path, self.val_loss, self.val_acc = json_path, val_loss, val_acc
        self.follow_up, self.monitor_kw = follow_up, monitor_kw
        self.monitor = None
        self.diagnosis = None
        self._stepped = False

    def on_train_start(self, trainer, pl_module) -> None:
        from optdoctor.monitor import Monitor

        self.monitor = Monitor(pl_module, trainer.optimizers[0], grads="manual", **self.monitor_kw)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None:
            self.monitor.grads_ready()
            self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None or not self._stepped:  # accumulating: no optimizer step yet
            return
        self._stepped = False
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        # with a loss_fn, an (inputs, target) batch is kept for the Hessian at the end and the
        # follow-up probes (loss_fn(pl_module(inputs), target), as the Monitor calls it)
        keep = self.monitor.loss_fn is not None and isinstance(batch, (tuple, list)) and len(batch) == 2
        self.monitor.step(loss, batch=tuple(batch) if keep else None)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if self.val_loss in m:
            acc = m.get(self.val_acc)
            self.monitor.validate(float(m[self.val_loss]), None if acc is None else float(acc))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        path = self.json_path if self.json_path is not None else Path(trainer.default_root_dir) / "optdoctor.json"
        self.diagnosis = finish(self.monitor, path, self.follow_up)
        if trainer.is_global_zero:
            from optdoctor.report.tensorboard import diagnosis_metrics

            metrics = {f"optdoctor/{k}": v for k, v in diagnosis_metrics(self.diagnosis).items()}
            metrics["optdoctor/findings"] = float(len(self.diagnosis.findings))
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.monitor.close()
