"""Data as users have it -> the batches a probe trains on; model outputs as they come -> the loss.

A data factory returns ``(train, val)``, each tensors ``(X, y)``, a map-style ``Dataset``, an
``IterableDataset`` or a ``DataLoader`` (CONTRACT.md section 1). Each becomes a ``Source``:

    source.train_batches(seed)  endless training batches, a fixed order per seed
    source.sample()             fixed evaluation chunks: at most EVAL_CAP items, read once
    source.first(k)             one batch of the sample's first k items (Hessian, discovery)

Only what the probes use is read: a map-style Dataset is indexed item by item (a 10-million-item
Dataset starts probing in the time of its first batches); a DataLoader is iterated as it is
(its batch size, collate and sampler); an IterableDataset is iterated and batched.

A raw batch (what ``default_collate`` or the user's loader makes of the items: a tuple
``(inputs..., target)``, a dict, a namedtuple) becomes ``(Inputs, target)`` through a
``Reader`` (``data.inputs`` / ``data.target``), and ``call_model`` calls the model on
``Inputs``: a dict's key that names a parameter of ``forward`` goes by that name, the other
inputs positionally. ``Criterion`` turns what the model returned (a tensor, a tuple, a dict, a
``ModelOutput``) into the loss: ``model.output`` picks what the loss takes, ``loss: model``
uses the loss the model computed itself (the target passed as the keyword it expects).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from optdoctor.config.factories import call_user
from optdoctor.errors import ProbeError

EVAL_CAP = 1024  # items in the fixed evaluation sample (train/val loss at checkpoints, statistics)
WHITEN_MAX_DIM = 512  # probe.whiten_inputs: at most this many features (a D x D covariance from >= 2 D items)
# Above this many items, training indices are drawn i.i.d. per batch instead of from a
# permutation per epoch: torch.randperm of 10M indices takes ~2 s here (1M: 0.15 s).
PERMUTE_MAX = 1 << 20
# Items per evaluation forward pass for Datasets (bounded memory; tensors: one pass, as they are in memory)
EVAL_CHUNK = 256
EVAL_SEED = 0  # the evaluation sample is the same for every probe and seed of a diagnosis

# Defaults for dict / namedtuple items (the Hugging Face and torchvision shapes).
TARGET_KEYS = ("labels", "label", "targets", "target", "y")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values", "pixel_mask",
              "input_values", "inputs", "input", "x", "features", "image", "images")
# The keyword a model that computes its own loss takes the target as (loss: model).
TARGET_KWARGS = ("labels", "label", "targets", "target", "y")


# --------------------------------------------------------------------------- structures


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def batch_len(obj: Any) -> int | None:
    """Number of items in a collated batch: the first dimension of its first tensor."""
    if isinstance(obj, torch.Tensor):
        return len(obj) if obj.dim() else None
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        n = batch_len(v)
        if n is not None:
            return n
    return None


def _slice(obj: Any, k: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[:k] if obj.dim() else obj
    if isinstance(obj, Mapping):
        return {key: _slice(v, k) for key, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_slice(v, k) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_slice(v, k) for v in obj)
    return obj


class _OwnRNG:
    """A private torch/python/numpy RNG state that the user's data code runs under: the same seed
    gives the same batches, and the probe's global RNG (init, dropout) is not touched by it."""

    def __init__(self, seed: int):
        self.seed = seed
        self.states: tuple | None = None

    @staticmethod
    def _get():
        np = _numpy()
        return torch.get_rng_state(), random.getstate(), np.random.get_state() if np else None

    @staticmethod
    def _set(states):
        np = _numpy()
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        if np and states[2] is not None:
            np.random.set_state(states[2])

    @contextmanager
    def active(self):
        saved = self._get()
        try:
            if self.states is None:
                torch.manual_seed(self.seed)
                random.seed(self.seed)
                np = _numpy()
                if np:
                    np.random.seed(self.seed % 2**32)
            else:
                self._set(self.states)
            yield
        finally:
            self.states = self._get()
            self._set(saved)


