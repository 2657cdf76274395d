"""Everything a probe needs, resolved once per diagnosis: the user's factories, the data (the
data factory runs once; every probe reuses it; ``probes.batches`` reads only the batches used),
the loss, the optimizer class."""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from optdoctor.config.factories import call_user, resolve_callable, stage
from optdoctor.config.resolve import resolve_loss, resolve_optimizer, resolve_scheduler, validate_resolvable
from optdoctor.config.schema import LoadedConfig
from optdoctor.config.loader import problem_at
from optdoctor.errors import ConfigError, ProbeError, exhaustion
from optdoctor.probes.batches import EVAL_CAP, WHITEN_MAX_DIM, Criterion, Inputs, Reader, Source, batch_len, make_source

__all__ = ["EVAL_CAP", "Setup", "prepare", "derive", "fraction_steps", "pick_device"]

# The data (optdoctor.probes.batches): every split is a Source, read only where the probes use it.


@dataclass
class Setup:
    loaded: LoadedConfig
    model_factory: Callable[..., nn.Module]
    model_args: dict[str, Any]
    train: Source
    val: Source | None
    reader: Reader  # raw batch -> (model inputs, target)
    loss_fn: Callable  # the config's loss on the selected output (unused with loss: model)
    optimizer_cls: type
    scheduler_cls: type | None
    device: torch.device
    chance_loss: float | None  # loss of the best constant predictor (class prior entropy, var(y))
    n_classes: int | None
    data_factory: Callable | None = None
    target_stats: dict[str, float] = field(default_factory=dict)  # regression targets' scale (target_stats())
    size_checked: bool = False
    criterion: Criterion | None = None  # (model output as it comes, target) -> loss

    def __post_init__(self):
        if self.criterion is None:
            self.criterion = Criterion(self.loss_fn, self.cfg.loss, self.cfg.model.output)

    @property
    def cfg(self):
        return self.loaded.config

    @property
    def batch_size(self) -> int:
        return self.train.batch_size

    def batches(self, seed: int):
        """Training batches ``(inputs, target)`` without end, the same for the same seed."""
        for raw in self.train.train_batches(seed):
            yield self.reader(raw)

    def eval_batches(self, split: str = "train") -> list[tuple[Inputs, Any]]:
        """The fixed evaluation chunks of a split (at most EVAL_CAP items)."""
        source = self.train if split == "train" else self.val
        return [self.reader(raw) for raw in source.sample()] if source is not None else []

    def first(self, k: int) -> tuple[Inputs, Any]:
        """One batch of the first ``k`` items of the training split's evaluation sample."""
        return self.reader(self.train.first(k))

    def build_model(self, seed: int) -> nn.Module:
        if not self.size_checked:
            check_model_fits(self.model_factory, self.model_args, self.device)
            self.size_checked = True
        torch.manual_seed(seed)
        what = f"model factory {self.cfg.model.factory}"
        with stage(f"building the model on {self.device}", "a smaller model (model.args)" + _cpu_hint(self.device)):
            model = call_factory(self.model_factory, self.model_args, what, "model.args", self.loaded)
            if not isinstance(model, nn.Module):
                raise ProbeError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
            if self.cfg.probe.reinit is not None:
                _reinit(model, self.cfg.probe.reinit, what)
            return model.to(self.device)


def _reinit(model: nn.Module, scheme: str, what: str) -> None:
    """``probe.reinit``: the factory's model re-initialised (``probes/reinit.py``)."""
    from optdoctor.probes.reinit import reinit

    if reinit(model, scheme) == 0:
        raise ProbeError(f"probe.reinit: {scheme}: {what} built a model with no Linear, convolution, recurrent or "
                         "normalisation layer to re-initialise", hint="a config without probe.reinit (initialise this model in its factory)")


def check_model_fits(factory: Callable, args: dict, device: torch.device) -> None:
    """A built-in model is first built on the meta device (no memory, ~10 ms) to learn its size:
    one whose weights and gradients cannot fit in the memory available fails now (exit 3),
    instead of initialising gigabytes of first layers for a minute before the next layer fails,
    or being killed by the kernel's OOM killer. User factories may load weights or check
    devices, so they are left to fail on their own (``stage`` catches that)."""
    if not getattr(factory, "__module__", "").startswith("optdoctor."):
        return
    try:
        with torch.device("meta"):
            model = factory(**args)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
    except RuntimeError as err:
        if exhaustion(err) is None:
            return
        size = None  # "Storage size calculation overflowed": more bytes than a 64-bit count holds
    except Exception:  # a bad argument: the real call reports it, located in the config
        return
    free = _available_memory(device)
    need = 2 * size if size is not None else None  # weights and their gradients: the least one step holds
    if free is not None and (need is None or need > free):
        hint = "a smaller model (model.args)" + _cpu_hint(device)
        needs = f"need {_gib(need)}" if need is not None else "need more bytes than a 64-bit count holds"
        raise ProbeError(f"building the model on {device}: its weights and gradients {needs}, "
                         f"{_gib(free)} of memory is available", hint=hint, exhausted="ran out of memory")


