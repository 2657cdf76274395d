"""Built-in synthetic data sets, so a probe config needs no Python: ``optdoctor.data:blobs``.

Every factory takes keyword arguments only and returns ``(train, val)``, each a tuple
``(X, y)`` of tensors: ``X`` is float32 (int64 tokens for ``sequence``); classification
``y`` is int64 class labels of shape (N,); regression ``y`` is float32 of shape (N, out),
never (N,), so that ``mse`` against a model output of shape (N, 1) does not broadcast to
(N, N).

Everything is generated on the fly (no downloads) from local ``torch.Generator``s, never the
global RNG, so the same ``seed`` gives the same tensors. Each data set draws from three
streams split off ``seed``: the task (cluster centres, teacher weights, w*), the train
samples and the val samples. The val set therefore stays the same when ``n_train`` changes
(and the train set when ``n_val`` does), which keeps overfitting studies comparable.

Knobs that build a failure on purpose:

- ``feature_scales`` (blobs, teacher, linear_regression): multiplies feature j by s_j,
  log-spaced from 1 to the given value: wildly different feature scales, the classic
  ill-conditioned input (LeCun et al. 1998, "Efficient BackProp").
- ``condition`` (linear_regression): X^T X / n of the train set has exactly that condition
  number: the textbook ill-conditioned quadratic.
- ``label_noise`` (blobs) and ``memorize``: labels a network can only memorize.
- ``sequence(task="parity")``: hard for transformers (Hahn 2020): they memorize instead.

The argument checks at the top (``check_choice`` and friends) are shared with
``optdoctor.models``; they live here because this module must import without the models.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch

Tensor = torch.Tensor
Split = tuple[Tensor, Tensor]

# ---------------------------------------------------------------- argument checks (shared)


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` lower-cased if it is one of ``choices``; else a ValueError naming them all."""
    choices = list(choices)
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """An integer (numpy's too, e.g. a size read off an array; not a bool) as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_float(
    name: str, value: object, minimum: float | None = None, maximum: float | None = None, *, positive: bool = False
) -> float:
    """A finite number (YAML's ``1`` counts); ``positive`` means strictly > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")
    return value


def _check_sizes(n_train: object, n_val: object) -> None:
    check_int("n_train", n_train, 1)
    check_int("n_val", n_val, 1)


# ---------------------------------------------------------------- shared generation helpers


def _generators(seed: object) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """(task, train, val) generators split off one seed (see the module docstring)."""
    root = torch.Generator().manual_seed(check_int("seed", seed, 0))
    train_seed, val_seed = torch.randint(0, 2**62, (2,), generator=root).tolist()
    return root, torch.Generator().manual_seed(train_seed), torch.Generator().manual_seed(val_seed)


def _randn(*shape: int, generator: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float32)


def _feature_scales(value: object, n_features: int) -> Tensor | None:
    """None, a number s (scales log-spaced from 1 to s), or one positive scale per feature."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        top = check_float("feature_scales", value, positive=True)
        return torch.logspace(0.0, math.log10(top), n_features, dtype=torch.float32)
    if isinstance(value, Sequence) and not isinstance(value, str):
        scales = [check_float(f"feature_scales[{i}]", s, positive=True) for i, s in enumerate(value)]
        if len(scales) != n_features:
            raise ValueError(f"feature_scales must have one entry per feature ({n_features}); got {len(scales)}")
        return torch.tensor(scales, dtype=torch.float32)
    raise ValueError(f"feature_scales must be a positive number or a list of {n_features} numbers; got {value!r}")


def _scaled(train: Split, val: Split, scales: Tensor | None) -> tuple[Split, Split]:
    """Multiply every feature by its scale, in train and val alike (targets untouched)."""
    if scales is None:
        return train, val
    return (train[0] * scales, train[1]), (val[0] * scales, val[1])


def _split(sample: Callable[[int, torch.Generator], Split], n_train: int, n_val: int, gens) -> tuple[Split, Split]:
    _, g_train, g_val = gens
    return sample(n_train, g_train), sample(n_val, g_val)


def _flip_labels(y: Tensor, fraction: float, n_classes: int, generator: torch.Generator) -> Tensor:
    """Move exactly round(fraction * N) labels to a different class, chosen uniformly."""
    n_flip = round(fraction * len(y))
    idx = torch.randperm(len(y), generator=generator)[:n_flip]
    shift = torch.randint(1, n_classes, (n_flip,), generator=generator)  # never 0: always a new class
    y = y.clone()
    y[idx] = (y[idx] + shift) % n_classes
    return y


# ---------------------------------------------------------------- classification


def blobs(
    *,
    n_train: int = 512,
    n_val: int = 256,
    n_features: int = 20,
    n_classes: int = 4,
    spread: float = 1.0,
    seed: int = 0,
    feature_scales: float | list[float] | None = None,
    label_noise: float = 0.0,
) -> tuple[Split, Split]:
    """Gaussian clusters: centres ~ N(0, I), points ~ N(centre, spread^2 I).

    With the defaults the classes are linearly separable (centres ~6 apart in 20-D, spread
    1; measured: a linear model reaches 100% train and val accuracy): the healthy baseline. ``label_noise`` moves that fraction of the *train*
    labels to another class (val stays clean), so a net that fits them overfits.
    """
    _check_sizes(n_train, n_val)
    check_int("n_features", n_features, 1)
    check_int("n_classes", n_classes, 2)
    check_float("spread", spread, 0.0)
    check_float("label_noise", label_noise, 0.0, 1.0)
    scales = _feature_scales(feature_scales, n_features)
    gens = _generators(seed)
    centres = _randn(n_classes, n_features, generator=gens[0])

    def sample(n: int, g: torch.Generator) -> Split:
        y = torch.randint(n_classes, (n,), generator=g)
        return centres[y] + spread * _randn(n, n_features, generator=g), y

    (x_tr, y_tr), val = _split(sample, n_train, n_val, gens)
    y_tr = _flip_labels(y_tr, label_noise, n_classes, gens[1])
    return _scaled((x_tr, y_tr), val, scales)


def spirals(
    *, n_train: int = 512, n_val: int = 256, n_classes: int = 2, noise: float = 0.1, turns: float = 1.5, seed: int = 0
) -> tuple[Split, Split]:
    """Interleaved 2-D spiral arms, one per class: no linear model separates them
    (measured with the defaults: 64% train, 53% val accuracy for a trained linear model)."""
    _check_sizes(n_train, n_val)
    check_int("n_classes", n_classes, 2)
    check_float("noise", noise, 0.0)
    check_float("turns", turns, positive=True)
    gens = _generators(seed)

    def sample(n: int, g: torch.Generator) -> Split:
        y = torch.randint(n_classes, (n,), generator=g)
        r = torch.rand(n, generator=g)  # radius 0..1 along the arm
        angle = 2 * math.pi * (turns * r + y / n_classes)  # arms rotated by 2*pi/K
        x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
        return x + noise * _randn(n, 2, generator=g), y

    return _split(sample, n_train, n_val, gens)


def moons(*, n_train: int = 512, n_val: int = 256, noise: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
    """Two interleaved half circles (as sklearn's make_moons, with random angles)."""
    _check_sizes(n_train, n_val)
    check_float("noise", noise, 0.0)
    gens = _generators(seed)

    def sample(n: int, g: torch.Generator) -> Split:
        y = torch.randint(2, (n,), generator=g)
        t = math.pi * torch.rand(n, generator=g)
        upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
        x = torch.where(y[:, None] == 0, upper, lower)
        return x + noise * _randn(n, 2, generator=g), y

    return _split(sample, n_train, n_val, gens)


def memorize(
    *, n_train: int = 64, n_val: int = 256, n_features: int = 20, n_classes: int = 4, seed: int = 0
) -> tuple[Split, Split]:
    """X ~ N(0, I) with labels drawn independently of X: nothing to learn, only to memorize.

    A big enough net reaches zero train loss (Zhang et al. 2017, "Understanding deep
    learning requires rethinking generalization") while val stays at chance, log(K).
    """
    _check_sizes(n_train, n_val)
    check_int("n_features", n_features, 1)
    check_int("n_classes", n_classes, 2)
    gens = _generators(seed)

    def sample(n: int, g: torch.Generator) -> Split:
        return _randn(n, n_features, generator=g), torch.randint(n_classes, (n,), generator=g)

    return _split(sample, n_train, n_val, gens)


# ---------------------------------------------------------------- regression (and teacher)

TEACHER_TASKS = ("regression", "classification")


def teacher(
    *,
    n_train: int = 512,
    n_val: int = 256,
    n_features: int = 20,
    out_dim: int = 1,
    hidden: int = 32,
    noise: float = 0.0,
    task: str = "regression",
    seed: int = 0,
    feature_scales: float | list[float] | None = None,
) -> tuple[Split, Split]:
    """Targets from a random one-hidden-layer tanh teacher, f(x) = W2 tanh(W1 x / sqrt(d)).

    ``regression``: y = f(x) standardized to unit std, plus N(0, noise^2), shape (N, out_dim).
    ``classification``: y = argmax(f(x) + noise), out_dim >= 2 classes.
    ``feature_scales`` rescales X after the targets are made: same function, worse inputs.
    """
    _check_sizes(n_train, n_val)
    check_int("n_features", n_features, 1)
    check_int("hidden", hidden, 1)
    check_float("noise", noise, 0.0)
    task = check_choice("task", task, TEACHER_TASKS)
    check_int("out_dim", out_dim, 2 if task == "classification" else 1)
    scales = _feature_scales(feature_scales, n_features)
    gens = _generators(seed)
    w1 = _randn(n_features, hidden, generator=gens[0]) / math.sqrt(n_features)  # pre-activations ~ N(0, 1)
    w2 = _randn(hidden, out_dim, generator=gens[0])
    # Standardize with the teacher's own statistics on a fixed reference sample, so train
    # and val share one transform and neither depends on n_train or n_val.
    ref = torch.tanh(_randn(4096, n_features, generator=gens[0]) @ w1) @ w2
    mean, std = ref.mean(0), ref.std(0)

    def sample(n: int, g: torch.Generator) -> Split:
        x = _randn(n, n_features, generator=g)
        f = (torch.tanh(x @ w1) @ w2 - mean) / std + noise * _randn(n, out_dim, generator=g)
        return x, (f.argmax(dim=1) if task == "classification" else f)

    train, val = _split(sample, n_train, n_val, gens)
    return _scaled(train, val, scales)


def linear_regression(
    *,
    n_train: int = 512,
    n_val: int = 256,
    n_features: int = 20,
    noise: float = 0.0,
    feature_scales: float | list[float] | None = None,
    condition: float | None = None,
    seed: int = 0,
) -> tuple[Split, Split]:
    """y = X w* + N(0, noise^2), y of shape (N, 1), w* ~ N(0, I / d) so that y has ~unit std.

    ``condition=k``: the train set's X^T X / n has eigenvalues log-spaced from 1 down to 1/k
    in a random basis, *exactly* (the train inputs are whitened before they are shaped).
    With MSE the loss is then a quadratic whose Hessian 2 X^T X / n has condition number k:
    gradient descent at lr = 1/lambda_max shrinks the flattest direction by (1 - 1/k) a
    step, so it needs ~k steps per e-fold there. The largest eigenvalue
    stays 1 whatever k, so the stable learning-rate range does not move; only the flat
    directions get flatter. Unlike ``feature_scales`` the ill-conditioning is not
    axis-aligned, so per-feature standardization does not cure it. (With ``condition`` the
    val inputs go through the train set's whitening map, so they change with ``n_train``.)
    """
    _check_sizes(n_train, n_val)
    check_int("n_features", n_features, 1)
    check_float("noise", noise, 0.0)
    if condition is not None:
        check_float("condition", condition, 1.0)
    scales = _feature_scales(feature_scales, n_features)
    task, g_train, g_val = _generators(seed)
    w_star = _randn(n_features, 1, generator=task) / math.sqrt(n_features)
    z_tr, z_val = _randn(n_train, n_features, generator=g_train), _randn(n_val, n_features, generator=g_val)
    if condition is not None:
        if n_train < n_features:
            raise ValueError(f"condition needs n_train >= n_features ({n_features}); got n_train={n_train}")
        # Whiten so that z_tr^T z_tr / n = I exactly; val gets the same map (≈ white too).
        chol = torch.linalg.cholesky(z_tr.T @ z_tr / n_train)
        white = torch.linalg.inv(chol).T
        q, _ = torch.linalg.qr(_randn(n_features, n_features, generator=task))  # random rotation
        eig = torch.logspace(0.0, -math.log10(condition), n_features, dtype=torch.float32)
        shape = white @ torch.diag(eig.sqrt()) @ q.T  # X^T X / n = Q diag(eig) Q^T
        z_tr, z_val = z_tr @ shape, z_val @ shape

    def targets(x: Tensor, g: torch.Generator) -> Tensor:
        return x @ w_star + noise * _randn(len(x), 1, generator=g)

    train, val = (z_tr, targets(z_tr, g_train)), (z_val, targets(z_val, g_val))
    return _scaled(train, val, scales)


# ---------------------------------------------------------------- sequences and images

SEQUENCE_TASKS = ("parity", "majority", "copy_first")


def sequence(
    *, n_train: int = 512, n_val: int = 256, vocab_size: int = 16, seq_len: int = 16, task: str = "parity", seed: int = 0
) -> tuple[Split, Split]:
    """Uniform random tokens X (N, seq_len) int64, for ``optdoctor.models:transformer``.

    - ``parity``: y = (sum of tokens) mod 2, i.e. the parity of the odd tokens; 2 classes.
      Every token matters, which attention finds hard (Hahn 2020). Measured with the default
      transformer (Adam 1e-3, batch 64): train loss 0.002 after 600 steps, val accuracy 0.54:
      it memorizes the 512 train sequences and never finds the rule.
    - ``majority``: y = the most frequent token (ties: the smallest id); vocab_size classes.
    - ``copy_first``: y = the first token; vocab_size classes. One attention hop: easy.
    """
    _check_sizes(n_train, n_val)
    check_int("vocab_size", vocab_size, 2)
    check_int("seq_len", seq_len, 1)
    task = check_choice("task", task, SEQUENCE_TASKS)
    gens = _generators(seed)

    def sample(n: int, g: torch.Generator) -> Split:
        x = torch.randint(vocab_size, (n, seq_len), generator=g)
        if task == "parity":
            y = x.sum(dim=1) % 2
        elif task == "majority":
            counts = torch.nn.functional.one_hot(x, vocab_size).sum(dim=1)  # (N, vocab)
            y = counts.argmax(dim=1)  # argmax returns the first maximum: the smallest id
        else:
            y = x[:, 0].clone()
        return x, y

    return _split(sample, n_train, n_val, gens)


def bars(
    *, n_train: int = 512, n_val: int = 256, image_size: int = 8, n_classes: int = 4, noise: float = 0.5, seed: int = 0
) -> tuple[Split, Split]:
    """Tiny images (N, 1, S, S) for ``optdoctor.models:cnn``: one bright line on noise.

    Class = the line's orientation: 0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal,
    at a random offset; pixel noise N(0, noise^2). Translation makes it a job for convolutions.
    """
    _check_sizes(n_train, n_val)
    size = check_int("image_size", image_size, 4)
    check_int("n_classes", n_classes, 2)
    if n_classes > 4:
        raise ValueError(f"n_classes must be <= 4 (horizontal, vertical, diagonal, anti-diagonal); got {n_classes}")
    check_float("noise", noise, 0.0)
    gens = _generators(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def sample(n: int, g: torch.Generator) -> Split:
        y = torch.randint(n_classes, (n,), generator=g)
        off = torch.randint(size, (n,), generator=g)[:, None, None]  # which row / column / diagonal
        r, c = rows[None], cols[None]
        shapes = torch.stack(  # (4, N, S, S): every class's line at every sample's offset
            [r == off, c == off, (c - r) % size == off, (c + r) % size == off]
        )
        line = shapes[y, torch.arange(n)].float()
        return (line + noise * _randn(n, size, size, generator=g))[:, None], y

    return _split(sample, n_train, n_val, gens)


DATASETS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "blobs": blobs,
    "spirals": spirals,
    "moons": moons,
    "memorize": memorize,
    "teacher": teacher,
    "linear_regression": linear_regression,
    "sequence": sequence,
    "bars": bars,
}