def _numpy():
    import sys

    return sys.modules.get("numpy")


# --------------------------------------------------------------------------- sources


def index_stream(n: int, bs: int, seed: int) -> Iterator[torch.Tensor]:
    """Training indices without end: a seeded permutation per epoch, the last incomplete batch of
    an epoch dropped (every step sees ``bs`` items); above PERMUTE_MAX items, i.i.d. draws."""
    gen = torch.Generator().manual_seed(seed)
    if n > PERMUTE_MAX:
        while True:
            yield torch.randint(n, (bs,), generator=gen)
    perm, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos:pos + bs]
        pos += bs


def eval_indices(n: int) -> torch.Tensor:
    """The evaluation sample: every item when there are at most EVAL_CAP, else EVAL_CAP items
    drawn once without replacement (sorted), so that a dataset sorted by class is still sampled
    across its classes. O(EVAL_CAP) whatever ``n``."""
    if n <= EVAL_CAP:
        return torch.arange(n)
    return torch.tensor(sorted(random.Random(EVAL_SEED).sample(range(n), EVAL_CAP)))


class Source:
    """One split of the data. ``n``: its number of items (None when unknown: an iterable);
    ``batch_size``: of its training batches."""

    n: int | None
    batch_size: int
    kind: str

    def train_batches(self, seed: int) -> Iterator[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def first(self, k: int) -> Any:
        b = self.sample()[0]
        return _slice(b, k) if (batch_len(b) or 0) > k else b

    def everything(self) -> Any | None:
        """All items as one batch when that costs nothing (tensors), else None."""
        return None


class TensorSource(Source):
    """``(X, y)`` tensors (X may be a tuple of tensors): indexed directly, on the probe's device."""

    kind = "tensors"

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, device: torch.device):
        self.tensors = tensors
        self.n = len(tensors[-1])
        self.batch_size = min(batch_size, self.n)
        self.on_cpu = device.type == "cpu"
        self.device = device
        self._sample: list | None = None

    def take(self, idx) -> tuple:
        if not self.on_cpu and isinstance(idx, torch.Tensor):
            idx = idx.to(self.device)
        return tuple(t[idx] for t in self.tensors)

    def train_batches(self, seed: int) -> Iterator[tuple]:
        for idx in index_stream(self.n, self.batch_size, seed):
            yield self.take(idx)

    def sample(self) -> list[tuple]:
        if self._sample is None:
            idx = eval_indices(self.n)
            self._sample = [self.take(slice(0, self.n)) if len(idx) == self.n else self.take(idx)]
        return self._sample

    def first(self, k: int) -> tuple:
        if self.n <= EVAL_CAP:
            return self.take(slice(0, min(k, self.n)))
        return self.take(eval_indices(self.n)[:k])

    def everything(self) -> tuple:
        return self.tensors


class MapSource(Source):
    """A map-style Dataset: items read by index and collated (``default_collate``) only for the
    batches used."""

    kind = "dataset"

    def __init__(self, dataset: Dataset, n: int, batch_size: int, device: torch.device, what: str):
        self.dataset, self.n, self.device, self.what = dataset, n, device, what
        self.batch_size = min(batch_size, n)
        self._sample: list | None = None
        self._first: dict[int, Any] = {}  # k -> the batch of the sample's first k items

    def collate(self, idx) -> Any:
        items = call_user(lambda: [self.dataset[int(i)] for i in idx], what=f"{self.what}: Dataset.__getitem__")
        try:
            batch = default_collate(items)
        except (TypeError, RuntimeError) as e:
            raise ProbeError(f"{self.what}: its items cannot be stacked into a batch ({e}); items of different "
                             "shapes (e.g. variable-length sequences) need a collate function: return DataLoaders "
                             "with your collate_fn") from e
        return to_device(batch, self.device)

    def train_batches(self, seed: int) -> Iterator[Any]:
        for idx in index_stream(self.n, self.batch_size, seed):
            yield self.collate(idx)

    def sample(self) -> list[Any]:
        if self._sample is None:
            idx = eval_indices(self.n)
            self._sample = [self.collate(idx[i:i + EVAL_CHUNK]) for i in range(0, len(idx), EVAL_CHUNK)]
        return self._sample

    def first(self, k: int) -> Any:
        if k not in self._first:
            self._first[k] = self.collate(eval_indices(self.n)[:k])
        return self._first[k]