def _available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now, or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:  # MemAvailable counts reclaimable caches, unlike MemFree
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n / 2**50:,.0f} PiB"  # 2^63 bytes is 8192 PiB


def _cpu_hint(device: torch.device) -> str:
    return ", or probe.device: cpu (more memory, and CUDA reports errors late)" if device.type == "cuda" else ""


def call_factory(fn: Callable, args: dict, what: str, key: str, loaded: LoadedConfig) -> Any:
    """A factory called with the config's args. optdoctor's own factories reject a bad argument
    value with ValueError: that is a config error (exit 2, located at ``key``), not a crash of
    the user's code (exit 3), which is what any exception of a user factory is."""
    if getattr(fn, "__module__", "").startswith("optdoctor."):
        try:
            return fn(**args)
        except ValueError as e:
            raise ConfigError([problem_at(loaded, key, str(e))]) from None
    return call_user(functools.partial(fn, **args), what=what)  # partial: an argument may be called "what"


def _fill_shapes(factory: Callable, args: dict, X: torch.Tensor | None, n_out: int | None) -> dict:
    """Built-in model factories take their input/output sizes from the data when the config
    leaves them out, so a config names a model without repeating the data's shape. ``X``: the
    first input of the data (all of it for tensors, else the evaluation sample)."""
    if not getattr(factory, "__module__", "").startswith("optdoctor.") or X is None:
        return args
    params = inspect.signature(factory).parameters
    filled = dict(args)
    guesses = {
        "in_dim": X.shape[-1] if X.dim() >= 2 else 1,
        "in_channels": X.shape[1] if X.dim() == 4 else None,
        "image_size": X.shape[-1] if X.dim() == 4 else None,
        "vocab_size": int(X.max().item()) + 1 if not X.is_floating_point() else None,
        "max_len": X.shape[1] if not X.is_floating_point() and X.dim() == 2 else None,
        "out_dim": n_out,
    }
    for k, v in guesses.items():
        if k in params and k not in filled and v is not None:
            filled[k] = v
    return filled


def _targets_info(y: Any, loss: str) -> tuple[int | None, int | None, float | None]:
    """(output size, number of classes, chance loss) from training targets (all of them for
    tensors, else the evaluation sample: at most EVAL_CAP items). With ``loss: model`` integer
    targets are taken for classes (the model's own loss being a cross-entropy), ignoring
    negative ids (-100: Hugging Face's "not a target")."""
    if not isinstance(y, torch.Tensor) or y.dim() == 0:
        return None, None, None
    if loss in ("cross_entropy", "nll", "model") and not y.is_floating_point():
        yy = y.reshape(-1).long()
        yy = yy[yy >= 0]
        if not len(yy):
            return None, None, None
        k = int(yy.max().item()) + 1
        p = torch.bincount(yy, minlength=k).double()
        p = p[p > 0] / p.sum()
        return k, k, float(-(p * p.log()).sum())
    if loss == "mse":
        yy = y.double().reshape(len(y), -1)
        return yy.shape[1], None, float(yy.var(dim=0, unbiased=False).mean())
    if loss == "bce_with_logits":
        yy = y.double().reshape(len(y), -1)
        p = yy.mean(dim=0).clamp(1e-12, 1 - 1e-12)
        return yy.shape[1], None, float((-(p * p.log() + (1 - p) * (1 - p).log())).mean())
    out = y.shape[1] if y.dim() > 1 and loss != "model" else None
    return out, None, None


# Losses whose targets are classes or probabilities: their targets have no scale to speak of.
CLASS_LOSSES = ("cross_entropy", "nll", "bce_with_logits", "model")


def target_stats(y: Any, loss: str) -> dict[str, float]:
    """The scale of regression targets, as the loss sees them (standardised when
    probe.standardize_targets is on), from the same targets as the chance loss:
    ``target_scale``, the largest root mean square of an output (offset included: a network's
    outputs start near unit scale, so this is how far the loss's units are from the model's);
    ``target_mean_over_std``, the largest |mean| / std of an output. Empty for class targets
    and anything that is not a floating tensor with at least two items."""
    if loss in CLASS_LOSSES or not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() == 0 or len(y) < 2:
        return {}
    yy = y.detach().double()
    yy = yy.reshape(len(yy), -1) if yy.dim() <= 2 else yy.reshape(-1, yy.shape[-1])
    ok = torch.isfinite(yy).all(dim=1)
    yy = yy[ok]
    if len(yy) < 2:
        return {}
    rms = yy.square().mean(dim=0).sqrt()
    mean, std = yy.mean(dim=0), yy.std(dim=0)
    out = {"target_scale": float(rms.max())}
    live = std > 0
    if live.any():
        out["target_mean_over_std"] = float((mean[live].abs() / std[live]).max())
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"probe.device is {name!r} but CUDA is not available on this machine")
    return dev


