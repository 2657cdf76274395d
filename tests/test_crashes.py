"""Crashes CI can trust (CONTRACT.md section 3): a crash is never exit 1.

The probe could not run (user code raised, out of memory, a CUDA error): exit 3, one message
that names the stage and what to try, and no optdoctor frames. A bug in optdoctor itself:
exit 4, the traceback and a request to report it, whatever the command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optdoctor.cli import REPORT_REQUEST, app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

CONFIG = textwrap.dedent("""\
    model:
      factory: {model}
      args: {args}
    data:
      factory: optdoctor.data:blobs
      args: {{n_train: 128, n_val: 64}}
      batch_size: 32
    optimizer: {{name: {optimizer}, lr: 0.01}}
    probe:
      steps: 4
      hessian: {{enabled: {hessian}, at: [0.0]}}
    """)

USER_MODELS = """\
import torch

class Net(torch.nn.Module):
    def __init__(self, error):
        super().__init__()
        self.lin = torch.nn.Linear(20, 4)
        self.error = error

    def forward(self, x):
        raise self.error

def oom():
    return Net(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))

def cuda_assert():
    return Net(RuntimeError("CUDA error: device-side assert triggered"))
"""


def config(tmp_path: Path, model: str = "optdoctor.models:mlp", args: str = "{depth: 2, width: 16}",
           optimizer: str = "adam", hessian: bool = False) -> Path:
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    p = tmp_path / "cfg.yaml"
    p.write_text(CONFIG.format(model=model, args=args, optimizer=optimizer, hessian=str(hessian).lower()))
    return p


def stderr_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


# --- exit 3: the probe could not run --------------------------------------------------------

# Messages as PyTorch 2.11 raised them on an H200 and on this CPU (checked on the device).
OUT_OF_MEMORY = [
    "CUDA out of memory. Tried to allocate 800.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which 139.29 GiB is free.",
    "Storage size calculation overflowed with sizes=[1000000000000, 1000000000000]",
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "80000000000000 bytes. Error code 12 (Cannot allocate memory)",
]


@pytest.mark.parametrize("exc,kind", [
    *[(RuntimeError(m), "ran out of memory") for m in OUT_OF_MEMORY],
    (MemoryError(), "ran out of memory"),
    (RuntimeError("CUDA error: device-side assert triggered"), "hit a CUDA error"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x20 and 2x3)"), None),
    (ValueError("the word out of memory in a user's message"), None),
    (KeyError("x"), None),
])
def test_exhaustion_tells_the_machine_giving_out_from_bugs(exc, kind):
    from optdoctor.errors import exhaustion

    assert exhaustion(exc) == kind


def test_exhaustion_knows_torch_classes():
    import torch

    from optdoctor.errors import exhaustion

    assert exhaustion(torch.OutOfMemoryError("CUDA out of memory.")) == "ran out of memory"
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    if hasattr(torch, "AcceleratorError"):  # what a device-side assert raised on the device (torch 2.11)
        assert exhaustion(torch.AcceleratorError("CUDA error: device-side assert triggered")) == "hit a CUDA error"



def test_model_too_big_for_memory_is_exit_3_in_one_line(tmp_path):
    """The observed crash: a built-in MLP of width 1e8. Its first layer alone (20 x 1e8
    floats, 8 GB) would take a minute to initialise before the second (1e16 floats) fails; sized
    on the meta device first, it fails at once, and that is "the probe could not run"."""
    t0 = time.perf_counter()
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, args="{width: 100000000}"))])
    assert time.perf_counter() - t0 < 30
    assert r.exit_code == 3, r.output
    lines = stderr_lines(r)
    assert len(lines) == 1, r.stderr
    assert "probe 'baseline': building the model on cpu: its weights and gradients need 142 PiB" in lines[0]
    assert lines[0].endswith("of memory is available; try a smaller model (model.args)")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_allocation_failure_of_a_built_in_model_is_exit_3(tmp_path, monkeypatch):
    """Without the size check (memory unknown), the allocator's own failure: 80 TB at once."""
    import optdoctor.probes.setup as probe_setup

    monkeypatch.setattr(probe_setup, "_available_memory", lambda device: None)
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, args="{depth: 1, width: 1000000000000}"))])
    assert r.exit_code == 3, r.output
    lines = stderr_lines(r)
    assert len(lines) == 1, r.stderr
    assert "probe 'baseline': building the model on cpu ran out of memory (DefaultCPUAllocator: can't allocate memory" in lines[0]
    assert lines[0].endswith("; try a smaller model (model.args)") and "[enforce fail" not in lines[0]


def test_data_too_big_for_memory_is_exit_3(tmp_path):
    p = config(tmp_path)
    p.write_text(p.read_text().replace("n_train: 128", "n_train: 1000000000000"))
    r = runner.invoke(app, ["diagnose", str(p)])
    assert r.exit_code == 3, r.output
    assert "the probe could not run: loading the data on cpu ran out of memory" in r.stderr
    assert "try less data (data.args)" in r.stderr and "Traceback" not in r.stderr


