"""Hessian-vector products of ``loss_fn(model(inputs), targets)`` on one fixed batch
(``inputs`` with ``args``/``kwargs`` attributes: ``model(*args, **kwargs)``).

The Hessian is taken w.r.t. the parameters that require grad *and* are used by the forward
pass, flattened in ``named_parameters()`` order into one vector of length ``n``. Frozen
parameters (``requires_grad=False``) are constants; unused ones (their gradient is ``None``)
are left out of ``n`` -- their Hessian rows are zero and would only add fake zero
eigenvalues (the most common crash in peers' trackers is calling ``.reshape`` on that None).

One ``create_graph`` gradient is computed once and every product is a double backward
through it (``retain_graph=True``): 1.0-1.3 gradient-costs per product, where recomputing the
gradient each time doubles that (DESIGN.md, "Hessian algorithms").

Train/eval: the one forward pass runs with every module in eval mode (BatchNorm uses its
running statistics, Dropout is the identity), so the Hessian is that of a deterministic
function. Each module's own ``training`` flag is restored right after that forward pass,
before ``hvp_operator`` returns; the products themselves only walk the recorded graph.

Backends (``backend=``), measured with ``python benchmarks/hessian.py backends --repeats 9``
on CPU, one torch thread, MLP 32-64-40-10 (5,122 parameters), batch 512, cross-entropy,
float32; median of 9 x 200 products, backends interleaved; four runs (sorted) on a 2-core box
shared with other jobs:

    autograd  double backward through one create_graph gradient
              0.80 / 0.88 / 0.96 / 1.10 ms per product, set-up 1.07 / 1.10 / 1.35 / 1.60 ms
    func      torch.func.vjp of torch.func.grad, vjp_fn reused
              0.89 / 0.98 / 1.01 / 1.06 ms per product, set-up 2.68 / 2.84 / 2.90 / 3.95 ms
    (forward-over-reverse, torch.func.jvp of grad, not offered:
              3.94 / 4.21 / 4.35 / 5.40 ms per product)

The two reverse-over-reverse backends cost the same per product to within the noise
(autograd ahead in three runs of four); autograd's set-up is 2.1-2.6x cheaper (the func backend
also needs one plain gradient to find unused parameters), so ``autograd`` is the default.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

BACKENDS = ("autograd", "func")
DEFAULT_BACKEND = "autograd"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block; each module's own flag restored after.

    Flags are restored module by module (not with ``model.train(flag)``, which would impose
    the root's flag on children that a user had deliberately set otherwise)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """Attention (``F.scaled_dot_product_attention``: Hugging Face models, ``nn.MultiheadAttention``)
    through its math kernel inside the block: the fused CPU/GPU kernels have no double backward,
    which a Hessian-vector product needs ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the old context manager
        with torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False):
            yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"batch must be a pair (inputs, targets), got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "; pass hessian_spectrum(model, loss_fn, (inputs, targets))"
    )


def call_args(inputs: Any) -> tuple[tuple, dict]:
    """The model's positional and keyword arguments: an object with ``args`` and ``kwargs`` (a
    probe's batch bound to the model, ``probes.batches.Call``), else ``inputs`` as the one
    positional argument."""
    if hasattr(inputs, "args") and hasattr(inputs, "kwargs"):
        return tuple(inputs.args), dict(inputs.kwargs)
    return (inputs,), {}


def cast_floating(x: Any, dtype: torch.dtype | None) -> Any:
    """Floating tensors (also inside tuples/lists/dicts) to ``dtype``; the rest unchanged."""
    if dtype is None:
        return x
    if torch.is_tensor(x):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(cast_floating(e, dtype) for e in x)
    if isinstance(x, dict):
        return {k: cast_floating(v, dtype) for k, v in x.items()}
    return x


class HessianOperator:
    """``H @ v`` for flat vectors ``v`` of shape (n,); counts its products in ``calls``.

    ``loss`` is the loss value on the batch (float) and ``finite`` is False when the loss was
    NaN/Inf -- then no graph is built, ``n`` still counts the trainable parameters and calling
    the operator raises."""

    def __init__(self, n: int, names: list[str], dtype: torch.dtype, device: torch.device,
                 loss: float, product: Callable[[torch.Tensor], torch.Tensor] | None, backend: str):
        self.n = n
        self.names = names
        self.dtype = dtype
        self.device = device
        self.loss = loss
        self.finite = product is not None
        self.backend = backend
        self.calls = 0
        self._product = product

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self._product is None:
            raise ValueError(f"the loss on this batch is {self.loss}; there is no Hessian to multiply by")
        if v.shape != (self.n,):
            raise ValueError(f"expected a flat vector of shape ({self.n},), got {tuple(v.shape)}")
        self.calls += 1
        return self._product(v)