class LoaderSource(Source):
    """A DataLoader, used as it is (batch size, collate, sampler, workers); the iterator is made
    again at each epoch, under a private RNG seeded by the probe's seed (same seed, same batches).
    An IterableDataset outside a DataLoader gets a plain one (``batch_size``, default collate)."""

    kind = "loader"

    def __init__(self, loader: DataLoader, device: torch.device, what: str, batch_size: int | None = None):
        self.loader, self.device, self.what = loader, device, what
        try:
            self.n = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            self.n = None
        self._sample: list | None = None
        self.batch_size = batch_size or loader.batch_size or batch_len(self.sample()[0]) or 1

    def _epochs(self, seed: int) -> Iterator[Any]:
        rng = _OwnRNG(seed)
        epoch = 0
        while True:
            with rng.active():
                it = call_user(iter, self.loader, what=f"{self.what}: iterating the DataLoader")
            got = False
            while True:
                with rng.active():
                    batch = call_user(next, it, None, what=f"{self.what}: iterating the DataLoader")
                if batch is None:
                    break
                got = True
                yield to_device(batch, self.device)
            if not got:
                raise ProbeError(f"{self.what} yielded no batch" + (f" in epoch {epoch + 1}" if epoch else ""))
            epoch += 1

    def train_batches(self, seed: int) -> Iterator[Any]:
        return self._epochs(seed)

    def sample(self) -> list[Any]:
        if self._sample is None:
            out, seen = [], 0
            it = self._epochs(EVAL_SEED)
            while seen < EVAL_CAP:
                b = next(it)
                n = batch_len(b) or 1
                out.append(b if seen + n <= EVAL_CAP else _slice(b, EVAL_CAP - seen))
                seen += n
                if self.n is not None and seen >= self.n:  # one epoch is all of it
                    break
            it.close()
            self._sample = out
        return self._sample


def make_source(obj: Any, what: str, batch_size: int | None, device: torch.device) -> Source:
    """What a data factory returned for one split -> a Source (ProbeError when it is none of the
    accepted kinds)."""
    bs = batch_size or DEFAULT_BATCH_SIZE
    if isinstance(obj, DataLoader):
        return LoaderSource(obj, device, what)
    if isinstance(obj, IterableDataset):
        return LoaderSource(DataLoader(obj, batch_size=bs), device, what, batch_size=bs)
    if isinstance(obj, (tuple, list)) and len(obj) >= 2 and all(isinstance(t, torch.Tensor) or isinstance(t, (tuple, list)) for t in obj):
        return TensorSource(_tensors(obj, what, device), bs, device)
    if isinstance(obj, Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, Mapping, tuple, list))):
        try:
            n = len(obj)  # type: ignore[arg-type]
        except TypeError as e:
            raise ProbeError(f"{what}: a map-style Dataset needs __len__ ({e}); an endless stream should be an IterableDataset") from e
        if n == 0:
            raise ProbeError(f"{what} is empty")
        return MapSource(obj, n, bs, device, what)
    raise ProbeError(f"{what} must return (train, val), each a Dataset, a DataLoader or a tuple (X, y) of tensors; "
                     f"got {type(obj).__name__}")


DEFAULT_BATCH_SIZE = 64


