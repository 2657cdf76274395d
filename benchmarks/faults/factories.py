"""Data and model factories of the fault benchmark, written the way users write them.

Configs in ``cases/`` name these as ``../factories.py:NAME``; ``verify.py`` calls the same
functions, so ground truth and diagnosis see the same model and data. Only torch here, plus
scikit-learn for its bundled datasets (imported lazily: ``pip install -e .[bench]``).

Data factories return ``((X_train, y_train), (X_val, y_val))`` tensors: class labels as int64,
regression targets as float (N, 1). The split is fixed by ``seed`` (default 0), so the 3
verification seeds vary the model's initialisation and the batch order, not the data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# --- data: small real datasets shipped inside scikit-learn ----------------------------------


def _sk(name: str):
    import sklearn.datasets as skd

    return {"digits": skd.load_digits, "breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine,
            "iris": skd.load_iris, "diabetes": skd.load_diabetes}[name](return_X_y=True)


def _standardize(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z-score per feature with the training split's statistics; constant features stay 0."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (val - mean) / std


def table(name: str = "wine", scale: str = "standard", n_train: int | None = None, random_labels: bool = False,
          image: bool = False, scale_target: bool = True, offset: float = 0.0, spread: float = 0.0,
          multiply: float = 1.0, label_noise: float = 0.0, pair_rho: float = 0.0, decorrelate: bool = False,
          dup_noise: float | None = None, big_feature: float = 1.0, big_index: int = 0, mix: float = 0.0,
          whiten: bool = False, seed: int = 0):
    """One of scikit-learn's bundled datasets, split 70/30 (stratified for classes).

    scale: "standard" (z-score), "raw" (as shipped: breast_cancer spans 1e-3..4e3), "unit" (/ max).
    n_train: keep only the first n training samples (tiny-data overfitting).
    random_labels: replace the training labels by random ones (validation keeps the true ones).
    image: digits as (1, 8, 8) images. scale_target: z-score a regression target (diabetes).
    offset: added to every (scaled) feature, e.g. 100 for features far from zero mean.
    spread: feature j (of d) is multiplied by 10 ** (spread * (j / (d - 1) - 1/2)), i.e. the
        features' units span ``spread`` decades (mixed units: grams next to kilometres).
    multiply: every feature times this (e.g. 16 turns digits' 0..16 into 0..256 pixel values).
    label_noise: this fraction of the training labels replaced by random ones (validation clean).
    big_feature: feature ``big_index`` (after scaling) times this: one feature in other units
        (a timestamp in milliseconds next to standardised features).
    pair_rho: each feature x_j becomes a pair of near-duplicate features
        (s z_j + t x_j, s z_j - t x_j), z_j ~ N(0, 1) a nuisance shared by the pair, s^2 + t^2 = 1,
        correlation s^2 - t^2 = pair_rho: each feature keeps variance ~1 but the signal lies in the
        pair's difference, a direction of variance 1 - pair_rho (collinear inputs, Hessian
        condition number ~ 1 / (1 - pair_rho)). The first half of the columns are the pairs'
        first members (for images: channel 0), the second half the second members (channel 1).
    decorrelate: with pair_rho, each pair replaced by its sum and difference, each standardised
        with the training split's statistics (a whitening of the pairs; the one-change fix).
    dup_noise: each feature gets a near-duplicate x_j + dup_noise e_j, the signal
        along the pair's large-variance direction (collinear but harmless: a healthy near miss).
    mix: the (scaled) features mixed by a random matrix whose singular values span ``mix``
        decades, then each mixed column standardised (training statistics): every feature keeps
        unit variance but the features are strongly correlated, the information squeezed into
        directions of small variance (sensors that each measure a blend of the same few factors).
    whiten: finally PCA-whiten the features with the training split's mean and covariance (the
        one-change fix of ``mix``; for vectors only).
    """
    from sklearn.model_selection import train_test_split

    X, y = _sk(name)
    regression = name == "diabetes"
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.3, random_state=seed,
                                          stratify=None if regression else y)
    Xtr, Xva = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xva, dtype=torch.float32)
    if scale == "standard":
        Xtr, Xva = _standardize(Xtr, Xva)
    elif scale == "unit":
        m = Xtr.abs().max(0).values  # a feature constant 0 in train (digits' border) keeps the global max
        m = torch.where(m > 0, m, Xtr.abs().max())
        Xtr, Xva = Xtr / m, Xva / m
    elif scale != "raw":
        raise ValueError(f"scale must be standard, raw or unit, not {scale!r}")
    Xtr, Xva = Xtr + offset, Xva + offset
    if spread:
        f = 10 ** (spread * (torch.arange(Xtr.shape[1]) / max(Xtr.shape[1] - 1, 1) - 0.5))
        Xtr, Xva = Xtr * f, Xva * f
    Xtr, Xva = Xtr * multiply, Xva * multiply
    if big_feature != 1.0:
        Xtr, Xva = Xtr.clone(), Xva.clone()
        Xtr[:, big_index] *= big_feature
        Xva[:, big_index] *= big_feature
    if pair_rho or decorrelate:
        Xtr, Xva = _pairs(Xtr, Xva, pair_rho, decorrelate, seed)
    if mix:
        Xtr, Xva = _mix(Xtr, Xva, mix, seed)
    if whiten:
        Xtr, Xva = _whiten(Xtr, Xva)
    if dup_noise is not None:
        g = torch.Generator().manual_seed(seed + 3)
        Xtr = torch.cat([Xtr, Xtr + dup_noise * torch.randn(Xtr.shape, generator=g)], 1)
        Xva = torch.cat([Xva, Xva + dup_noise * torch.randn(Xva.shape, generator=g)], 1)
    if regression:
        ytr = torch.tensor(ytr, dtype=torch.float32).unsqueeze(1)
        yva = torch.tensor(yva, dtype=torch.float32).unsqueeze(1)
        if scale_target:
            mu, sd = ytr.mean(), ytr.std()
            ytr, yva = (ytr - mu) / sd, (yva - mu) / sd
    else:
        ytr, yva = torch.tensor(ytr, dtype=torch.int64), torch.tensor(yva, dtype=torch.int64)
    if n_train is not None:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    if random_labels:
        g = torch.Generator().manual_seed(seed + 1)
        ytr = torch.randint(int(ytr.max()) + 1, ytr.shape, generator=g)
    if label_noise:
        g = torch.Generator().manual_seed(seed + 2)
        flip = torch.rand(ytr.shape, generator=g) < label_noise
        ytr = torch.where(flip, torch.randint(int(ytr.max()) + 1, ytr.shape, generator=g), ytr)
    if image:  # 64 pixels per channel (two channels for pairs / near-duplicates)
        Xtr, Xva = Xtr.reshape(len(Xtr), -1, 8, 8), Xva.reshape(len(Xva), -1, 8, 8)
    return (Xtr, ytr), (Xva, yva)


def _mix(Xtr: torch.Tensor, Xva: torch.Tensor, decades: float, seed: int):
    """table(mix=...): X -> standardise(X U diag(s) V^T), s log-spaced over ``decades``."""
    d = Xtr.shape[1]
    g = torch.Generator().manual_seed(seed + 5)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    M = U @ torch.diag(10 ** torch.linspace(0.0, -decades, d)) @ V.T
    return _standardize(Xtr @ M, Xva @ M)


def _whiten(Xtr: torch.Tensor, Xva: torch.Tensor):
    """PCA whitening with the training split's mean and covariance; directions without variance
    become columns of zeros, so the width stays the same."""
    mean = Xtr.mean(0)
    C = torch.cov((Xtr - mean).T.double())
    lam, Q = torch.linalg.eigh(C)
    keep = lam > lam.max() * 1e-10
    W = torch.zeros_like(Q)
    W[:, keep] = Q[:, keep] / lam[keep].sqrt()
    W = W.float()
    return (Xtr - mean) @ W, (Xva - mean) @ W


def _pairs(Xtr: torch.Tensor, Xva: torch.Tensor, rho: float, decorrelate: bool, seed: int):
    """table(pair_rho=...): near-duplicate pairs sharing a nuisance; decorrelate: their sum and difference."""
    g = torch.Generator().manual_seed(seed + 4)
    s, t = math.sqrt((1 + rho) / 2), math.sqrt((1 - rho) / 2)
    out = []
    for X in (Xtr, Xva):
        z = torch.randn(X.shape, generator=g)
        out.append((s * z + t * X, s * z - t * X))
    if decorrelate:
        out = [((a + b) / 2, (a - b) / 2) for a, b in out]
        (ta, tb), (va, vb) = out
        ta, va = _standardize(ta, va)
        tb, vb = _standardize(tb, vb)
        out = [(ta, tb), (va, vb)]
    return torch.cat(out[0], 1), torch.cat(out[1], 1)


def digits_rows(scale: str = "unit", n_train: int | None = None, seed: int = 0, **table_args):
    """Digits as sequences: 8 time steps (rows) of 8 pixels, for RNNs and transformers.
    table_args (spread, pair_rho, decorrelate, ...) go to ``table``; with pairs each step holds
    the row's 8 first members, then its 8 second members (16 features)."""
    (Xtr, ytr), (Xva, yva) = table("digits", scale=scale, n_train=n_train, seed=seed, **table_args)

    def rows(X):
        return torch.cat([c.reshape(len(X), 8, 8) for c in X.split(64, 1)], 2)

    return (rows(Xtr), ytr), (rows(Xva), yva)