def hvp_operator(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    *,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[HessianOperator, int]:
    """``(hvp, n)``: ``hvp(v)`` is the Hessian of the batch loss times the flat vector ``v``.

    ``dtype=torch.float64`` measures a float64 copy of the parameters, buffers and floating
    inputs/targets (the model itself is not touched); otherwise the parameters' own dtype.

    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.ones(4, 3), torch.zeros(4, 1)
    >>> hvp, n = hvp_operator(model, torch.nn.functional.mse_loss, (x, y))
    >>> n
    4
    >>> hvp(torch.tensor([0.0, 0.0, 0.0, 1.0]))  # d2/db2 of mean((w.x + b)^2) = 2
    tensor([2., 2., 2., 2.])
    """
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    inputs, targets = split_batch(batch)
    args, kwargs = call_args(inputs)
    args, kwargs, targets = cast_floating(args, dtype), cast_floating(kwargs, dtype), cast_floating(targets, dtype)

    # Detached aliases (no copy unless dtype changes): the model's parameters and .grad are
    # never touched, and a float64 measurement needs no deep copy of the model.
    leaves: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        t = p.detach().to(dtype) if dtype is not None else p.detach()
        if p.requires_grad:
            leaves[name] = t.requires_grad_(True)
        else:
            constants[name] = t
    for name, b in model.named_buffers():
        constants[name] = cast_floating(b, dtype)

    def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.func.functional_call(model, {**constants, **params}, args, kwargs)
        return loss_fn(out, targets)

    with eval_mode(model), twice_differentiable():
        loss = forward(leaves)
    loss_value = float(loss.detach())
    names = list(leaves)
    work_dtype = dtype or (leaves[names[0]].dtype if names else torch.get_default_dtype())
    device = leaves[names[0]].device if names else loss.device

    if not math.isfinite(loss_value):
        n = sum(t.numel() for t in leaves.values())
        return HessianOperator(n, names, work_dtype, device, loss_value, None, backend), n
    if not loss.requires_grad:  # nothing trainable reaches the loss
        return HessianOperator(0, [], work_dtype, device, loss_value, lambda v: v, backend), 0

    if backend == "autograd":
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
        used = [(name, g) for name, g in zip(names, grads) if g is not None]
        used_leaves = [leaves[name] for name, _ in used]
        flat_grad = torch.cat([g.reshape(-1).to(work_dtype) for _, g in used])  # (n,)

        def product(v: torch.Tensor) -> torch.Tensor:
            if not flat_grad.requires_grad:  # loss linear in every used parameter: H = 0
                return torch.zeros_like(v)
            hv = torch.autograd.grad(flat_grad, used_leaves, grad_outputs=v.to(flat_grad.dtype),
                                     retain_graph=True, allow_unused=True)
            return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                              for h, p in zip(hv, used_leaves)]).to(work_dtype)

    else:
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        used_names = [name for name, g in zip(names, grads) if g is not None]
        unused = {name: leaves[name].detach() for name, g in zip(names, grads) if g is None}
        primals = tuple(leaves[name].detach() for name in used_names)

        def loss_of(*ps: torch.Tensor) -> torch.Tensor:
            return forward({**unused, **dict(zip(used_names, ps))})

        grad_of = torch.func.grad(loss_of, argnums=tuple(range(len(primals))))

        def flat_grad_of(*ps: torch.Tensor) -> torch.Tensor:
            return torch.cat([g.reshape(-1).to(work_dtype) for g in grad_of(*ps)])

        with eval_mode(model), twice_differentiable():
            _, vjp_fn = torch.func.vjp(flat_grad_of, *primals)  # H symmetric: vjp = H v

        def product(v: torch.Tensor) -> torch.Tensor:
            return torch.cat([h.reshape(-1) for h in vjp_fn(v)]).to(work_dtype)

        used = [(name, None) for name in used_names]

    n = sum(leaves[name].numel() for name, _ in used)
    return HessianOperator(n, [name for name, _ in used], work_dtype, device, loss_value, product, backend), n
