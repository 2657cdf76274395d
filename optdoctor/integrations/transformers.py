"""``OptDoctor``: the Monitor as a Hugging Face ``TrainerCallback``.

    trainer = transformers.Trainer(..., callbacks=[OptDoctor()])

Gradients are measured at ``on_pre_optimizer_step`` (after accumulation; the Trainer clips
before this hook, so with ``max_grad_norm`` clipping the absolute norms are post-clip while the
per-layer ratios the gradient rules use are unchanged by it). The training loss of each
optimizer step is the mean of the model outputs' ``loss`` over its micro-batches. Evaluation
metrics (``eval_loss``, ``eval_accuracy``) feed ``validate``. At the end of training the
diagnosis is printed and saved as JSON in ``args.output_dir`` (main process), and its key
symptoms are added to ``state.log_history``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("optdoctor.integrations.transformers needs transformers: pip install 'optdoctor[transformers]'") from e

from optdoctor.integrations import finish


def own_loss(output: Any, _target: Any = None) -> Any:
    """The loss a Hugging Face model computes itself (its output's ``loss``, when the batch has
    labels), as the Monitor's ``loss_fn(output, target)``."""
    return output["loss"] if isinstance(output, dict) else output.loss


class OptDoctor(TrainerCallback):
    """Args: ``json_path`` (default ``<args.output_dir>/optdoctor.json``), ``val_acc`` (the
    accuracy key of the evaluation metrics), ``follow_up`` (the counterfactual probes at the end),
    ``model_loss``: use the model's own ``loss`` output as the Monitor's ``loss_fn`` and keep the
    last training batches (``keep_batches``), so that the Hessian's spectrum is measured at the
    end (the curvature rules are then evaluated; 20-80 Hessian-vector products on the kept
    batch) and ``follow_up`` has data; off by default. Any other keyword goes to ``Monitor``."""

    def __init__(self, json_path: str | Path | None = None, val_acc: str = "eval_accuracy", follow_up: bool = False,
                 model_loss: bool = False, **monitor_kw: Any) -> None:
        self.json_path, self.val_acc, self.follow_up, self.monitor_kw = json_path, val_acc, follow_up, monitor_kw
        if model_loss:
            self.monitor_kw.setdefault("loss_fn", own_loss)
        self.monitor = None
        self.diagnosis = None
        self._losses: list = []
        self._inputs: dict | None = None  # the last training forward's keyword inputs
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from optdoctor.monitor import Monitor, _unwrap_model

        self.monitor = Monitor(model, optimizer, grads="manual", **self.monitor_kw)
        keep = self.monitor.loss_fn is not None

        def keep_loss(module, _args, inputs, out):
            loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
            if module.training and loss is not None:
                self._losses.append(loss.detach())
                if keep and inputs:
                    self._inputs = inputs  # the Trainer calls model(**inputs); the monitor copies it at step()

        self._hook = _unwrap_model(model).register_forward_hook(keep_loss, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.grads_ready()

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        import torch

        loss = torch.stack(self._losses).float().mean() if self._losses else None
        self._losses = []
        batch, self._inputs = ((self._inputs, None) if self._inputs else None), None
        self.monitor.step(loss, batch=batch)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is not None and metrics and "eval_loss" in metrics:
            self.monitor.validate(metrics["eval_loss"], metrics.get(self.val_acc))

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        if self._hook is not None:
            self._hook.remove()
        path = self.json_path if self.json_path is not None else Path(args.output_dir) / "optdoctor.json"
        self.diagnosis = finish(self.monitor, path, self.follow_up)
        from optdoctor.report.tensorboard import diagnosis_metrics

        entry = {f"optdoctor/{k}": v for k, v in diagnosis_metrics(self.diagnosis).items()}
        entry["optdoctor/findings"] = len(self.diagnosis.findings)
        entry["step"] = state.global_step
        state.log_history.append(entry)
        self.monitor.close()