# --- data: synthetic tasks with known structure ---------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def teacher(n_features: int = 10, hidden: int = 16, n_train: int = 512, n_val: int = 256, noise: float = 0.05,
            spread: float = 0.0, target_scale: float = 1.0, target_offset: float = 0.0, mix: float = 0.0,
            whiten: bool = False, seed: int = 0):
    """y = v . tanh(W x), a random one-hidden-layer teacher; targets standardised.

    spread: the inputs the model sees are x_j * 10 ** (spread * (j / (d - 1) - 1/2)) (features in
    mixed units); the target is computed from the unscaled x, so only the units change.
    target_scale, target_offset: the target in other units, y * target_scale + target_offset
    (e.g. a price in cents around 500: unscaled regression targets).
    mix, whiten: the inputs the model sees mixed into correlated unit-variance features, and
    their PCA whitening (the fix), as in ``table``."""
    g = _gen(seed)
    W = torch.randn(hidden, n_features, generator=g) / math.sqrt(n_features)
    v = torch.randn(hidden, 1, generator=g) / math.sqrt(hidden)
    X = torch.randn(n_train + n_val, n_features, generator=g)
    y = torch.tanh(X @ W.T * 2) @ v
    y = (y - y.mean()) / y.std() + noise * torch.randn(y.shape, generator=g)
    y = y * target_scale + target_offset
    if spread:
        X = X * 10 ** (spread * (torch.arange(n_features) / max(n_features - 1, 1) - 0.5))
    Xtr, Xva = X[:n_train], X[n_train:]
    if mix:
        Xtr, Xva = _mix(Xtr, Xva, mix, seed)
    if whiten:
        Xtr, Xva = _whiten(Xtr, Xva)
    return (Xtr, y[:n_train]), (Xva, y[n_train:])