def _tensors(obj, what: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    X, y = (obj[0], obj[1]) if len(obj) == 2 else (tuple(obj[:-1]), obj[-1])
    if not isinstance(y, torch.Tensor):
        raise ProbeError(f"{what}: y must be a tensor, got {type(y).__name__}")
    xs = tuple(X) if isinstance(X, (tuple, list)) else (X,)
    for x in xs:
        if not isinstance(x, torch.Tensor):
            raise ProbeError(f"{what}: X must be a tensor (or a tuple of tensors), got {type(x).__name__}")
    n = len(xs[0])
    if n != len(y):
        raise ProbeError(f"{what}: X has {n} samples but y has {len(y)}")
    if any(len(x) != n for x in xs):
        raise ProbeError(f"{what}: the inputs have different numbers of samples: {[len(x) for x in xs]}")
    return tuple(x.to(device) for x in xs) + (y.to(device),)


# --------------------------------------------------------------------------- batches -> model


@dataclass
class Inputs:
    """What the model is called with: positional ``args``, keyword ``kwargs`` (a dict item's
    inputs by their keys), and ``target`` when the model takes the target itself (loss: model;
    ``target_key``: the item's name for it)."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    target: Any = None
    target_key: str | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in list(self.args) + list(self.kwargs.values()) if isinstance(t, torch.Tensor)]


@dataclass
class Call:
    """``Inputs`` bound to one model's ``forward``: ``model(*args, **kwargs)``."""

    args: tuple
    kwargs: dict


_SIGNATURES: dict[Any, tuple[frozenset, bool]] = {}


def _signature(model) -> tuple[frozenset, bool]:
    """(keyword parameter names of forward, whether it takes **kwargs), cached per class."""
    key = type(model)
    if key not in _SIGNATURES:
        try:
            params = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            _SIGNATURES[key] = (frozenset(), True)
        else:
            names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            _SIGNATURES[key] = (names, any(p.kind == p.VAR_KEYWORD for p in params))
    return _SIGNATURES[key]


def bind(model, inputs: Any) -> Any:
    """``Inputs`` -> ``Call`` for this model: a named input that is not a parameter of forward
    goes positionally (in order, after the positional ones); the target, for loss: model, goes
    as the keyword forward takes it by (its key in the item, else labels/label/targets/...)."""
    if not isinstance(inputs, Inputs):
        return inputs
    names, var_kw = _signature(model)
    args, kwargs = list(inputs.args), {}
    for k, v in inputs.kwargs.items():
        if k in names or (var_kw and len(inputs.kwargs) > 1):
            kwargs[k] = v
        else:
            args.append(v)
    if inputs.target is not None:
        options = ([inputs.target_key] if inputs.target_key else []) + list(TARGET_KWARGS)
        kw = next((o for o in options if o in names), None) or ("labels" if var_kw else None)
        if kw is None:
            raise ProbeError(f"loss: model needs the model to take the target as a keyword ({', '.join(TARGET_KWARGS)}); "
                             f"{type(model).__name__}.forward takes none of them")
        kwargs[kw] = inputs.target
    return Call(tuple(args), kwargs)


def call_model(model, inputs: Any) -> Any:
    """The model called on a batch's inputs (``Inputs``; a tuple is several positional inputs)."""
    if isinstance(inputs, (Inputs, Call)):
        c = bind(model, inputs)
        return model(*c.args, **c.kwargs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


class Reader:
    """A raw batch -> ``(Inputs, target)``, with ``data.inputs`` / ``data.target`` naming what is
    what, moved to the device and standardised (probe.standardize_inputs) on the way."""

    def __init__(self, inputs: Any = None, target: Any = None, pass_target: bool = False,
                 config_error: Callable[[str, str, str | None], Exception] | None = None):
        self.inputs = [inputs] if isinstance(inputs, (str, int)) else list(inputs) if inputs is not None else None
        self.target = target
        self.pass_target = pass_target
        self.config_error = config_error or (lambda key, msg, suggestion=None: ProbeError(f"{key}: {msg}"))
        self.scale: tuple[torch.Tensor, torch.Tensor] | None = None
        self.whitening: tuple[torch.Tensor, torch.Tensor] | None = None
        self.target_scale: tuple[torch.Tensor, torch.Tensor] | None = None

    def _err(self, key: str, msg: str, options=()) -> Exception:
        from optdoctor.config.loader import did_you_mean

        bad = self.inputs if key == "data.inputs" else self.target
        guess = did_you_mean(str(bad[0] if isinstance(bad, list) else bad), [str(o) for o in options]) if options else None
        return self.config_error(key, msg, guess)

    def __call__(self, raw: Any) -> tuple[Inputs, Any]:
        inputs, target, key = self._split(raw)
        if self.whitening is not None:
            inputs = self._apply(inputs, self._whiten)
        elif self.scale is not None:
            inputs = self._standardize(inputs)
        if self.target_scale is not None and isinstance(target, torch.Tensor) and target.is_floating_point():
            mean, std = self.target_scale
            target = (target - mean.to(target.device, target.dtype)) / std.to(target.device, target.dtype)
        if self.pass_target:
            return Inputs(inputs.args, inputs.kwargs, target, key), target
        return inputs, target

    def _split(self, raw: Any) -> tuple[Inputs, Any, str | None]:
        if isinstance(raw, tuple) and hasattr(raw, "_fields"):  # a namedtuple: by field names
            raw = raw._asdict()
        if isinstance(raw, Mapping):
            return self._split_mapping(raw)
        if isinstance(raw, (tuple, list)):
            return self._split_sequence(list(raw))
        if isinstance(raw, torch.Tensor):  # items are bare inputs: no target in the data
            if self.target is not None:
                raise self._err("data.target", f"the items are single tensors, there is no target {self.target!r} in them")
            return Inputs((raw,)), None, None
        raise ProbeError(f"a batch of the data is a {type(raw).__name__}; items must be tuples (inputs..., target), "
                         "dicts, namedtuples or tensors")

    def _split_sequence(self, raw: list) -> tuple[Inputs, Any, None]:
        n = len(raw)
        for key, vals in (("data.target", [self.target]), ("data.inputs", self.inputs or [])):
            for v in vals:
                if v is None:
                    continue
                if not isinstance(v, int) or isinstance(v, bool):
                    raise self._err(key, f"the items are tuples of {n}: name their elements by index (0..{n - 1}), not {v!r}")
                if not -n <= v < n:
                    raise self._err(key, f"index {v} is out of range: the items are tuples of {n}")
        if n == 1 and self.target is None:
            return Inputs((raw[0],)), None, None
        t = (self.target if self.target is not None else -1) % n
        ins = [i % n for i in self.inputs] if self.inputs is not None else [i for i in range(n) if i != t]
        return Inputs(tuple(raw[i] for i in ins)), raw[t], None

    def _split_mapping(self, raw: Mapping) -> tuple[Inputs, Any, str | None]:
        keys = list(raw)
        for key, vals in (("data.target", [self.target]), ("data.inputs", self.inputs or [])):
            for v in vals:
                if v is not None and v not in raw:
                    raise self._err(key, f"{v!r} is not a key of the items (keys: {', '.join(map(str, keys))})", keys)
        t = self.target if self.target is not None else next((k for k in TARGET_KEYS if k in raw), None)
        if t is None and not self.pass_target:
            raise self._err("data.target", f"which key of the items is the target? none of {', '.join(TARGET_KEYS)} "
                            f"is among the keys ({', '.join(map(str, keys))}): set data.target")
        if self.inputs is not None:
            ins = self.inputs
        else:
            ins = [k for k in INPUT_KEYS if k in raw and k != t] or \
                  [k for k in keys if k != t and isinstance(raw[k], torch.Tensor)]
        if not ins:
            raise self._err("data.inputs", f"no input among the item's keys ({', '.join(map(str, keys))}): set data.inputs")
        return Inputs((), {k: raw[k] for k in ins}), (raw[t] if t is not None else None), t

    # --- probe.standardize_inputs: one floating input, per feature (every element its own)
    def fit_standardize(self, raws: list[Any]) -> None:
        """Mean and std of every feature of the one floating input, from the evaluation sample.
        A feature is an element of the input's non-batch dimensions (each pixel of an image, each
        time step's feature of a sequence), the unit the input-scale statistics measure
        (``DataStats``) and whitening uses, so that the remedy undoes the spread the finding
        cites, whatever the layout. Statistics in float64; a feature that does not vary in the
        sample keeps its scale and is only centred (scikit-learn's ``StandardScaler`` does the
        same), so a border pixel that is 0 throughout the sample is not blown up when a later
        batch lights it."""
        xs = [self._only_float(self._split(r)[0]) for r in raws]
        if not xs or any(x is None for x in xs):
            return
        try:
            X = torch.cat([x.detach().double() for x in xs])
        except RuntimeError:
            return
        if len(X) < 2:
            return
        mean, std = X.mean(dim=0, keepdim=True), X.std(dim=0, keepdim=True)
        flat = std <= 1e-12 * mean.abs().clamp_min(1.0)  # constant in the sample (up to rounding)
        dtype = xs[0].dtype
        self.scale = (mean.to(dtype), torch.where(flat, torch.ones_like(std), std).to(dtype))

    # --- probe.whiten_inputs: one floating input, every feature jointly (ZCA)
    def fit_whiten(self, raws: list[Any]) -> bool:
        """ZCA whitening of the one floating input (its non-batch dimensions flattened into D
        features), from the evaluation sample: ``x -> (x - mean) W`` with ``W = Q diag(lam^-1/2)
        Q^T`` from the sample covariance's eigenpairs, so the features become uncorrelated with
        unit variance and keep their layout (an image stays an image). Directions with no
        variance (below 1e-10 of the largest) map to zero. False (nothing fitted) when there is
        no single floating input, when D > WHITEN_MAX_DIM, or when the sample has fewer than
        2 D items (its covariance would be too noisy to invert)."""
        xs = [self._only_float(self._split(r)[0]) for r in raws]
        if not xs or any(x is None for x in xs):
            return False
        try:
            X = torch.cat([x.detach().reshape(len(x), -1).double() for x in xs])
        except RuntimeError:
            return False
        n, d = X.shape
        if d < 2 or d > WHITEN_MAX_DIM or n < 2 * d:
            return False
        mean = X.mean(dim=0, keepdim=True)
        lam, Q = torch.linalg.eigh(torch.cov((X - mean).T))
        keep = lam > lam.max().clamp_min(0) * 1e-10
        if not keep.any():
            return False
        inv = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        self.whitening = (mean, (Q * inv) @ Q.T)
        return True

    def _whiten(self, x: torch.Tensor) -> torch.Tensor:
        mean, W = self.whitening
        flat = x.reshape(len(x), -1)
        out = (flat - mean.to(flat.device, flat.dtype)) @ W.to(flat.device, flat.dtype)
        return out.reshape(x.shape)

    @staticmethod
    def _apply(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
        if inputs.args:
            return Inputs((fn(inputs.args[0]),), {})
        (k, v), = inputs.kwargs.items()
        return Inputs((), {k: fn(v)})

    # --- probe.standardize_targets: floating (regression) targets, per output
    def fit_standardize_targets(self, raws: list[Any]) -> bool:
        """Mean and std per output of floating targets (over the batch dimension; over every
        dimension but the last for sequences of outputs), from the evaluation sample. False
        (nothing fitted) when the targets are not all floating tensors of one trailing shape:
        class ids and the like are left alone."""
        ys = [self._split(r)[1] for r in raws]
        if not ys or not all(isinstance(y, torch.Tensor) and y.is_floating_point() and y.dim() >= 1 for y in ys):
            return False
        try:
            Y = torch.cat([y.detach().double() for y in ys])
        except RuntimeError:
            return False
        if len(Y) < 2:
            return False
        dims = [0] if Y.dim() <= 2 else list(range(Y.dim() - 1))
        self.target_scale = (Y.mean(dim=dims, keepdim=True), Y.std(dim=dims, keepdim=True).clamp_min(1e-12))
        return True

    @staticmethod
    def _only_float(inputs: Inputs) -> torch.Tensor | None:
        ts = list(inputs.args) + list(inputs.kwargs.values())
        if len(ts) != 1 or not isinstance(ts[0], torch.Tensor) or not ts[0].is_floating_point():
            return None
        return ts[0]

    def _standardize(self, inputs: Inputs) -> Inputs:
        mean, std = self.scale
        return self._apply(inputs, lambda v: (v - mean) / std)


# --------------------------------------------------------------------------- output -> loss


def _pick(out: Any, key: Any) -> Any:
    if isinstance(key, int):
        if isinstance(out, (tuple, list)):
            return out[key]
        if isinstance(out, Mapping):  # ModelOutput is an OrderedDict: index = its n-th set value
            return list(out.values())[key]
        raise KeyError(key)
    if isinstance(out, Mapping):
        return out[key]
    if hasattr(out, key):
        return getattr(out, key)
    raise KeyError(key)


def _keys(out: Any) -> str:
    if isinstance(out, Mapping):
        return "keys " + ", ".join(map(str, out))
    if is_dataclass(out):
        return "fields " + ", ".join(f.name for f in fields(out))
    if isinstance(out, (tuple, list)):
        return f"{len(out)} elements"
    return type(out).__name__


def select_output(out: Any, key: Any = None) -> Any:
    """What the loss takes from a model's output: ``key`` (index or key) when given; else a
    tensor as is, ``logits`` of a dict/ModelOutput/dataclass when it has one, else element 0."""
    if key is not None:
        try:
            return _pick(out, key)
        except (KeyError, IndexError, AttributeError):
            raise ProbeError(f"model.output is {key!r} but the model's output has no such element ({_keys(out)})") from None
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0] if len(out) else out
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        return next(iter(out.values())) if len(out) else out
    if hasattr(out, "logits"):
        return out.logits
    if is_dataclass(out) and fields(out):
        return getattr(out, fields(out)[0].name)
    return out


def model_loss(out: Any) -> torch.Tensor:
    """The loss a model computed itself (loss: model): ``loss`` of a dict/ModelOutput, element 0
    of a tuple (the Hugging Face convention when labels are passed), or the output itself when it
    is a scalar."""
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    try:
        loss = out["loss"] if isinstance(out, Mapping) else out.loss if hasattr(out, "loss") else (
            out[0] if isinstance(out, (tuple, list)) else None)
    except (KeyError, IndexError):
        loss = None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ProbeError(f"loss: model, but the model returned no scalar loss (its output: {_keys(out)}); a model "
                         "computing its own loss returns it as 'loss' (dict/ModelOutput) or first (tuple)")
    return loss.reshape(())


class Criterion:
    """(model output as it comes, target) -> scalar loss: the config's loss on the selected
    output, or the model's own loss. Errors in a user's loss function are the user's."""

    def __init__(self, loss_fn: Callable, loss_name: str, output: Any = None):
        self.loss_fn, self.loss_name, self.output = loss_fn, loss_name, output
        self.own = loss_name == "model"

    def select(self, out: Any) -> Any:
        return select_output(out, self.output)

    def predictions(self, out: Any) -> Any:
        """What accuracy is measured on: the selected output; None for per-position outputs
        (N, L, C) of a model computing its own loss (a causal LM shifts its labels inside)."""
        picked = self.select(out)
        if self.own and isinstance(picked, torch.Tensor) and picked.dim() > 2:
            return None
        return picked

    def __call__(self, out: Any, y: Any) -> torch.Tensor:
        if self.own:
            return model_loss(out)
        picked = self.select(out)
        try:
            return call_user(self.loss_fn, picked, y, what=f"the loss ({self.loss_name})")
        except ProbeError as e:
            if isinstance(out, torch.Tensor):
                raise
            which = f"model.output {self.output!r}" if self.output is not None else "by default"
            shape = tuple(picked.shape) if isinstance(picked, torch.Tensor) else type(picked).__name__
            raise ProbeError(f"{e.message}\n(the model returned {_keys(out)}; the loss took {which} an element of shape {shape}: "
                             "set model.output to the element the loss takes)", detail=getattr(e, "detail", "")) from e