def test_user_model_out_of_memory_names_probe_frames_and_batch_size(tmp_path):
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, model="user_models.py:oom", args="{}"))])
    assert r.exit_code == 3, r.output
    first, *frames = stderr_lines(r)
    assert first.startswith("optdoctor: the probe could not run: probe 'baseline': the model's forward")
    assert "ran out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)" in first
    assert "try a smaller data.batch_size (now 32) or a smaller model (model.args)" in first
    assert any("user_models.py" in f for f in frames)  # where in their model it happened
    assert "optdoctor/" not in r.stderr and "Traceback" not in r.stderr


def test_cuda_error_is_exit_3(tmp_path):
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, model="user_models.py:cuda_assert", args="{}"))])
    assert r.exit_code == 3, r.output
    assert "hit a CUDA error (CUDA error: device-side assert triggered)" in r.stderr


def test_hessian_out_of_memory_suggests_its_batch(tmp_path, monkeypatch):
    from optdoctor.probes.instruments.curvature import Curvature

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(Curvature, "measure", oom)
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, hessian=True))])
    assert r.exit_code == 3, r.output
    assert "probe 'baseline': the Hessian measurement at step 0 ran out of memory" in r.stderr
    assert "probe.hessian.batch_size (now " in r.stderr and "probe.hessian.enabled: false" in r.stderr


def test_optimizer_that_cannot_step_is_exit_3(tmp_path):
    """An optimiser whose step() wants a closure optdoctor does not know to give (L-BFGS it does:
    tests/test_remedy_mechanisms.py)."""
    (tmp_path / "opt.py").write_text(
        "import torch\nclass NeedsClosure(torch.optim.SGD):\n"
        "    def step(self, closure):\n        closure()\n        return super().step()\n")
    r = runner.invoke(app, ["diagnose", str(config(tmp_path, optimizer='"opt.py:NeedsClosure"'))])
    assert r.exit_code == 3, r.output
    assert "optimizer opt.py:NeedsClosure.step() raised TypeError" in r.stderr and "closure" in r.stderr


def test_unwritable_output_is_exit_2(tmp_path):
    (tmp_path / "file").write_text("")
    r = runner.invoke(app, ["diagnose", str(config(tmp_path)), "--output", str(tmp_path / "file" / "report.json")])
    assert r.exit_code == 2, r.output
    assert "cannot write" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["diagnose", "cfg.yaml", "--bogus"], ["rules", "explain"], ["rules", "nosuch"]])
def test_bad_usage_stays_exit_2(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and REPORT_REQUEST not in r.output


# --- exit 4: a bug in optdoctor -------------------------------------------------------------


def _boom(*args, **kwargs):
    raise ZeroDivisionError("simulated bug")


@pytest.mark.parametrize("target,args", [
    ("optdoctor.engine.rules.load_rules", ["rules", "list"]),
    ("optdoctor.engine.rules.load_rules", ["rules", "validate"]),
    ("optdoctor.engine.docs.explain", ["rules", "explain", "OD101"]),
    ("optdoctor.config.schema.ProbeConfig.model_json_schema", ["schema"]),
    ("optdoctor.diagnose.orchestrate.evaluate_probes", ["diagnose", "{config}"]),
], ids=["rules-list", "rules-validate", "rules-explain", "schema", "diagnose"])
def test_internal_error_is_exit_4_with_traceback_and_report_request(target, args, tmp_path, monkeypatch):
    monkeypatch.setattr(target, _boom)
    args = [a.format(config=config(tmp_path)) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 4, r.output
    assert "Traceback (most recent call last)" in r.stderr and "ZeroDivisionError: simulated bug" in r.stderr
    assert stderr_lines(r)[-1].startswith("optdoctor: internal error (optdoctor ")
    assert stderr_lines(r)[-1].endswith(REPORT_REQUEST)
    assert r.stdout == ""


def test_bug_in_an_instrument_hook_is_exit_4_not_the_users_optimizer(tmp_path, monkeypatch):
    """Instruments hook into optimizer.step(): a bug there is optdoctor's (exit 4), even though
    the step itself runs as the user's code (exit 3 when it raises)."""
    from optdoctor.data import check_int
    from optdoctor.probes.instruments.update_ratios import UpdateRatios

    def broken(self, step):
        check_int("every", "two")  # raises ValueError inside optdoctor's own code

    monkeypatch.setattr(UpdateRatios, "after_step", broken)
    r = runner.invoke(app, ["diagnose", str(config(tmp_path))])
    assert r.exit_code == 4, r.output
    assert "optdoctor/data.py" in r.stderr and REPORT_REQUEST in r.stderr


def test_internal_error_exit_4_from_the_installed_entry_point():
    code = ("import sys, optdoctor.engine.rules as r\n"
            "def boom(*a, **k): raise ZeroDivisionError('simulated bug')\n"
            "r.load_rules = boom\n"
            "sys.argv = ['optdoctor', 'rules', 'list']\n"
            "from optdoctor.cli import main\nmain()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 4, out.stderr
    assert REPORT_REQUEST in out.stderr and "Traceback" in out.stderr