def polynomial(degree: int = 5, x_max: float = 5.0, n_train: int = 512, n_val: int = 256, standardize: bool = False,
               frequency: float = 3.0, whiten: bool = False, seed: int = 0):
    """Polynomial regression with the monomials x, x^2, ..., x^degree as features, x ~ U(0, x_max).

    Unscaled, feature k has scale ~x_max^k (3125 for k=5). The target is a fixed function of x
    (sin(frequency t) + t^2, t = x / x_max), standardised, so only the features differ between
    a fault and its fix. Standardised monomials are still nearly collinear (x^4 and x^5 on
    [0, x_max] correlate > 0.99): a higher ``frequency`` puts the target in the directions of
    small variance. whiten: PCA-whiten the (standardised) monomials, i.e. an orthogonal
    polynomial basis (the fix of that collinearity).
    """
    g = _gen(seed)
    x = torch.rand(n_train + n_val, 1, generator=g) * x_max
    X = torch.cat([x ** k for k in range(1, degree + 1)], 1)
    t = x / x_max
    y = torch.sin(frequency * t) + t ** 2
    y = (y - y.mean()) / y.std() + 0.05 * torch.randn(y.shape, generator=g)
    Xtr, Xva = X[:n_train], X[n_train:]
    if standardize or whiten:
        Xtr, Xva = _standardize(Xtr, Xva)
    if whiten:
        Xtr, Xva = _whiten(Xtr, Xva)
    return (Xtr, y[:n_train]), (Xva, y[n_train:])


