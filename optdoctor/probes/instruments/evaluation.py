"""Loss and accuracy on fixed evaluation batches at checkpoints."""

from __future__ import annotations

from typing import Any, Callable

import torch

from optdoctor.probes.instruments.base import At, Instrument, Series

IGNORE_INDEX = -100  # targets not scored (PyTorch's and Hugging Face's convention)


def accuracy(out: Any, y: Any, n_classes: int | None) -> tuple[float, int] | None:
    """(fraction correct, targets counted) for classification outputs: (N, C) against (N,), or
    per position (N, L, C) against (N, L) (a language model), C = ``n_classes``; targets equal
    to -100 are not counted. None for anything else."""
    if not (n_classes and isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor)):
        return None
    if out.dim() < 2 or out.shape[-1] != n_classes or tuple(y.shape) != tuple(out.shape[:-1]) or y.is_floating_point():
        return None
    hit = out.argmax(dim=-1) == y
    keep = y != IGNORE_INDEX
    if not bool(keep.all()):
        hit = hit[keep]
    if hit.numel() == 0:
        return None
    return float(hit.float().mean()), hit.numel()


def _mean(parts: list[tuple[float, int]]) -> float:
    """Size-weighted mean; one part is returned as it is."""
    if len(parts) == 1:
        return parts[0][0]
    return sum(v * n for v, n in parts) / sum(n for _, n in parts)


class Evaluation(Instrument):
    """The model in eval mode, without gradients, on fixed training batches ("loss.train_eval",
    "acc.train") and fixed validation batches ("loss.val", "acc.val"), at the scheduled states
    (step 0 and every ``val_every`` steps). ``forward(model, X) -> output`` and
    ``loss_fn(output, y) -> scalar`` are the setup's (errors in them are the user's); ``output``
    picks the predictions from the output for accuracy, recorded for classification outputs
    (``accuracy``). ``train``/``val``: one batch ``(X, y)`` or a list of them (chunks of one
    fixed sample: the loss is their size-weighted mean)."""

    series = (
        Series("loss.train_eval", "step", "loss on a fixed training batch, eval mode", tag="loss/train_eval"),
        Series("acc.train", "step", "accuracy on a fixed training batch", tag="accuracy/train"),
        Series("loss.val", "step", "loss on a fixed validation batch, eval mode", tag="loss/val"),
        Series("acc.val", "step", "accuracy on a fixed validation batch", tag="accuracy/val"),
        Series("loss.train_trainmode", "step", "loss on the same fixed training batch in training mode (no update: "
               "buffers such as BatchNorm's running statistics, and the random state, are restored), at the "
               "checkpoints of the probe's last tenth, for models with running statistics (BatchNorm): against "
               "loss.train_eval, what eval mode alone changes"),
    )
    needs = frozenset({"state"})

    def __init__(self, at: list[int], forward: Callable, loss_fn: Callable, train: Any, val: Any = None,
                 n_classes: int | None = None, output: Callable[[Any], Any] | None = None):
        self.schedule = At(at)
        self.forward, self.loss_fn, self.n_classes = forward, loss_fn, n_classes
        self.output = output or (lambda out: out)
        chunks = lambda b: b if isinstance(b, list) else [b]  # noqa: E731
        self.batches = [("train", chunks(train))] + ([("val", chunks(val))] if val is not None else [])
        last = max(self.schedule.steps, default=0)
        self.tail = last - max(1, round(0.1 * last))  # checkpoints after this step also run training mode

    def _train_mode_loss(self, chunks) -> float:
        """The loss on ``chunks`` in training mode, changing nothing: BatchNorm normalises by the
        chunk's own statistics (and dropout drops), but every buffer the forward pass updates and
        the random state are put back, so the probe goes on as if this had not run. NaN where the
        training-mode forward cannot run on these chunks (BatchNorm on a chunk of one sample): a
        measurement of ours, never the user's error."""
        model = self.ctx.model
        was = model.training
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        model.train()
        self.ctx.side_pass = True
        losses = []
        try:
            cuda = sorted({q.device.index or 0 for q in model.parameters() if q.device.type == "cuda"})
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                for X, y in chunks:
                    n = len(y) if isinstance(y, torch.Tensor) and y.dim() else 1
                    losses.append((float(self.loss_fn(self.forward(model, X), y)), n))
        except Exception:  # noqa: BLE001 -- the eval-mode comparison is then not made (loss.eval_mode_ratio absent)
            return float("nan")
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            model.train(was)
            self.ctx.side_pass = False
        return _mean(losses)

    def _evaluate(self, chunks) -> tuple[float, float | None]:
        model = self.ctx.model
        was = model.training
        model.eval()
        losses, accs = [], []  # (value, weight)
        try:
            with torch.no_grad():
                for X, y in chunks:
                    out = self.forward(model, X)
                    n = len(y) if isinstance(y, torch.Tensor) and y.dim() else 1
                    losses.append((float(self.loss_fn(out, y)), n))
                    acc = accuracy(self.output(out), y, self.n_classes)
                    if acc is not None:
                        accs.append(acc)
        finally:
            model.train(was)
        return _mean(losses), (_mean(accs) if accs else None)

    def _running_statistics(self) -> bool:
        """Whether the model normalises by running statistics in eval mode (BatchNorm and its
        kin): the one train/eval difference loss.train_trainmode is measured for. Other models
        get no training-mode pass, so their forward is never called in training mode outside a
        training step (a model may count its training calls)."""
        from torch.nn.modules.batchnorm import _NormBase

        if not hasattr(self, "_norm"):
            mods = list(self.ctx.model.modules())
            # SyncBatchNorm's training-mode forward is a collective: not outside a step
            self._norm = (any(isinstance(m, _NormBase) and m.track_running_stats for m in mods)
                          and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in mods))
        return self._norm

    def at_state(self, step: int) -> None:
        if step > self.tail and self._running_statistics():
            self.recorder.log("loss.train_trainmode", step, self._train_mode_loss(self.batches[0][1]))
        for split, chunks in self.batches:
            loss, acc = self._evaluate(chunks)
            self.recorder.log("loss.train_eval" if split == "train" else "loss.val", step, loss)
            if acc is not None:
                self.recorder.log(f"acc.{split}", step, acc)
