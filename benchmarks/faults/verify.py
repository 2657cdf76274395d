"""Ground truth for the fault benchmark: a plain training loop, written independently of
optdoctor (only torch and the same factories), run over 3 seeds on each faulty config and on its
one-change fix, and on each healthy control.

    python benchmarks/faults/verify.py [--filter SUBSTR] [--out benchmarks/faults/cases.json]

writes the manifest (every candidate, kept or dropped with the reason and the numbers) and the
kept cases' YAML configs under cases/. The benchmark run reads the manifest; it never re-verifies.

Each run trains for VERIFY_FACTOR x the probe's steps (a realistic budget: "fails" means it
still fails when trained 2x longer than optdoctor probes it; the issue allows 2-3x and this
shared 2-core machine set the choice) and measures, on the full train
and validation sets: quality q (accuracy for classes, R^2 for regression), losses, the initial
loss, the peak minibatch loss, the train loss when the probe's budget ends, and divergence.
L_ref is the loss of the best constant predictor on the validation set (label entropy for
cross-entropy, variance for MSE, mean |y - median| for MAE): losses are compared to it.

Acceptance (every one of the 3 seeds must pass; see README.md):
- trains well: finite and q_val >= good; for healthy controls and the fixes of overfitting
  cases also: the validation loss ends within 0.05 L_ref of its minimum (no overfitting). (The
  other fixes need not be free of mild overfitting: they only have to remove the failure.)
- fails (most causes): diverged, or q_val <= fail.
- per cause, the fault must also show its signature:
  lr_too_high: fails, and diverged or the peak minibatch loss >= 1.5 x the initial one;
  lr_too_low: finite, and the train loss at the end is >= 0.7 x the initial (it barely moved);
  overfitting: train quality >= 0.98, q_train - q_val >= 0.05, validation loss rose >= 0.05 L_ref
      above its minimum (the healthy bound: a healthy control must stay below it);
  saddle_point: finite, and the train loss when the probe's budget ends is >= 0.8 x the initial
      loss (a plateau the probe sits on), while the fix trains well;
  local_minimum: fails, finite, and converged: train loss over the last third moved <= 0.02 L_ref;
  ill_conditioning, bad_init, vanishing_gradients, exploding_gradients, dead_relu: fails.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as Fn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from benchmarks.faults import grid  # noqa: E402

SEEDS = (0, 1, 2)
VERIFY_FACTOR = 2
EVAL_EVERY = 25
HEALTHY_RISE = 0.05
OVERFIT_RISE, OVERFIT_GAP, OVERFIT_TRAIN = 0.05, 0.05, 0.98
PEAK_FACTOR, LOW_DROP, PLATEAU, CONVERGED = 1.5, 0.7, 0.8, 0.02


def _factories():
    spec = importlib.util.spec_from_file_location("faults_factories", HERE / "factories.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FACT = _factories()


def _fn(spec: str):
    return getattr(FACT, spec.rpartition(":")[2])


def _loss(name: str):
    return {"cross_entropy": Fn.cross_entropy, "mse": Fn.mse_loss}.get(name) or _fn(name)


def _quality(out: torch.Tensor, y: torch.Tensor, classes: bool) -> float:
    if classes:
        return float((out.argmax(1) == y).float().mean())
    return float(1 - ((out - y) ** 2).mean() / y.var(unbiased=False))


def _ref_loss(y: torch.Tensor, loss: str) -> float:
    if loss == "cross_entropy" or loss.endswith(":ce_sum"):  # per sample: the criteria compare losses to it
        p = torch.bincount(y).float() / len(y)
        p = p[p > 0]
        return float(-(p * p.log()).sum())
    if loss == "mse":
        return float(y.var(unbiased=False))
    return float((y - y.median()).abs().mean())


def _optimizer_class(name: str):
    """A torch.optim class by name (any case), or ``package.module:Class``."""
    if ":" in name:
        import importlib

        module, _, cls = name.partition(":")
        return getattr(importlib.import_module(module), cls)
    return {c.lower(): getattr(torch.optim, c) for c in dir(torch.optim)}[name.lower()]


def _standardized(Xtr: torch.Tensor, Xva: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A remedy's ``probe.standardize_inputs``, from the schema's words: each input feature (each
    element of the non-batch dimensions: a pixel, a time step's feature) to mean 0, std 1 with the
    training set's statistics; a feature constant in the training set is only centred."""
    if not Xtr.is_floating_point():
        return Xtr, Xva
    mean, std = Xtr.mean(0, keepdim=True), Xtr.std(0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (Xtr - mean) / std, (Xva - mean) / std


def _whitened(Xtr: torch.Tensor, Xva: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A remedy's ``probe.whiten_inputs``, from the schema's words: ZCA whitening of the input,
    its non-batch dimensions flattened into features, with the training set's mean and
    covariance (the symmetric inverse square root; directions without variance map to 0)."""
    if not Xtr.is_floating_point():
        return Xtr, Xva
    flat = Xtr.reshape(len(Xtr), -1).double()
    mean = flat.mean(0)
    lam, Q = torch.linalg.eigh(torch.cov((flat - mean).T))
    keep = lam > lam.max() * 1e-10
    inv = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    W = (Q * inv) @ Q.T

    def apply(X):
        return ((X.reshape(len(X), -1).double() - mean) @ W).to(X.dtype).reshape(X.shape)

    return apply(Xtr), apply(Xva)


def _reinit(model: torch.nn.Module, scheme: str) -> None:
    """A remedy's ``probe.reinit`` (remedy_check.py), written from its documentation (the config
    schema's description; optdoctor/probes/reinit.py's docstring), not by calling it: Linear and
    convolution weights from the scheme, biases zero; recurrent input weights from the scheme,
    each gate's hidden-to-hidden block orthogonal, biases zero; normalisation layers reset;
    "default": each layer's own reset_parameters."""
    nn = torch.nn
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    draw = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
            "xavier_normal": nn.init.xavier_normal_, "orthogonal": nn.init.orthogonal_}.get(scheme)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, *convs, nn.RNN, nn.GRU, nn.LSTM)) and scheme == "default":
                m.reset_parameters()
            elif isinstance(m, (nn.Linear, *convs)):
                draw(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.RNN, nn.GRU, nn.LSTM)):
                for name, w in m.named_parameters(recurse=False):
                    if name.startswith("weight_ih"):
                        draw(w)
                    elif name.startswith("weight_hh"):
                        for block in w.split(m.hidden_size, dim=0):
                            nn.init.orthogonal_(block)
                    else:
                        w.zero_()
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
                m.reset_parameters()


