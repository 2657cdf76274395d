"""Adam's preconditioned sharpness against a dense reference on a tiny model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optdoctor.curvature.preconditioned import adam_stability_factor, preconditioned_sharpness


def dense_hessian(model, loss_fn, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params]).double()

    def loss_of(flat):
        chunks, i = {}, 0
        for (name, p), n, s in zip(model.named_parameters(), sizes, shapes):
            chunks[name] = flat[i:i + n].reshape(s)
            i += n
        return loss_fn(torch.func.functional_call(model.double(), chunks, (x.double(),)), y)

    H = torch.autograd.functional.hessian(loss_of, flat0)
    model.float()
    return H


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_preconditioned_sharpness_matches_dense(opt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    loss_fn = nn.functional.cross_entropy
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt](model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(5):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    got, beta1 = preconditioned_sharpness(model, loss_fn, (x, y), optimizer, max_iter=60, tol=1e-8)
    H = dense_hessian(model, loss_fn, x, y)
    d = torch.cat([((optimizer.state[p]["exp_avg_sq"] / (1 - 0.99 ** optimizer.state[p]["step"])).sqrt() + 1e-8).reshape(-1)
                   for p in model.parameters()]).double()
    s = d.rsqrt()
    want = torch.linalg.eigvalsh(s[:, None] * H * s[None, :]).max().item()
    assert beta1 == 0.8
    assert got == pytest.approx(want, rel=1e-4)


def test_not_applicable_to_sgd_or_before_the_first_step():
    model = nn.Linear(3, 1)
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    assert preconditioned_sharpness(model, nn.functional.mse_loss, batch, torch.optim.SGD(model.parameters(), lr=0.1)) is None
    assert preconditioned_sharpness(model, nn.functional.mse_loss, batch, torch.optim.Adam(model.parameters())) is None


def test_stability_factor_is_38_for_beta1_0_9():
    assert adam_stability_factor(0.9) == pytest.approx(38.0)
