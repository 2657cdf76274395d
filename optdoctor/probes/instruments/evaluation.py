"""Loss and accuracy on fixed evaluation batches at checkpoints."""

from __future__ import annotations

from typing import Any, Callable

import torch

from optdoctor.probes.instruments.base import At, Instrument, Series


class Evaluation(Instrument):
    """The model in eval mode, without gradients, on a fixed training batch ("loss.train_eval",
    "acc.train") and a fixed validation batch ("loss.val", "acc.val"), at the scheduled states
    (step 0 and every ``val_every`` steps). ``forward(model, X) -> output`` and
    ``loss_fn(output, y) -> scalar`` are the setup's (errors in them are the user's); accuracy
    is recorded for classification outputs (N, n_classes)."""

    series = (
        Series("loss.train_eval", "step", "loss on a fixed training batch, eval mode", tag="loss/train_eval"),
        Series("acc.train", "step", "accuracy on a fixed training batch", tag="accuracy/train"),
        Series("loss.val", "step", "loss on a fixed validation batch, eval mode", tag="loss/val"),
        Series("acc.val", "step", "accuracy on a fixed validation batch", tag="accuracy/val"),
    )
    needs = frozenset({"state"})

    def __init__(self, at: list[int], forward: Callable, loss_fn: Callable, train: Any, val: Any = None,
                 n_classes: int | None = None):
        self.schedule = At(at)
        self.forward, self.loss_fn, self.n_classes = forward, loss_fn, n_classes
        self.batches = [("train", train)] + ([("val", val)] if val is not None else [])

    def _evaluate(self, batch) -> tuple[float, float | None]:
        X, y = batch
        model = self.ctx.model
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = self.forward(model, X)
                loss = float(self.loss_fn(out, y))
                acc = None
                if (self.n_classes and isinstance(out, torch.Tensor) and out.dim() == 2
                        and out.shape[1] == self.n_classes):
                    acc = float((out.argmax(dim=1) == y).float().mean())
        finally:
            model.train(was)
        return loss, acc

    def at_state(self, step: int) -> None:
        for split, batch in self.batches:
            loss, acc = self._evaluate(batch)
            self.recorder.log("loss.train_eval" if split == "train" else "loss.val", step, loss)
            if acc is not None:
                self.recorder.log(f"acc.{split}", step, acc)
