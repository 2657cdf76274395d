"""optdoctor.curvature next to PyHessian, on the same model and batch, in one process.

    pip install pyhessian          # for this benchmark only; not a dependency
    python benchmarks/hessian.py               # compare: accuracy, HVPs, wall time
    python benchmarks/hessian.py backends      # autograd vs torch.func HVP timing
    python benchmarks/hessian.py compare --problems mlp-5k --repeats 3

Problems: a 5,122-parameter MLP (after 100 SGD steps, and at init) whose exact spectrum is
the dense float64 Hessian's, and a 197,922-parameter CNN, too big for a dense Hessian: its
reference is a long optdoctor Lanczos run in float64 (the output says so). Timings are the
median over repeats with seeds 0..R-1 (the global seed for PyHessian, which draws from the
global RNG); errors are the worst over those repeats, as max |error| / max |lambda|.

PyHessian 0.1 notes: ``hessian.density`` calls ``torch.eig``, removed from torch, so a shim
over ``torch.linalg.eigh`` is installed for it here; PyHessian has no smallest-eigenvalue
routine, so its lambda_min is the smallest node of ``density(iter=m, n_v=1)``; products are
counted by wrapping ``pyhessian.hessian.hessian_vector_product``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

from optdoctor.curvature import hessian_spectrum, hvp_operator

F = nn.functional


# --- problems -------------------------------------------------------------------------------

def mlp_5k(steps: int):
    """32-64-40-10 tanh MLP (5,122 parameters), batch 512, labels from a random teacher."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 10))
    x = torch.randn(512, 32)
    y = teacher(x).argmax(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 40), nn.Tanh(), nn.Linear(40, 10))
    train(model, x, y, steps, lr=0.1)
    return model, F.cross_entropy, (x.detach(), y)