def correlated(n_features: int = 10, rho: float = 0.999, decorrelate: bool = False, n_train: int = 512,
               n_val: int = 256, noise: float = 0.05, seed: int = 0):
    """Linear regression on features sharing one common factor: x_j = sqrt(rho) z + sqrt(1-rho) e_j.

    The target depends on contrasts between features (weights summing to zero), i.e. on the
    directions of variance 1 - rho: the input covariance has condition number ~ n rho / (1 - rho).
    decorrelate=True whitens the inputs (the one-change fix). noise: the standard deviation of the
    noise added to the standardised target (R^2 can reach at most 1 / (1 + noise^2)).
    """
    g = _gen(seed)
    n = n_train + n_val
    z = torch.randn(n, 1, generator=g)
    X = math.sqrt(rho) * z + math.sqrt(1 - rho) * torch.randn(n, n_features, generator=g)
    w = torch.randn(n_features, 1, generator=g)
    w = w - w.mean()
    y = X @ w
    y = (y - y.mean()) / y.std() + noise * torch.randn(y.shape, generator=g)
    if decorrelate:  # PCA whitening with the training split's covariance
        Xc = X - X[:n_train].mean(0)
        cov = Xc[:n_train].T @ Xc[:n_train] / n_train
        evals, evecs = torch.linalg.eigh(cov)
        X = Xc @ evecs / evals.clamp_min(1e-12).sqrt()
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def sequence(length: int = 20, n_features: int = 4, n_train: int = 1024, n_val: int = 512, seed: int = 0):
    """Long-range dependency: x_t ~ N(0, I); the label is the sign of x_0[0], the first step's
    first feature. A model must carry one bit across ``length`` steps."""
    g = _gen(seed)
    X = torch.randn(n_train + n_val, length, n_features, generator=g)
    y = (X[:, 0, 0] > 0).long()
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def xor(n_train: int = 256, n_val: int = 128, noise: float = 0.1, seed: int = 0):
    """XOR of two signs, as a regression target in {0, 1} (for MSE/MAE)."""
    g = _gen(seed)

    def split(n):
        b = torch.randint(0, 2, (n, 2), generator=g).float()
        X = (b * 2 - 1) + noise * torch.randn(n, 2, generator=g)
        return X, (b[:, :1] != b[:, 1:]).float()

    return split(n_train), split(n_val)


def bag_of_words(vocab: int = 300, n_train: int = 1500, n_val: int = 500, doc_len: int = 30, n_topic: int = 20,
                 seed: int = 0):
    """Binary 'sentiment' of word-count documents: each class favours its own n_topic words,
    the rest of each document is drawn from the whole vocabulary. log(1 + counts) features."""
    g = _gen(seed)
    n = 20000 if n_train + n_val > 20000 else n_train + n_val
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.zeros(n, vocab)
    n_signal = doc_len // 6
    common = torch.randint(0, vocab, (n, doc_len - n_signal), generator=g)
    X.scatter_add_(1, common, torch.ones_like(common, dtype=torch.float32))
    topic = torch.randint(0, n_topic, (n, n_signal), generator=g) + y[:, None] * n_topic
    X.scatter_add_(1, topic, torch.ones_like(topic, dtype=torch.float32))
    X = torch.log1p(X)
    # the validation set is drawn after the largest training set, so it does not depend on n_train
    return (X[:n_train], y[:n_train]), (X[-n_val:], y[-n_val:])