def prepare(loaded: LoadedConfig, data_from: Setup | None = None) -> Setup:
    """Resolve the config and load the data; ``data_from`` reuses another setup's data instead of
    calling the data factory again (it may be the expensive part of a user's setup)."""
    cfg = loaded.config
    if cfg.probe.threads is not None:
        torch.set_num_threads(cfg.probe.threads)
    device = pick_device(cfg.probe.device)
    validate_resolvable(loaded)  # every config problem at once (exit 2) before any user code runs
    model_factory = resolve_callable(cfg.model.factory, loaded.base_dir, "model.factory", loaded)
    data_factory = resolve_callable(cfg.data.factory, loaded.base_dir, "data.factory", loaded)
    loss_fn = resolve_loss(cfg.loss, loaded)
    optimizer_cls = resolve_optimizer(cfg.optimizer, loaded)
    scheduler_cls = resolve_scheduler(cfg.schedule, loaded) if cfg.schedule else None

    if data_from is not None:
        train, val, reader = data_from.train, data_from.val, data_from.reader
    else:
        with stage(f"loading the data on {device}", "less data (data.args)" + _cpu_hint(device)):
            train, val, reader = _load_data(data_factory, loaded, device)
    X, y = _shape_sample(train, reader)
    n_out, n_classes, chance = _targets_info(y, cfg.loss)
    model_args = _fill_shapes(model_factory, cfg.model.args, X, n_out)
    return Setup(loaded, model_factory, model_args, train, val, reader, loss_fn, optimizer_cls, scheduler_cls,
                 device, chance, n_classes, data_factory, target_stats=target_stats(y, cfg.loss))


def _shape_sample(train: Source, reader: Reader) -> tuple[torch.Tensor | None, Any]:
    """The first input and the targets: all of them for tensors, else the evaluation sample's."""
    raw = train.everything()
    if raw is not None:
        inputs, y = reader(raw)
    else:
        parts = [reader(r) for r in train.sample()]
        inputs = parts[0][0]
        ys = [t for _, t in parts]
        y = ys[0]
        if all(isinstance(t, torch.Tensor) for t in ys) and len(ys) > 1:
            try:
                y = torch.cat(ys)
            except RuntimeError:  # chunks padded to different lengths
                y = ys[0]
    ts = inputs.tensors()
    return (ts[0] if ts else None), y


def _config_error(loaded: LoadedConfig):
    def make(key: str, message: str, suggestion: str | None = None) -> ConfigError:
        return ConfigError([problem_at(loaded, key, message, suggestion)])

    return make


def _load_data(data_factory: Callable, loaded: LoadedConfig, device: torch.device) -> tuple[Source, Source | None, Reader]:
    cfg = loaded.config
    torch.manual_seed(cfg.seed)
    what = f"data factory {cfg.data.factory}"
    data = call_factory(data_factory, cfg.data.args, what, "data.args", loaded)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ProbeError(f"{what} must return (train, val); got {type(data).__name__}")
    train = make_source(data[0], what + " (train)", cfg.data.batch_size, device)
    if isinstance(data[0], torch.utils.data.DataLoader) and cfg.data.batch_size is not None:
        raise ConfigError([problem_at(loaded, "data.batch_size", "the data factory returns DataLoaders, which keep "
                                      f"their own batch size ({train.batch_size}); remove data.batch_size")])
    val = make_source(data[1], what + " (val)", cfg.data.batch_size or train.batch_size, device) if data[1] is not None else None
    if train.n == 0 or not batch_len(train.sample()[0]):
        raise ProbeError(f"{what} returned an empty training set")
    reader = Reader(cfg.data.inputs, cfg.data.target, pass_target=cfg.loss == "model", config_error=_config_error(loaded))
    reader(train.sample()[0])  # names that do not fit the items: a config error before any probe
    if cfg.probe.whiten_inputs:
        if not reader.fit_whiten(train.sample()):
            raise ConfigError([problem_at(loaded, "probe.whiten_inputs", "cannot whiten these inputs: it takes one floating "
                                          f"input of at most {WHITEN_MAX_DIM} features (non-batch dimensions "
                                          "flattened) and at least twice as many training items",
                                          "remove probe.whiten_inputs (probe.standardize_inputs scales each "
                                          "floating feature on its own)")])
    elif cfg.probe.standardize_inputs:
        reader.fit_standardize(train.sample())
    if cfg.probe.standardize_targets and cfg.loss not in CLASS_LOSSES:
        reader.fit_standardize_targets(train.sample())
    return train, val, reader


def fraction_steps(fracs: list[float], steps: int) -> list[int]:
    return sorted({min(steps, max(0, int(math.floor(f * steps + 0.5)))) for f in fracs})


def derive(setup: Setup, patched: LoadedConfig, patch: dict) -> Setup:
    """The setup of a patched config, reusing the data when the patch leaves it alone."""
    touches_data = any(k.startswith("data") or k in ("probe.standardize_inputs", "probe.whiten_inputs", "probe.standardize_targets",
                                                            "loss")
                       for k in patch)
    return prepare(patched, data_from=None if touches_data else setup)