def cnn_200k(steps: int = 30):
    """3 convs (BatchNorm after the first) + 2 linear layers, 197,922 parameters, batch 64, 3x16x16."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 32x8x8
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64x4x4
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 128x2x2
        nn.Flatten(), nn.Linear(512, 200), nn.ReLU(), nn.Linear(200, 10),
    )
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0, :8].mean((1, 2)) > x[:, 1, 8:].mean((1, 2))).long() + 2 * (x[:, 2].mean((1, 2)) > 0).long()
    train(model, x, y, steps, lr=0.05)
    return model, F.cross_entropy, (x, y)


def train(model, x, y, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)


# --- references ------------------------------------------------------------------------------

def dense_eigenvalues(model, loss_fn, batch, chunk: int = 256) -> np.ndarray:
    """Exact spectrum, descending: dense float64 Hessian by batched double backward (plain
    autograd on an eval-mode float64 copy, no optdoctor code), then numpy eigvalsh."""
    m = copy.deepcopy(model).double().eval()
    x, y = batch
    params = [p for p in m.parameters() if p.requires_grad]
    loss = loss_fn(m(x.double()), y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    n = grad.numel()
    rows = []
    for start in range(0, n, chunk):
        eye = torch.zeros(min(chunk, n - start), n, dtype=torch.float64)
        eye[:, start:start + chunk].fill_diagonal_(1.0)
        cols = torch.autograd.grad(grad, params, grad_outputs=eye, retain_graph=True, is_grads_batched=True)
        rows.append(torch.cat([c.reshape(c.shape[0], -1) for c in cols], 1))
    h = torch.cat(rows).numpy()
    return np.linalg.eigvalsh((h + h.T) / 2)[::-1].copy()


def lanczos_reference(model, loss_fn, batch, max_iter: int) -> np.ndarray:
    s = hessian_spectrum(model, loss_fn, batch, k=5, max_iter=max_iter, tol=None, dtype=torch.float64,
                         seed=123)
    return np.array(s.top + [s.min]), s


# --- contenders ------------------------------------------------------------------------------

def top_error(top, ref_top, rho):
    top = np.sort(np.asarray(top, dtype=float))[::-1][:5]
    return float(np.abs(top - ref_top[: len(top)]).max()) / rho


def run_optdoctor(model, loss_fn, batch, seed, max_iter):
    t = time.perf_counter()
    s = hessian_spectrum(model, loss_fn, batch, k=5, max_iter=max_iter, tol=1e-4, seed=seed)
    return time.perf_counter() - t, s.hvps, s.top, s.min, s.converged


def pyhessian_module():
    import pyhessian  # noqa: F401, PLC0415  (its __init__ rebinds the name `hessian` to the class)

    ph = sys.modules["pyhessian.hessian"]

    def eig(t, eigenvectors=True):  # torch.eig now only raises; PyHessian 0.1's density() calls it
        w, v = torch.linalg.eigh(t)
        return torch.stack([w, torch.zeros_like(w)], 1), v

    torch.eig = eig
    if not hasattr(ph, "_counted"):
        original = ph.hessian_vector_product

        def counted(grads, params, v):
            ph._count += 1
            return original(grads, params, v)

        ph.hessian_vector_product, ph._counted, ph._count = counted, True, 0
    return ph


def run_pyhessian(model, loss_fn, batch, seed, what, density_iter):
    ph = pyhessian_module()
    flags = [mod.training for mod in model.modules()]
    torch.manual_seed(seed)
    ph._count = 0
    t = time.perf_counter()
    h = ph.hessian(model, loss_fn, data=batch, cuda=False)
    if what == "top5":
        values, _ = h.eigenvalues(top_n=5)  # defaults: maxIter=100, tol=1e-3
        top, lam_min = values, None
    else:
        nodes, _ = h.density(iter=density_iter, n_v=1)
        top, lam_min = [], float(min(nodes[0]))
    elapsed = time.perf_counter() - t
    model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph grads in .grad
    for mod, flag in zip(model.modules(), flags):  # and leaves the model in eval mode
        mod.training = flag
    return elapsed, ph._count, top, lam_min


# --- commands --------------------------------------------------------------------------------

def compare(names: list[str], repeats: int) -> None:
    problems = {
        "mlp-5k": ("MLP 5k, after 100 SGD steps", lambda: mlp_5k(100), "dense"),
        "mlp-5k-init": ("MLP 5k, at init", lambda: mlp_5k(0), "dense"),
        "cnn-200k": ("CNN 200k, after 30 SGD steps", cnn_200k, "lanczos"),
    }
    for name in names:
        title, build, ref_kind = problems[name]
        model, loss_fn, batch = build()
        n = sum(p.numel() for p in model.parameters())
        t = time.perf_counter()
        if ref_kind == "dense":
            ev = dense_eigenvalues(model, loss_fn, batch)
            ref_top, ref_min, rho = ev[:5], ev[-1], float(np.abs(ev).max())
            ref_note = f"exact: dense float64 Hessian ({n}x{n}), numpy eigvalsh"
        else:
            ref, rs = lanczos_reference(model, loss_fn, batch, max_iter=200)
            ref_top, ref_min, rho = ref[:5], ref[5], float(np.abs(ref).max())
            ref_note = (f"NOT exact (dense {n}x{n} too big): optdoctor Lanczos in float64, all "
                        f"{rs.lanczos_iters} steps (tol=None), seed 123")
        ref_time = time.perf_counter() - t
        print(f"\n== {name}: {title}, n={n}, batch={len(batch[1])}, torch threads={torch.get_num_threads()}")
        print(f"reference: {ref_note} ({ref_time:.1f} s)")
        top_text = np.array2string(np.asarray(ref_top), precision=5)
        print(f"reference top-5 {top_text}  lambda_min {ref_min:.5f}")

        max_iter = 60
        contenders = [
            ("optdoctor hessian_spectrum(k=5, max_iter=60, tol=1e-4)",
             lambda seed: run_optdoctor(model, loss_fn, batch, seed, max_iter)),
            ("pyhessian eigenvalues(top_n=5) [defaults]",
             lambda seed: run_pyhessian(model, loss_fn, batch, seed, "top5", 0)),
            ("pyhessian density(iter=60, n_v=1) for lambda_min",
             lambda seed: run_pyhessian(model, loss_fn, batch, seed, "density", max_iter)),
        ]
        results = {label: [] for label, _ in contenders}
        for seed in range(repeats):  # interleaved, so that load from other processes hits all alike
            for label, fn in contenders:
                results[label].append(fn(seed))
        rows = []
        for label, outs in results.items():
            e_tops, e_mins = [], []
            for out in outs:
                top, lam_min = out[2], out[3]
                e_tops.append(top_error(top, ref_top, rho) if len(top) else float("nan"))
                e_mins.append(abs(lam_min - ref_min) / rho if lam_min is not None else float("nan"))
            conv = [out[4] for out in outs if len(out) > 4]
            hvps = [o[1] for o in outs]
            rows.append((label, statistics.median(o[0] for o in outs), statistics.median(hvps),
                         max(e_tops), max(e_mins), conv, (min(hvps), max(hvps))))
        print(f"{'':56s} {'HVPs':>6s} {'wall (median)':>14s} {'err top-5':>10s} {'err l_min':>10s}")
        for label, wall, hv, e_top, e_min, conv, (lo, hi) in rows:
            note = f"  HVPs {lo}-{hi}" + (f", converged {sum(conv)}/{len(conv)}" if conv else "")
            print(f"{label:56s} {hv:6.0f} {wall * 1e3:11.1f} ms {e_top:10.1e} {e_min:10.1e}{note}")
        ours, theirs = rows[0][1], rows[1][1]
        print(f"wall-time ratio pyhessian top-5 / optdoctor: {theirs / ours:.1f}x "
              f"(errors: worst over {repeats} seeds, relative to max|lambda| = {rho:.4g})")


def backends(repeats: int, products: int = 200) -> None:
    """Per-product and set-up time of the two HVP backends (and forward-over-reverse)."""
    model, loss_fn, batch = mlp_5k(0)
    n = sum(p.numel() for p in model.parameters())
    print(f"MLP 32-64-40-10, n={n}, batch={len(batch[1])}, float32, torch threads={torch.get_num_threads()}, "
          f"median of {repeats} x {products} products")
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))

    def forward_over_reverse():
        names = [k for k, _ in model.named_parameters()]
        primals = tuple(p.detach() for p in model.parameters())
        shapes = [p.shape for p in primals]

        def grad_of(*ps):
            def loss_of(*qs):
                return loss_fn(torch.func.functional_call(model, dict(zip(names, qs)), (batch[0],)), batch[1])
            return torch.func.grad(loss_of, argnums=tuple(range(len(ps))))(*ps)

        def product(w):
            tangents, i = [], 0
            for shape in shapes:
                tangents.append(w[i:i + shape.numel()].view(shape))
                i += shape.numel()
            return torch.cat([t.reshape(-1) for t in torch.func.jvp(grad_of, primals, tuple(tangents))[1]])
        return product

    contenders = {
        "autograd (double backward, one create_graph grad)": lambda: hvp_operator(model, loss_fn, batch,
                                                                                   backend="autograd")[0],
        "func (torch.func.vjp of torch.func.grad)": lambda: hvp_operator(model, loss_fn, batch,
                                                                          backend="func")[0],
        "forward-over-reverse (torch.func.jvp of grad)": forward_over_reverse,
    }
    model.eval()
    setups = {label: [] for label in contenders}
    per = {label: [] for label in contenders}
    for _ in range(repeats):  # interleaved, so that load from other processes hits all alike
        for label, make in contenders.items():
            t0 = time.perf_counter()
            op = make()
            t1 = time.perf_counter()
            for _ in range(products):
                op(v)
            per[label].append((time.perf_counter() - t1) / products)
            setups[label].append(t1 - t0)
    for label in contenders:
        print(f"{label:52s} {statistics.median(per[label]) * 1e3:7.3f} ms/product   "
              f"set-up {statistics.median(setups[label]) * 1e3:6.2f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="compare", choices=["compare", "backends"])
    parser.add_argument("--problems", nargs="+", default=["mlp-5k", "mlp-5k-init", "cnn-200k"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # PyHessian calls loss.backward(create_graph=True); torch warns about the .grad cycle it makes
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    torch.set_num_threads(args.threads)  # small models: one thread is faster here (DESIGN.md)
    if args.command == "backends":
        backends(args.repeats)
    else:
        compare(args.problems, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
