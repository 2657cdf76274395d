"""Factories written the way real projects write them, as a config names them
("realworld.py:tiny_lm"): Datasets of dict items (the Hugging Face shape), DataLoaders, a
language model that returns a dict with its own loss, a recurrent sequence classifier.

Everything is generated, so the samples need no download; sizes are tiny so that each sample
diagnoses in seconds on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

# ------------------------------------------------------------------ images as dict items


class OrientedBars(Dataset):
    """Tiny images (1, S, S) of one bright line on noise, labelled by its orientation
    (0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal); each item is a dict
    ``{"pixel_values": (1, S, S) float, "labels": int}``, as Hugging Face image datasets give."""

    def __init__(self, n: int, size: int = 8, noise: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(4, (n,), generator=g)
        off = torch.randint(size, (n,), generator=g)[:, None, None]
        r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        lines = torch.stack([r == off, c == off, (c - r) % size == off, (c + r) % size == off])  # (4, N, S, S)
        self.images = (lines[self.labels, torch.arange(n)].float() + noise * torch.randn(n, size, size, generator=g))[:, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}


def oriented_bars(n_train: int = 512, n_val: int = 256, size: int = 8):
    return OrientedBars(n_train, size), OrientedBars(n_val, size, seed=1)


# ------------------------------------------------------------------ a tiny language model


class Progressions(Dataset):
    """Token sequences x_t = (a + b t) mod V with a, b random per sequence: the next token
    follows from the previous two (an attention job). Items ``{"input_ids": (L,), "labels": (L,)}``;
    the model shifts the labels itself, as Hugging Face causal LMs do."""

    def __init__(self, n: int, vocab: int = 16, length: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(vocab, (n, 1), generator=g)
        b = torch.randint(1, vocab, (n, 1), generator=g)
        self.ids = (a + b * torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def progressions(n_train: int = 1024, n_val: int = 256, vocab: int = 16, length: int = 12):
    return Progressions(n_train, vocab, length), Progressions(n_val, vocab, length, seed=1)


class CausalLM(nn.Module):
    """A GPT in miniature (nn.TransformerEncoder with a causal mask). ``forward(input_ids,
    labels=None)`` returns ``{"logits": (N, L, V)}`` and, given labels, ``"loss"``: next-token
    cross-entropy (logits at t against labels at t+1)."""

    def __init__(self, vocab: int, d_model: int, n_heads: int, n_layers: int, max_len: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        n, length = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(length, device=input_ids.device))
        mask = torch.full((length, length), float("-inf"), device=x.device).triu(1)
        logits = self.head(self.norm(self.blocks(x, mask=mask)))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return out


def tiny_lm(vocab: int = 16, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, max_len: int = 32,
            dropout: float = 0.0, init_std: float | None = None) -> CausalLM:
    model = CausalLM(vocab, d_model, n_heads, n_layers, max_len, dropout)
    if init_std is not None:  # every weight matrix drawn N(0, init_std^2): a mistake seen in the wild
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, init_std)
    return model


# ------------------------------------------------------------------ a recurrent sequence classifier


def noisy_sums(n_train: int = 512, n_val: int = 256, length: int = 20, batch_size: int = 32):
    """Sequences (L, 1) of N(mu, 1) steps with mu = +-0.3, labelled by the sign of mu; as
    DataLoaders of (sequence, label) tuples, as a training script would build them."""

    def make(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(2, (n,), generator=g)
        x = torch.randn(n, length, 1, generator=g) + 0.3 * (2.0 * y[:, None, None] - 1.0)
        return torch.utils.data.TensorDataset(x, y)

    train = DataLoader(make(n_train, 0), batch_size=batch_size, shuffle=True)
    val = DataLoader(make(n_val, 1), batch_size=128)
    return train, val


class RecurrentClassifier(nn.Module):
    """GRU or LSTM over the sequence, a Linear head on the last hidden state. Returns the
    recurrent layer's tuple output style (logits, hidden), as many hand-written models do."""

    def __init__(self, cell: str, hidden: int, layers: int):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn(1, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor):
        out, state = self.rnn(x)
        return self.head(out[:, -1]), state


def recurrent(cell: str = "gru", hidden: int = 32, layers: int = 1) -> RecurrentClassifier:
    if cell not in ("gru", "lstm"):
        raise ValueError(f"cell must be gru or lstm, got {cell!r}")
    return RecurrentClassifier(cell, hidden, layers)



# --- a ResNet-20 on scikit-learn's handwritten digits (8x8 images, shipped with scikit-learn) ---


class _Block(nn.Module):
    """A basic residual block whose activations are F.relu calls, as torchvision writes them."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


def resnet20(out_dim: int = 10, width: int = 16, blocks: int = 3, in_channels: int = 1) -> nn.Module:
    """ResNet-20 (He et al. 2016, the CIFAR variant: 3 stages of 3 basic blocks at width, 2x and 4x
    width channels, stride 2 between stages, 0.27M parameters at width 16)."""
    layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c = width
    for stage in range(3):
        for b in range(blocks):
            layers.append(_Block(c, width * 2**stage, 2 if stage > 0 and b == 0 else 1))
            c = width * 2**stage
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out_dim)]
    return nn.Sequential(*layers)


def digits_images(n_val: int = 397):
    """scikit-learn's 1797 handwritten digits as (N, 1, 8, 8) images scaled to [0, 1] (the data
    ships inside scikit-learn: nothing is downloaded); a fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    return (X[n_val:], y[n_val:]), (X[:n_val], y[:n_val])