def sine(frequency: float = 3.0, n_train: int = 256, n_val: int = 128, damped: bool = False, noise: float = 0.0,
         seed: int = 0):
    """y = sin(frequency x) on [-pi, pi] (times exp(-x^2/8) when damped), plus N(0, noise^2) noise
    when noise > 0 (the signal's variance is about 1/2: R^2 can reach about 0.5 / (0.5 + noise^2))."""
    g = _gen(seed)

    def split(n):
        x = (torch.rand(n, 1, generator=g) * 2 - 1) * math.pi
        y = torch.sin(frequency * x)
        y = y * torch.exp(-x ** 2 / 8) if damped else y
        return x, y + noise * torch.randn(y.shape, generator=g) if noise else y

    return split(n_train), split(n_val)


def bumps(centers: tuple = (2.0, -2.0), heights: tuple = (1.0, 0.3), width: float = 0.5, x_max: float = 4.0,
          n_train: int = 256, n_val: int = 128, seed: int = 0):
    """y = sum_k heights_k exp(-(x - centers_k)^2 / (2 width^2)), x ~ U(-x_max, x_max): a tall bump
    and a small decoy bump (a one-dimensional regression with two basins for a bump model)."""
    g = _gen(seed)

    def split(n):
        x = (torch.rand(n, 1, generator=g) * 2 - 1) * x_max
        y = sum(h * torch.exp(-(x - c) ** 2 / (2 * width ** 2)) for c, h in zip(centers, heights))
        return x, y

    return split(n_train), split(n_val)


def line(slope: float = 2.0, n_train: int = 256, n_val: int = 128, noise: float = 0.05, seed: int = 0):
    """y = slope * x + N(0, noise^2), x ~ N(0, 1): one input, one output (R^2 can reach at most
    slope^2 / (slope^2 + noise^2))."""
    g = _gen(seed)
    x = torch.randn(n_train + n_val, 1, generator=g)
    y = slope * x + noise * torch.randn(x.shape, generator=g)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# --- models ---------------------------------------------------------------------------------

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU,
        "identity": nn.Identity}


TORCH_INITS = {
    "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
}


def _init_(model: nn.Module, init: str, std: float, gain: float, bias: float | None, weight_mean: float,
           skip_last: bool) -> nn.Module:
    """Re-initialise every Linear/Conv weight (all but the last layer when skip_last).

    init: default (PyTorch's), zero, constant (= std), normal (N(weight_mean, std^2)),
    uniform (U(-std, std)), orthogonal (x gain), xavier (x gain), kaiming, kaiming_gain (Kaiming
    x gain); also torch.nn.init's
    names xavier_normal/xavier_uniform (gain 1) and kaiming_normal/kaiming_uniform (ReLU), which
    no case uses: they let a remedy that sets them run (remedy_check.py).
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if skip_last:
        layers = layers[:-1]
    for m in layers:
        w = m.weight
        if init == "zero":
            nn.init.zeros_(w)
        elif init == "constant":
            nn.init.constant_(w, std)
        elif init == "normal":
            nn.init.normal_(w, weight_mean, std)
        elif init == "uniform":
            nn.init.uniform_(w, -std, std)
        elif init == "orthogonal":
            nn.init.orthogonal_(w, gain)
        elif init == "xavier":
            nn.init.xavier_normal_(w, gain)
        elif init == "kaiming":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif init == "kaiming_gain":  # Kaiming (ReLU) times gain
            nn.init.kaiming_normal_(w, nonlinearity="relu")
            w.data.mul_(gain)
        elif init in TORCH_INITS:  # PyTorch's own names, as a remedy's patch writes them (gain 1 / ReLU's)
            TORCH_INITS[init](w)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}")
        if m.bias is not None:
            if init == "zero":
                nn.init.zeros_(m.bias)
            if bias is not None:
                nn.init.constant_(m.bias, bias)
    return model


def mlp(in_dim: int, out_dim: int, width: int = 64, depth: int = 2, act: str = "relu", batchnorm: bool = False,
        dropout: float = 0.0, init: str = "default", std: float = 0.01, gain: float = 1.0, bias: float | None = None,
        weight_mean: float = 0.0, init_last: bool = True, bn_bias: float | None = None) -> nn.Module:
    """``depth`` hidden layers [Linear, (BatchNorm), act, (Dropout)], then a Linear head.
    bn_bias: the BatchNorm shift (beta) every BatchNorm starts from (PyTorch's: 0)."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_dim
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTS[act]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = width
    layers.append(nn.Linear(d, out_dim))
    net = nn.Sequential(*layers)
    _init_(net, init, std, gain, bias, weight_mean, skip_last=not init_last)
    if bias is not None:
        nn.init.zeros_(layers[-1].bias)
    return _bn_shift(net, bn_bias)


def _bn_shift(net: nn.Module, bn_bias: float | None) -> nn.Module:
    if bn_bias is not None:
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.constant_(m.bias, bn_bias)
    return net


def linear(in_dim: int, out_dim: int, init: str = "default", std: float = 0.01) -> nn.Module:
    """Logistic / linear regression: one Linear layer."""
    return _init_(nn.Sequential(nn.Flatten(), nn.Linear(in_dim, out_dim)), init, std, 1.0, None, 0.0, False)


class _DeepLinear(nn.Module):
    def __init__(self, in_dim, out_dim, width, depth):
        super().__init__()
        dims = [in_dim] + [width] * depth + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


def deep_linear(in_dim: int, out_dim: int, width: int = 16, depth: int = 3, init: str = "default",
                std: float = 0.01, gain: float = 1.0) -> nn.Module:
    """A product of depth+1 weight matrices, no activations and no biases (Saxe et al. 2014)."""
    return _init_(_DeepLinear(in_dim, out_dim, width, depth), init, std, gain, None, 0.0, False)


class _Block(nn.Module):
    def __init__(self, width, act, norm):
        super().__init__()
        self.norm = nn.BatchNorm1d(width) if norm else nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(width, width), ACTS[act](), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.act(self.norm(x)))))


