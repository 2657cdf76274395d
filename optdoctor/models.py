"""Built-in models, so a probe config needs no Python: ``factory: optdoctor.models:mlp``.

Size convention (keeps configs short): every factory takes keyword arguments only, among
them its input size -- ``in_dim`` (mlp, resmlp, linear_net), ``in_channels`` (cnn) or
``vocab_size`` (transformer) -- and ``out_dim``. They default to ``None``: the probe runner
inspects the signature and fills in those a config leaves out from the data; called without
them a factory raises a ValueError that says so. A config can therefore be as short as::

    model: {factory: optdoctor.models:mlp, args: {depth: 8, act: sigmoid}}

Hookability: every layer is a plain ``nn.Linear`` / ``nn.Conv2d`` and every nonlinearity a
module of its own, a fresh instance per layer (``make_activation``; the types are the values
of ``ACTIVATIONS``), so forward/backward hooks on those types see each layer exactly once.
The gradient and activation instruments rely on it.

Seeding: the probe runner calls ``torch.manual_seed`` before a factory, so init draws from
the global RNG. ``seed=`` makes one factory's init reproducible on its own, without
touching the caller's RNG state (``torch.random.fork_rng``).

Every model is twice differentiable (double backward), as the curvature instrument's
Hessian-vector products need: attention is written out rather than calling the fused CPU
kernel.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from optdoctor.data import check_bool, check_choice, check_float, check_int

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # slope 0.01
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "linear": nn.Identity,
    "softplus": nn.Softplus,
}

INITS = (
    "default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform",
    "orthogonal", "normal", "zeros", "constant", "uniform",
)  # fmt: skip

# Gain of He et al. 2015 per activation, as nn.init names it. GELU, ELU and softplus are
# ReLU-like for large inputs and take ReLU's sqrt(2).
_KAIMING_NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid", "linear": "linear"}
_INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module, never shared, so that a hook on it sees one layer."""
    return ACTIVATIONS[check_choice("act", name, ACTIVATIONS)]()


def apply_init(
    module: nn.Module, init: str = "default", *, act: str = "relu", weight_scale: float = 1.0, bias_init: float = 0.0
) -> nn.Module:
    """Re-initialize every Linear/Conv layer inside ``module``; returns ``module``.

    - ``default``: PyTorch's own (``reset_parameters``: kaiming_uniform with a=sqrt(5), i.e.
      U(-1/sqrt(fan_in), 1/sqrt(fan_in))); ``kaiming_*`` (He et al. 2015) use ``act``'s gain;
      ``xavier_*`` (Glorot & Bengio 2010) and ``orthogonal`` (Saxe et al. 2014) use gain 1;
      ``uniform`` is U(-1, 1). All of these are then multiplied by ``weight_scale``.
    - ``normal``: N(0, weight_scale^2); ``constant``: every weight = weight_scale (symmetric
      init: all units of a layer stay identical); ``zeros``: all zero.
    - Biases are set to ``bias_init`` whatever ``init`` is.
    """
    init = check_choice("init", init, INITS)
    act = check_choice("act", act, ACTIVATIONS)
    scale = check_float("weight_scale", weight_scale)
    bias = check_float("bias_init", bias_init)
    for layer in module.modules():
        if isinstance(layer, _INIT_LAYERS):
            _init_weight(layer, init, act, scale)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias)
    return module