def _flat_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _add_flat(params: list[torch.Tensor], vec: torch.Tensor, alpha: float = 1.0) -> None:
    """params += alpha * vec, the parameters taken as one flat vector in their order."""
    with torch.no_grad():
        i = 0
        for p in params:
            p.add_(vec[i:i + p.numel()].view_as(p).to(p.dtype), alpha=alpha)
            i += p.numel()


def _ball_kick(params: list[torch.Tensor], radius: float, gen: torch.Generator) -> None:
    """A remedy's ``probe.perturb_gd`` kick, from the schema's words (Jin et al. 2017): a point
    drawn uniformly from the ball of ``radius`` around the weights, all parameters as one vector
    (a Gaussian direction, length radius * U^(1/d))."""
    d = sum(p.numel() for p in params)
    direction = torch.randn(d, generator=gen, dtype=torch.float64)
    r = radius * float(torch.rand((), generator=gen, dtype=torch.float64)) ** (1.0 / max(d, 1))
    _add_flat(params, direction * (r / float(direction.norm())))


def _min_eigvec(model: torch.nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The smallest eigenvalue of the loss's Hessian in all trainable parameters on (X, y), and its
    unit eigenvector, from ARPACK (scipy's eigsh on Hessian-vector products by double
    backpropagation): independent of optdoctor's own Lanczos. Up to 64 parameters the Hessian is
    built densely instead (one product per column) and solved by eigh. Where ARPACK does not
    converge, its best estimate so far (or NaN: then no step)."""
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    params = _flat_params(model)
    n = sum(p.numel() for p in params)
    was = model.training
    model.eval()
    grads = torch.autograd.grad(loss_fn(model(X), y), params, create_graph=True)
    flat_g = torch.cat([g.reshape(-1) for g in grads])

    def hvp(v):
        vt = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1), dtype=flat_g.dtype)
        hv = torch.autograd.grad(flat_g @ vt, params, retain_graph=True, allow_unused=True)
        return np.concatenate([(h if h is not None else torch.zeros_like(p)).detach().double().reshape(-1).numpy()
                               for h, p in zip(hv, params)])

    try:
        if n <= 64:
            H = np.stack([hvp(e) for e in np.eye(n)], axis=1)
            lam, Q = np.linalg.eigh((H + H.T) / 2)
            value, vec = float(lam[0]), Q[:, 0]
        else:
            try:
                lam, Q = eigsh(LinearOperator((n, n), matvec=hvp, dtype=np.float64), k=1, which="SA", tol=1e-4,
                               maxiter=max(500, 20 * n), v0=np.random.default_rng(0).standard_normal(n))
            except ArpackNoConvergence as e:  # what it has so far, or no step at all
                if not len(e.eigenvalues):
                    return math.nan, torch.zeros(n, dtype=torch.float64)
                lam, Q = e.eigenvalues, e.eigenvectors
            value, vec = float(lam[0]), Q[:, 0]
    finally:
        model.train(was)
    return value, torch.as_tensor(vec / np.linalg.norm(vec))


def _curvature_step(model: torch.nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor, opt, ncfg: dict) -> dict:
    """A remedy's ``probe.negative_curvature_step`` at one step, from its documentation
    (optdoctor/config/schema.py, optdoctor/probes/interventions.py's docstring): when the Hessian
    on the Hessian batch has lambda_min < 0, move along its eigenvector, signed downhill
    (g.v <= 0), by the shortest of radius * 2^k (k = 0..doublings) that buys at least half the
    best decrease of that batch's loss, if any lowers it; under SGD (with or without momentum) a
    length is refused where a plain gradient step at the optimizer's rate from there would raise
    the loss (the rate must stay stable at the new curvature)."""
    lam, v = _min_eigvec(model, loss_fn, X, y)
    if not lam < 0:
        return {"lambda_min": lam, "eta": 0.0}
    params = _flat_params(model)
    was = model.training
    model.eval()
    lr = opt.param_groups[0]["lr"] if isinstance(opt, torch.optim.SGD) else None

    def loss_here() -> float:
        with torch.no_grad():
            return float(loss_fn(model(X), y))

    def grad_here() -> list[torch.Tensor]:
        gs = torch.autograd.grad(loss_fn(model(X), y), params, allow_unused=True)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]

    def stable(val: float) -> bool:
        gs = grad_here()
        with torch.no_grad():
            for p, g in zip(params, gs):
                p.sub_(g, alpha=lr)
        after = loss_here()
        with torch.no_grad():
            for p, g in zip(params, gs):
                p.add_(g, alpha=lr)
        return math.isfinite(after) and after <= val

    try:
        base = loss_here()
        if float(torch.cat([g.reshape(-1) for g in grad_here()]).double() @ v.double()) > 0:
            v = -v
        tried = []
        for k in range(ncfg.get("doublings", 8) + 1):
            eta = ncfg.get("radius", 0.05) * 2.0 ** k
            _add_flat(params, v, eta)
            val = loss_here()
            if lr is not None and math.isfinite(val) and val < base and not stable(val):
                val = math.inf
            _add_flat(params, v, -eta)
            tried.append((eta, base - val if math.isfinite(val) else -math.inf))
        good = [(eta, d) for eta, d in tried if d > 0]
        if not good:
            return {"lambda_min": lam, "eta": 0.0}
        top = max(d for _, d in good)
        eta = min(e for e, d in good if d >= 0.5 * top)
        _add_flat(params, v, eta)
        return {"lambda_min": lam, "eta": eta}
    finally:
        model.train(was)


def train(cfg: dict, seed: int, steps: int) -> dict:
    """One plain training run; the numbers the acceptance criteria need."""
    (Xtr, ytr), (Xva, yva) = _fn(cfg["data"]["factory"])(**cfg["data"]["args"])
    if cfg["probe"].get("whiten_inputs"):  # a remedy's patch (remedy_check.py): all features jointly
        Xtr, Xva = _whitened(Xtr, Xva)
    elif cfg["probe"].get("standardize_inputs"):  # a remedy's patch (remedy_check.py): per feature, train statistics
        Xtr, Xva = _standardized(Xtr, Xva)
    if cfg["probe"].get("standardize_targets") and ytr.is_floating_point():  # likewise, per output (the schema's words)
        mean, std = ytr.mean(0, keepdim=True), ytr.std(0, keepdim=True).clamp_min(1e-12)
        ytr, yva = (ytr - mean) / std, (yva - mean) / std
    clip = cfg["probe"].get("clip_grad_norm")  # likewise
    classes = not ytr.is_floating_point()
    torch.manual_seed(seed)
    model = _fn(cfg["model"]["factory"])(**cfg["model"]["args"])
    if cfg["probe"].get("reinit"):  # a remedy's patch (remedy_check.py)
        _reinit(model, cfg["probe"]["reinit"])
    loss_fn = _loss(cfg["loss"])
    o = cfg["optimizer"]
    opt_cls = _optimizer_class(o["name"])
    opt = opt_cls(model.parameters(), lr=o["lr"], **o.get("args", {}))
    closure_based = opt_cls is torch.optim.LBFGS  # its step() re-evaluates the loss (line search)
    sched = None
    if cfg.get("schedule"):
        sched = getattr(torch.optim.lr_scheduler, cfg["schedule"]["name"])(opt, **cfg["schedule"].get("args", {}))
    bs = cfg["data"]["batch_size"]
    g = torch.Generator().manual_seed(seed)
    probe_steps = cfg["probe"]["steps"]

    def evaluate():
        model.eval()
        with torch.no_grad():
            otr, ova = model(Xtr), model(Xva)
            r = (float(loss_fn(otr, ytr)), float(loss_fn(ova, yva)), _quality(otr, ytr, classes),
                 _quality(ova, yva, classes))
        model.train()
        return r

    curve = [(0, *evaluate())]  # (step, train loss, val loss, q_train, q_val)
    # a remedy's probe.early_stopping (remedy_check.py), from its documentation: stop after
    # `patience` validations (here the plain loop's own, every EVAL_EVERY steps) without a new
    # validation-loss minimum; with restore_best, end with the best checkpoint's weights
    stopping = cfg["probe"].get("early_stopping")
    if stopping is not None:
        stopping = {"patience": 3, "restore_best": True, **stopping}
        best = (curve[0][2], copy.deepcopy(model.state_dict()))
        bad = 0
    # a remedy's in-loop interventions (remedy_check.py), from their documentation: perturbed
    # gradient descent after any step whose gradient norm fell below the threshold (at least
    # `interval` steps apart), a negative-curvature step after the given fractions of this run's
    # steps (on the first hessian.batch_size training items, as the probe's Hessian batch)
    kick = cfg["probe"].get("perturb_gd")
    kick_gen, last_kick, kicks = torch.Generator().manual_seed(seed + 7919), -math.inf, 0
    trainable = _flat_params(model)
    ncs = cfg["probe"].get("negative_curvature_step")
    nc_at = {max(1, round(f * steps)) for f in (ncs or {}).get("at", [0.25])} if ncs is not None else set()
    hb = (cfg["probe"].get("hessian") or {}).get("batch_size", 128)
    nc_batch = (Xtr[:hb], ytr[:hb]) if ncs is not None else None
    nc_done = []
    first = peak = None
    diverged = False
    perm, pos, step = torch.randperm(len(Xtr), generator=g), 0, 0
    while step < steps:
        if pos + bs > len(Xtr):
            perm, pos = torch.randperm(len(Xtr), generator=g), 0
        idx = perm[pos:pos + bs] if len(Xtr) >= bs else perm
        pos += bs
        if closure_based:
            def closure(idx=idx):
                opt.zero_grad()
                batch_loss = loss_fn(model(Xtr[idx]), ytr[idx])
                batch_loss.backward()
                return batch_loss

            lv = float(opt.step(closure).detach())  # the loss at the step's start, as below
        else:
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            lv = loss.item()
        first = lv if first is None else first
        peak = lv if peak is None else max(peak, lv)
        if not math.isfinite(lv) or lv > 1e6 * max(first, 1e-3):
            diverged = True
            break
        if not closure_based:
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        if kick is not None:
            grads = [p.grad.reshape(-1) for p in trainable if p.grad is not None]
            gnorm = float(torch.cat(grads).norm()) if grads else math.inf
            if gnorm < kick["threshold"] and step + 1 - last_kick >= kick.get("interval", 10):
                _ball_kick(trainable, kick["radius"], kick_gen)
                last_kick, kicks = step + 1, kicks + 1
        if step + 1 in nc_at:
            nc_done.append(_curvature_step(model, loss_fn, *nc_batch, opt, ncs))
        if sched is not None:
            sched.step()
        step += 1
        if step % EVAL_EVERY == 0 or step == steps:
            curve.append((step, *evaluate()))
            if not all(math.isfinite(v) for v in curve[-1][1:3]):
                diverged = True
                break
            if stopping is not None:
                if curve[-1][2] < best[0]:
                    best, bad = (curve[-1][2], copy.deepcopy(model.state_dict())), 0
                else:
                    bad += 1
                if bad >= stopping["patience"]:
                    break
    if stopping is not None and stopping["restore_best"] and not diverged:
        model.load_state_dict(best[1])
        curve.append((step, *evaluate()))  # the run ends with the best checkpoint
    last = curve[-1]
    at_probe = min(curve, key=lambda c: abs(c[0] - probe_steps))
    two_thirds = min(curve, key=lambda c: abs(c[0] - 2 * steps // 3))
    val_min = min(c[2] for c in curve if math.isfinite(c[2])) if not diverged else float("nan")

    def r(v):
        return None if v is None or not math.isfinite(v) else float(f"{v:.5g}")

    return {
        "seed": seed, "steps": step, "diverged": diverged,
        "loss_init": r(curve[0][1]), "loss_probe_end": r(at_probe[1]), "loss_final": r(last[1]),
        "loss_two_thirds": r(two_thirds[1]), "val_init": r(curve[0][2]), "val_min": r(val_min),
        "val_final": r(last[2]), "peak_batch_loss_ratio": r(peak / first) if first else None,
        "q_train": r(last[3]), "q_val": r(last[4]), "l_ref": r(_ref_loss(yva, cfg["loss"])),
        **({"kicks": kicks} if kick is not None else {}),
        **({"curvature_steps": nc_done} if ncs is not None else {}),
    }


def trains_well(run: dict, good: float, check_rise: bool = True) -> tuple[bool, str]:
    if run["diverged"]:
        return False, "diverged"
    if run["q_val"] is None or run["q_val"] < good:
        return False, f"q_val {run['q_val']} < good {good}"
    rise = run["val_final"] - run["val_min"]
    if check_rise and rise > HEALTHY_RISE * run["l_ref"]:
        return False, f"val loss rose {rise:.3g} > {HEALTHY_RISE} L_ref"
    return True, ""


def shows_fault(cause: str, run: dict, fail: float) -> tuple[bool, str]:
    fails = run["diverged"] or run["q_val"] is None or run["q_val"] <= fail
    finite = not run["diverged"]
    if cause == "lr_too_high":
        ok = fails and (run["diverged"] or (run["peak_batch_loss_ratio"] or 0) >= PEAK_FACTOR)
        return ok, "" if ok else "no failure with a loss spike/divergence"
    if cause == "lr_too_low":
        ok = finite and run["loss_final"] >= LOW_DROP * run["loss_init"]
        return ok, "" if ok else "train loss moved more than 30%"
    if cause == "overfitting":
        if not finite:
            return False, "diverged"
        rise = run["val_final"] - run["val_min"]
        ok = (run["q_train"] >= OVERFIT_TRAIN and run["q_train"] - run["q_val"] >= OVERFIT_GAP
              and rise >= OVERFIT_RISE * run["l_ref"])
        return ok, "" if ok else (f"q_train {run['q_train']}, q_val {run['q_val']}, val rise {rise:.3g} "
                                  f"(L_ref {run['l_ref']})")
    if cause == "saddle_point":
        ok = finite and run["loss_probe_end"] >= PLATEAU * run["loss_init"]
        return ok, "" if ok else "no plateau over the probe's budget"
    if cause == "local_minimum":
        ok = fails and finite and abs(run["loss_final"] - run["loss_two_thirds"]) <= CONVERGED * run["l_ref"]
        return ok, "" if ok else "did not fail, diverged, or did not converge"
    return fails, "" if fails else f"q_val {run['q_val']} > fail {fail}"


def verify(case: grid.Case) -> dict:
    steps = VERIFY_FACTOR * case.config["probe"]["steps"]
    rec = {"id": case.id, "cause": case.cause, "mechanism": case.mechanism, "family": case.family,
           "split": case.split, "batch": case.batch, "good": case.good, "fail": case.fail, "verify_steps": steps,
           "config": case.config, "fix": case.fix}
    t0 = time.perf_counter()
    reasons = []
    try:
        if case.cause == "healthy":
            rec["runs"] = [train(case.config, s, steps) for s in SEEDS]
            for run in rec["runs"]:
                ok, why = trains_well(run, case.good)
                if not ok:
                    reasons.append(f"healthy seed {run['seed']}: {why}")
        else:
            rec["runs"] = [train(case.config, s, steps) for s in SEEDS]
            for run in rec["runs"]:
                ok, why = shows_fault(case.cause, run, case.fail)
                if not ok:
                    reasons.append(f"fault seed {run['seed']}: {why}")
            if not reasons:  # the fix only matters once the fault is shown
                fixed = grid.patch(case.config, case.fix)
                rec["fix_runs"] = [train(fixed, s, steps) for s in SEEDS]
                for run in rec["fix_runs"]:
                    ok, why = trains_well(run, case.good, check_rise=case.cause == "overfitting")
                    if not ok:
                        reasons.append(f"fix seed {run['seed']}: {why}")
    except Exception as e:  # a broken candidate is dropped, with the error as its reason
        reasons.append(f"error: {type(e).__name__}: {e}")
    rec["kept"] = not reasons
    rec["dropped_because"] = reasons
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def write_yaml(rec: dict, folder: Path) -> None:
    import yaml

    head = (f"# {rec['id']}  (true cause: {rec['cause']}; mechanism family: {rec['family']}; split: {rec['split']})\n"
            f"# generated by benchmarks/faults/verify.py from grid.py; one-change fix: {json.dumps(rec['fix'])}\n")
    (folder / (rec["config"]["name"] + ".yaml")).write_text(head + yaml.safe_dump(rec["config"], sort_keys=False))


def stats(recs: list[dict]) -> str:
    """Kept/dropped per (cause, mechanism family, split), with the drop reasons counted by kind."""
    import collections
    import re

    rows = collections.OrderedDict()
    for r in recs:
        key = (r["cause"], r["family"], r["split"])
        row = rows.setdefault(key, {"kept": 0, "dropped": 0, "why": collections.Counter()})
        row["kept" if r["kept"] else "dropped"] += 1
        for why in {re.sub(r"(?<![\w.])-?\d+(\.\d+)?(e[-+]?\d+)?", "#", re.sub(r"seed \d+: ", "", w))
                    for w in r["dropped_because"]}:
            row["why"][why] += 1
    lines = ["| cause | mechanism family | split | kept | dropped | why dropped (cases) |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for (cause, fam, split), row in rows.items():
        why = "; ".join(f"{w} ({n})" for w, n in row["why"].most_common())
        lines.append(f"| {cause} | {fam} | {split} | {row['kept']} | {row['dropped']} | {why} |")
    kept = [r for r in recs if r["kept"]]
    lines.append("")
    lines.append(f"Kept {len(kept)} of {len(recs)} candidates; healthy {sum(r['cause'] == 'healthy' for r in kept)} "
                 f"({sum(r['cause'] == 'healthy' for r in kept) / max(len(kept), 1):.0%}); dev "
                 f"{sum(r['split'] == 'dev' for r in kept)}, test {sum(r['split'] == 'test' for r in kept)}.")
    return "\n".join(lines)


def assign_splits(recs: list[dict]) -> None:
    """The split rule (grid.split_of) applied, per cause and batch, to the families that kept at
    least one case, so that a cause whose dev (or test) families were all dropped still gets one
    in each split when it has two surviving families. Families with nothing kept keep their
    candidate split. Batches are split separately: adding batch 2 leaves batch 1's split as it was."""
    kept_fams: dict[tuple[str, int], list[str]] = {}
    for r in recs:
        r.setdefault("batch", 1)
        if r["kept"]:
            kept_fams.setdefault((r["cause"], r["batch"]), []).append(r["family"])
    for r in recs:
        if r["kept"]:
            r["split"] = grid.split_of(r["cause"], r["family"], kept_fams[(r["cause"], r["batch"])], r["batch"])


def write_manifest(out: Path, by_id: dict) -> list[dict]:
    order = {c.id: i for i, c in enumerate(grid.all_cases())}
    allrecs = sorted((r for r in by_id.values() if r["id"] in order), key=lambda r: order[r["id"]])
    assign_splits(allrecs)
    manifest = {"about": "fault benchmark manifest: every candidate of grid.py with its verification "
                         "(benchmarks/faults/verify.py); kept cases are the benchmark",
                "seeds": list(SEEDS), "verify_factor": VERIFY_FACTOR, "eval_every": EVAL_EVERY, "cases": allrecs}
    out.write_text(json.dumps(manifest, indent=1) + "\n")
    return allrecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", action="append", default=[], help="only candidates whose id contains this (repeatable)")
    ap.add_argument("--only-dropped", action="store_true",
                    help="of those, only the ones the manifest has dropped or lacks (after relaxing a criterion)")
    ap.add_argument("--out", default=str(HERE / "cases.json"))
    ap.add_argument("--dry", action="store_true", help="print the outcome, write nothing")
    ap.add_argument("--stats", action="store_true", help="print kept/dropped per mechanism from the manifest; train nothing")
    args = ap.parse_args()
    if args.stats:
        print(stats(json.loads(Path(args.out).read_text())["cases"]))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    partial = bool(args.filter or args.only_dropped)
    old = {r["id"]: r for r in json.loads(out.read_text())["cases"]} if out.exists() and partial else {}
    cases = [c for c in grid.all_cases() if not args.filter or any(f in c.id for f in args.filter)]
    if args.only_dropped:
        cases = [c for c in cases if not old.get(c.id, {}).get("kept")]
    cases.sort(key=lambda c: c.split != "dev")  # dev first: the split rules are tuned on
    recs = []
    for i, c in enumerate(cases):
        rec = verify(c)
        recs.append(rec)
        if not args.dry:  # the manifest grows case by case: an interrupted run keeps its work
            write_manifest(out, {**old, **{r["id"]: r for r in recs}})
        q = [r["q_val"] for r in rec["runs"]] if "runs" in rec else []
        fq = [r["q_val"] for r in rec.get("fix_runs", [])]
        print(f"[{i + 1}/{len(cases)}] {'KEPT' if rec['kept'] else 'drop'} {c.id} {rec['seconds']}s q={q} fix_q={fq} "
              f"{'; '.join(rec['dropped_because'][:2])}", flush=True)
    if args.dry:
        return
    allrecs = write_manifest(out, {**old, **{r["id"]: r for r in recs}})
    folder = HERE / "cases"
    folder.mkdir(exist_ok=True)
    for p in folder.glob("*.yaml"):
        p.unlink()
    for r in allrecs:
        if r["kept"]:
            write_yaml(r, folder)
    print(f"kept {sum(r['kept'] for r in allrecs)} of {len(allrecs)}")


if __name__ == "__main__":
    main()