def resnet(in_dim: int, out_dim: int, width: int = 64, blocks: int = 3, act: str = "relu", norm: bool = True,
           init: str = "default", std: float = 0.01, gain: float = 1.0, bias: float | None = None) -> nn.Module:
    """Residual MLP: Linear stem, pre-activation residual blocks, Linear head."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, width), *[_Block(width, act, norm) for _ in range(blocks)],
                        nn.Linear(width, out_dim))
    return _init_(net, init, std, gain, bias, 0.0, False)


def cnn(out_dim: int = 10, channels: tuple = (8, 16), batchnorm: bool = False, act: str = "relu",
        init: str = "default", std: float = 0.01, gain: float = 1.0, bias: float | None = None,
        weight_mean: float = 0.0, size: int = 8, bn_bias: float | None = None, in_channels: int = 1,
        pool: str = "max") -> nn.Module:
    """Conv(3x3, pad 1) [+BatchNorm] + act per entry of ``channels``, a 2x2 pool after the
    second (``pool``: "max", or "avg", which keeps an identity-activation CNN linear), average
    pooling to 4x4, Linear head. Input (N, in_channels, size, size)."""
    layers: list[nn.Module] = []
    c = in_channels
    for i, ch in enumerate(channels):
        layers.append(nn.Conv2d(c, ch, 3, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(ACTS[act]())
        if i == 1:
            layers.append({"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool](2))
        c = ch
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, out_dim)]
    net = nn.Sequential(*layers)
    return _bn_shift(_init_(net, init, std, gain, bias, weight_mean, False), bn_bias)


class _Recurrent(nn.Module):
    def __init__(self, kind, in_dim, hidden, out_dim, nonlinearity, recurrent_gain, init="default", std=0.01,
                 gate_bias=None):
        super().__init__()
        cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind]
        kw = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.rnn = cls(in_dim, hidden, batch_first=True, **kw)
        self.head = nn.Linear(hidden, out_dim)
        if recurrent_gain is not None:  # orthogonal recurrent matrix x gain: spectral radius = gain
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    for chunk in p.data.split(hidden):
                        nn.init.orthogonal_(chunk, recurrent_gain)
        if init == "uniform":  # every input and recurrent weight U(-std, std)
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight"):
                    nn.init.uniform_(p, -std, std)
        elif init != "default":
            raise ValueError(f"unknown recurrent init {init!r}")
        if gate_bias is not None:  # the second gate block: LSTM's forget gate, GRU's update gate
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias"):
                    p.data[hidden:2 * hidden] = gate_bias if name.startswith("bias_ih") else 0.0

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def recurrent(in_dim: int, out_dim: int, kind: str = "lstm", hidden: int = 32, nonlinearity: str = "tanh",
              recurrent_gain: float | None = None, init: str = "default", std: float = 0.01,
              gate_bias: float | None = None) -> nn.Module:
    """nn.RNN / nn.GRU / nn.LSTM over (N, T, in_dim); a Linear head on the last step's state.
    init: "default" (PyTorch's) or "uniform" (every recurrent-layer weight U(-std, std)).
    gate_bias: the input bias of the second gate (LSTM: forget gate; GRU: update gate), its
    hidden bias 0: -6 closes an LSTM's forget gate (nothing carried) and makes a GRU a plain RNN."""
    return _Recurrent(kind, in_dim, hidden, out_dim, nonlinearity, recurrent_gain, init, std, gate_bias)


class _Transformer(nn.Module):
    def __init__(self, in_dim, out_dim, d_model, heads, layers, max_len):
        super().__init__()
        self.embed = nn.Linear(in_dim, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_dim)

    def forward(self, x):
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.encoder(h)).mean(1))