@torch.no_grad()
def _init_weight(layer: nn.Module, init: str, act: str, scale: float) -> None:
    w = layer.weight
    nonlinearity = _KAIMING_NONLINEARITY.get(act, "relu")
    slope = 0.01 if act == "leaky_relu" else 0.0
    if init == "normal":
        nn.init.normal_(w, std=scale)
        return
    if init == "constant":
        nn.init.constant_(w, scale)
        return
    if init == "zeros":
        nn.init.zeros_(w)
        return
    if init == "default":
        layer.reset_parameters()
    elif init == "kaiming_normal":
        nn.init.kaiming_normal_(w, a=slope, nonlinearity=nonlinearity)
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(w, a=slope, nonlinearity=nonlinearity)
    elif init == "xavier_normal":
        nn.init.xavier_normal_(w)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(w)
    elif init == "orthogonal":
        nn.init.orthogonal_(w)
    elif init == "uniform":
        nn.init.uniform_(w, -1.0, 1.0)
    w.mul_(scale)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Draw from ``torch.manual_seed(seed)`` inside, and leave the global RNG as it was."""
    if seed is None:
        yield
        return
    check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _size(name: str, value: object, what: str) -> int:
    if value is None:
        raise ValueError(
            f"{name} is required ({what}); the probe runner fills it in from the data when a config leaves it out"
        )
    return check_int(name, value, 1)


# ---------------------------------------------------------------- MLPs


def mlp(
    *,
    in_dim: int | None = None,
    out_dim: int | None = None,
    depth: int = 3,
    width: int = 64,
    act: str = "relu",
    init: str = "default",
    bias_init: float = 0.0,
    weight_scale: float = 1.0,
    batchnorm: bool = False,
    dropout: float = 0.0,
    seed: int | None = None,
) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units: [Linear, (BatchNorm1d), act, (Dropout)] x depth, Linear.

    ``init``/``weight_scale`` as in ``apply_init``. ``bias_init`` sets the hidden biases (a
    large negative one kills ReLUs from step 0); the output bias starts at 0 so that the
    initial loss is not shifted by it.
    """
    in_dim = _size("in_dim", in_dim, "number of input features")
    out_dim = _size("out_dim", out_dim, "number of outputs or classes")
    check_int("depth", depth, 0)
    check_int("width", width, 1)
    check_choice("act", act, ACTIVATIONS)
    check_bool("batchnorm", batchnorm)
    check_float("dropout", dropout, 0.0, 1.0)
    with _seeded(seed):
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(in_dim if i == 0 else width, width))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(make_activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width if depth else in_dim, out_dim))
        net = apply_init(nn.Sequential(*layers), init, act=act, weight_scale=weight_scale, bias_init=bias_init)
    nn.init.zeros_(net[-1].bias)
    return net


def linear_net(
    *,
    in_dim: int | None = None,
    out_dim: int | None = None,
    depth: int = 4,
    width: int = 16,
    scale: float = 1e-3,
    seed: int | None = None,
) -> nn.Sequential:
    """Deep *linear* network, no activations, no biases, weights ~ N(0, scale^2).

    The origin is a degenerate saddle (Saxe et al. 2014): the gradient of each layer is a
    product of the other ``depth`` weight matrices, so at small ``scale`` both gradient and
    Hessian are nearly zero and training sits on a plateau. ``depth`` hidden layers as in
    ``mlp``, so ``depth + 1`` weight matrices.

    Measured on ``linear_regression`` (full batch, SGD lr 0.1), first step with loss < 0.5:
    depth=2, scale=1e-2: step 162; depth=2, scale=1e-3: 1648; depth=4, scale=3e-2: 1379;
    the defaults (gradient norm 8e-10 at step 0): loss unchanged after 2000 steps. Adam
    (lr 1e-2, batch 64) rescales the tiny gradients and escapes the defaults within 200 steps.
    """
    in_dim = _size("in_dim", in_dim, "number of input features")
    out_dim = _size("out_dim", out_dim, "number of outputs or classes")
    check_int("depth", depth, 1)
    check_int("width", width, 1)
    scale = check_float("scale", scale, positive=True)
    sizes = [in_dim, *[width] * depth, out_dim]
    with _seeded(seed):
        net = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(sizes, sizes[1:])])
        apply_init(net, "normal", weight_scale=scale)
    return net


