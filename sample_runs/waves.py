"""A user's own factories, as a config would name them ("waves.py:frequency_model").

Fitting the frequency of a sine wave is the textbook non-convex problem: the loss as a
function of the frequency has a basin around every frequency that correlates with the target,
so gradient descent converges to whichever basin the initial frequency lies in.
For the target sin(3x) on [-pi, pi] and amplitude 1 (loss = mean squared error):

    frequency  0.0   1.6   3.0   4.5   5.4
    loss       0.50  1.28  0.00  1.17  0.91     (local minima at ~0 and ~5.4, global at 3)

With the amplitude free as well, a start beyond the barrier at ~4.5 settles near frequency 5.2
with a small amplitude (loss ~0.49).
"""

import math

import torch
from torch import nn


class FrequencyModel(nn.Module):
    """y = amplitude * sin(frequency * x), with a random initial frequency."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.frequency = nn.Parameter(torch.empty(()).uniform_(low, high))
        self.amplitude = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.sin(self.frequency * x)


def frequency_model(low: float = 0.5, high: float = 5.5) -> nn.Module:
    return FrequencyModel(low, high)


def sine_wave(n_train: int = 256, n_val: int = 128, frequency: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def split(n):
        x = (torch.rand(n, 1, generator=g) * 2 - 1) * math.pi
        return x, torch.sin(frequency * x)

    return split(n_train), split(n_val)