def transformer(in_dim: int, out_dim: int, d_model: int = 32, heads: int = 4, layers: int = 2,
                max_len: int = 64, init_std: float | None = None) -> nn.Module:
    """Pre-LN transformer encoder (LayerNorm, GELU), mean-pooled, Linear head; input (N, T, in_dim).
    init_std: every weight matrix (embedding, attention, feed-forward, head; not the positions)
    drawn from N(0, init_std^2), the Linear biases zero (GPT-2 style at 0.02)."""
    net = _Transformer(in_dim, out_dim, d_model, heads, layers, max_len)
    if init_std is not None:
        for name, p in net.named_parameters():
            if name == "pos" or "norm" in name:
                continue
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
    return net


class _TwoWeight(nn.Module):
    def __init__(self, init):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(init)))
        self.b = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return self.a * self.b * x


def two_weight(init: float = 1e-4) -> nn.Module:
    """f(x) = a b x: the smallest network with a saddle at a = b = 0."""
    return _TwoWeight(init)


class _Frequency(nn.Module):
    def __init__(self, frequency):
        super().__init__()
        self.frequency = nn.Parameter(torch.tensor(float(frequency)))
        self.amplitude = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.amplitude * torch.sin(self.frequency * x)


def frequency_model(frequency: float = 4.8) -> nn.Module:
    """y = amplitude sin(frequency x), starting from the given frequency (the loss in the
    frequency has a basin per frequency that correlates with the target)."""
    return _Frequency(frequency)


class _CubicSlope(nn.Module):
    def __init__(self, init):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return (self.theta ** 3 - 3 * self.theta) * x


def cubic_slope(init: float = 1.5) -> nn.Module:
    """y = (theta^3 - 3 theta) x: a slope reached through a cubic. For a target slope below -2 the
    loss in theta has a local minimum at theta = 1 (slope -2) and the global one below theta = -2,
    with a barrier at theta = -1 (slope +2)."""
    return _CubicSlope(init)


class _Bump(nn.Module):
    def __init__(self, center, width):
        super().__init__()
        self.center = nn.Parameter(torch.tensor(float(center)))
        self.height = nn.Parameter(torch.tensor(1.0))
        self.offset = nn.Parameter(torch.tensor(0.0))
        self.width = width

    def forward(self, x):
        return self.height * torch.exp(-(x - self.center) ** 2 / (2 * self.width ** 2)) + self.offset


def bump(center: float = -1.5, width: float = 0.5) -> nn.Module:
    """y = height exp(-(x - center)^2 / (2 width^2)) + offset, learnable center, height and offset."""
    return _Bump(center, width)


# --- losses ---------------------------------------------------------------------------------


def mae(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (L1)."""
    return (output - y).abs().mean()


def ce_sum(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch instead of averaged (a common slip: the effective
    learning rate is batch_size times the configured one)."""
    return nn.functional.cross_entropy(output, y, reduction="sum")