class _ResidualBlock(nn.Module):
    """x + W2 act(W1 LN(x)): the pre-norm residual block (He et al. 2016, "Identity mappings")."""

    def __init__(self, width: int, act: str, norm: bool):
        super().__init__()
        layers = [nn.LayerNorm(width)] if norm else []
        self.body = nn.Sequential(*layers, nn.Linear(width, width), make_activation(act), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resmlp(
    *,
    in_dim: int | None = None,
    out_dim: int | None = None,
    depth: int = 4,
    width: int = 64,
    act: str = "relu",
    norm: bool = True,
    init: str = "default",
    seed: int | None = None,
) -> nn.Sequential:
    """Linear(in_dim, width), ``depth`` residual blocks, (LayerNorm), Linear(width, out_dim)."""
    in_dim = _size("in_dim", in_dim, "number of input features")
    out_dim = _size("out_dim", out_dim, "number of outputs or classes")
    check_int("depth", depth, 0)
    check_int("width", width, 1)
    check_choice("act", act, ACTIVATIONS)
    check_bool("norm", norm)
    with _seeded(seed):
        blocks = [_ResidualBlock(width, act, norm) for _ in range(depth)]
        final = [nn.LayerNorm(width)] if norm else []
        net = nn.Sequential(nn.Linear(in_dim, width), *blocks, *final, nn.Linear(width, out_dim))
        apply_init(net, init, act=act)
    return net


# ---------------------------------------------------------------- CNN


def cnn(
    *,
    in_channels: int | None = None,
    out_dim: int | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: Sequence[int] = (8, 16),
    act: str = "relu",
    batchnorm: bool = True,
    init: str = "default",
    seed: int | None = None,
) -> nn.Sequential:
    """For (N, C, H, W): [Conv3x3, (BatchNorm2d), act, MaxPool2] per entry of ``channels``,
    then global average pooling and Linear. Any H, W >= 2^len(channels) works;
    ``image_size`` (H or (H, W)), when given, is checked against that here rather than
    failing inside the first forward pass."""
    in_channels = _size("in_channels", in_channels, "number of input channels C of (N, C, H, W)")
    out_dim = _size("out_dim", out_dim, "number of outputs or classes")
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ValueError(f"channels must be a non-empty list of integers, e.g. [8, 16]; got {channels!r}")
    channels = [check_int(f"channels[{i}]", c, 1) for i, c in enumerate(channels)]
    check_choice("act", act, ACTIVATIONS)
    check_bool("batchnorm", batchnorm)
    if image_size is not None:
        is_pair = isinstance(image_size, Sequence) and not isinstance(image_size, str)
        hw = list(image_size) if is_pair else [image_size, image_size]
        if len(hw) != 2:
            raise ValueError(f"image_size must be an integer or [H, W]; got {image_size!r}")
        need = 2 ** len(channels)  # each block halves H and W
        for i, side in enumerate(hw):
            check_int(f"image_size[{i}]", side, need)
    with _seeded(seed):
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers.append(nn.Conv2d(c_in, c, kernel_size=3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers += [make_activation(act), nn.MaxPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, out_dim)]
        net = apply_init(nn.Sequential(*layers), init, act=act)
    return net


# ---------------------------------------------------------------- transformer


class _Block(nn.Module):
    """Pre-norm transformer block, as in GPT-2 / nanoGPT, with plain Linear layers."""

    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        n, length, d = x.shape
        # (N, L, 3D) -> 3 x (N, H, L, D/H)
        q, k, v = self.qkv(self.ln1(x)).view(n, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # Written out instead of F.scaled_dot_product_attention: same result at this size,
        # and twice differentiable for Hessian-vector products.
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_heads)  # (N, H, L, L)
        if self.causal:
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        heads = scores.softmax(dim=-1) @ v  # (N, H, L, D/H)
        x = x + self.proj(heads.transpose(1, 2).reshape(n, length, d))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, pre-norm blocks, mean-pool over L, Linear head."""

    def __init__(self, vocab_size: int, out_dim: int, d_model: int, n_heads: int, n_layers: int, max_len: int, causal: bool):
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.Sequential(*[_Block(d_model, n_heads, causal) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, L) int64 -> (N, out_dim)
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the transformer's max_len={self.max_len}; raise max_len")
        x = self.tok(tokens) + self.pos(torch.arange(length, device=tokens.device))
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def transformer(
    *,
    vocab_size: int | None = None,
    out_dim: int | None = None,
    d_model: int = 32,
    n_heads: int = 2,
    n_layers: int = 2,
    max_len: int = 32,
    causal: bool = False,
    seed: int | None = None,
) -> TinyTransformer:
    """Tiny encoder for sequence classification; input LongTensor (N, L) with L <= max_len."""
    vocab_size = _size("vocab_size", vocab_size, "number of distinct tokens")
    out_dim = _size("out_dim", out_dim, "number of outputs or classes")
    check_int("d_model", d_model, 1)
    check_int("n_heads", n_heads, 1)
    if d_model % n_heads:
        raise ValueError(f"d_model must be a multiple of n_heads ({n_heads}); got d_model={d_model}")
    check_int("n_layers", n_layers, 0)
    check_int("max_len", max_len, 1)
    check_bool("causal", causal)
    with _seeded(seed):
        return TinyTransformer(vocab_size, out_dim, d_model, n_heads, n_layers, max_len, causal)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resmlp": resmlp,
    "transformer": transformer,
    "linear_net": linear_net,
}
