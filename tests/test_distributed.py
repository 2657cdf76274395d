"""The Monitor under torchrun (gloo, CPU, 2 processes): every rank monitors, rank 0 reports, the
per-layer gradient, activation and input statistics are those of one process on the same global
batch (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_monitor.py"


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_torchrun_ddp_matches_single_process(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=240, env=_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]  # both ranks exited 0 (torchrun fails otherwise)
    assert r.stdout.count("optdoctor · monitor") == 1  # rank 0 reports, rank 1 is silent
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    s = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--single"], capture_output=True, text=True,
                       timeout=240, env=_env(), cwd=ROOT)
    assert s.returncode == 0, s.stderr[-3000:]
    ddp, single = np.load(tmp_path / "grad_norm.npy"), np.load(tmp_path / "grad_norm_single.npy")
    assert ddp.shape == single.shape == (30, 7)
    np.testing.assert_allclose(ddp, single, rtol=1e-5)  # DDP gradients are averaged: local norms are global
    np.testing.assert_allclose(np.load(tmp_path / "loss.npy"), np.load(tmp_path / "loss_single.npy"), rtol=1e-5)
    # activation statistics (dead, saturated, scale, unit diversity) and input statistics are
    # those of the whole global batch: each rank's counts and sums combined, not rank 0's half
    acts, acts_single = np.load(tmp_path / "acts.npy"), np.load(tmp_path / "acts_single.npy")
    assert acts.shape == acts_single.shape == (4, 6, 6)  # (statistic, steps 0, 5, ..., 25, activations)
    np.testing.assert_array_equal(np.isnan(acts), np.isnan(acts_single))
    assert np.isfinite(acts[0, :, 1]).all() and np.isfinite(acts[1, :, 0]).all()  # the ReLU's dead, a tanh's saturated
    assert np.isfinite(acts[3, 0]).sum() == 6  # unit diversity, first measurement
    np.testing.assert_allclose(acts, acts_single, rtol=1e-5, atol=1e-7)
    stats, stats_single = (json.loads((tmp_path / f).read_text()) for f in ("data_stats.json", "data_stats_single.json"))
    assert stats.keys() == stats_single.keys() == {"feature_scale_spread", "feature_mean_over_std", "feature_condition"}
    for k in stats:
        assert stats[k] == pytest.approx(stats_single[k], rel=1e-9)
    a = json.loads((tmp_path / "diagnosis.json").read_text())
    b = json.loads((tmp_path / "diagnosis_single.json").read_text())
    assert [f["rule"] for f in a["findings"]] == [f["rule"] for f in b["findings"]]


@pytest.mark.slow
def test_torchrun_fsdp2_sharded_norms_match_single_process(tmp_path):
    torch = pytest.importorskip("torch")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2, torch >= 2.6)
    except ImportError:
        pytest.skip("this torch has no FSDP2 (fully_shard)")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(SCRIPT), str(tmp_path), "--fsdp"], capture_output=True, text=True, timeout=240, env=_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("optdoctor · monitor") == 1
    s = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--single"], capture_output=True, text=True,
                       timeout=240, env=_env(), cwd=ROOT)
    assert s.returncode == 0, s.stderr[-3000:]
    # each rank holds half of every gradient: one all-reduce of squared norms gives the whole norm
    np.testing.assert_allclose(np.load(tmp_path / "grad_norm_fsdp.npy"), np.load(tmp_path / "grad_norm_single.npy"), rtol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "loss_fsdp.npy"), np.load(tmp_path / "loss_single.npy"), rtol=1e-5)


COLLINEAR = f"""\
name: collinear
model: {{factory: "optdoctor.models:mlp", args: {{depth: 0, in_dim: 8, out_dim: 1}}}}
data: {{factory: "{ROOT / 'tests' / 'fixtures' / 'mixdata.py'}:mixed", args: {{decades: 4.0}}, batch_size: 64}}
loss: mse
optimizer: {{name: sgd, lr: 0.1}}
probe: {{steps: 120}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["lr-too-high", "collinear"])
def test_diagnose_under_torchrun_gives_the_same_report(tmp_path, which):
    """Issue 12 item 4: probes split across 2 ranks, traces gathered: byte-identical JSON. The
    collinear config also runs a follow-up wave (the whitened rerun, OD206) across the ranks."""
    pytest.importorskip("torch")
    if which == "collinear":
        cfg = tmp_path / "collinear.yaml"
        cfg.write_text(COLLINEAR)
        cause, rule = "ill_conditioning", "OD206"
    else:
        cfg, cause, rule = ROOT / "sample_runs" / "lr-too-high.yaml", "lr_too_high", None
    args = ["-m", "optdoctor", "diagnose", str(cfg), "--format", "json", "--check"]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert one.returncode == 1, one.stderr[-2000:]  # findings at error level
    assert two.returncode == 1, two.stderr[-2000:]  # torchrun passes the ranks' exit code 1 on
    report = json.loads(one.stdout)
    assert report["findings"][0]["cause"] == cause
    if rule:
        assert report["findings"][0]["rule"] == rule and "whitened" in report["probes"]
    assert two.stdout == one.stdout  # rank 0 alone wrote stdout, and it is the same report
