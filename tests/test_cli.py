"""The command line, driven through typer's CliRunner: exit codes, what goes to stdout and
what must not (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optdoctor.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
CAUSES = {"vanishing_gradients", "exploding_gradients", "ill_conditioning", "bad_init", "lr_too_high",
          "lr_too_low", "overfitting", "saddle_point", "local_minimum", "dead_relu"}

TINY = textwrap.dedent("""\
    name: tiny
    model:
      factory: {model}
      args: {{depth: 2, width: 16}}
    data:
      factory: optdoctor.data:blobs
      args: {{n_train: 128, n_val: 64}}
      batch_size: 32
    optimizer:
      name: adam
      lr: 1e-3
    probe:
      steps: 30
      hessian: {{enabled: false}}
    """)


def tiny(tmp_path, model="optdoctor.models:mlp", extra_files=None, text=None):
    for name, body in (extra_files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    p = tmp_path / "tiny.yaml"
    p.write_text(text or TINY.format(model=model))
    return p


def test_help_does_not_import_torch():
    code = "import sys; from optdoctor.cli import app; sys.argv=['optdoctor','--help'];\ntry:\n app()\nexcept SystemExit: pass\nprint('TORCH', 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "diagnose" in out.stdout and "TORCH False" in out.stdout


@pytest.mark.parametrize("args", [["rules", "list"], ["rules", "explain", "OD101"], ["rules", "validate"], ["schema"]])
def test_rule_commands_do_not_import_torch(args):
    code = f"import sys; from optdoctor.cli import app; sys.argv=['optdoctor', *{args!r}];\ntry:\n app()\nexcept SystemExit: pass\nprint('TORCH', 'torch' in sys.modules, file=sys.stderr)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TORCH False" in out.stderr, out.stderr


def test_diagnose_json_contract(tmp_path, monkeypatch):
    tiny(tmp_path)
    monkeypatch.chdir(tmp_path)  # the config given as a relative path: the report must not absolutise it
    r = runner.invoke(app, ["diagnose", "tiny.yaml", "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    d = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert isinstance(d["findings"], list)
    for f in d["findings"]:
        assert f["severity"] in ("info", "warning", "error") and f["cause"] in CAUSES
        assert {"rule", "summary", "evidence", "remedies"} <= set(f)
    assert d["symptoms"]["loss.initial"] > 0
    assert d["config"]["path"] == "tiny.yaml" and str(tmp_path) not in r.stdout


def test_text_report_verdict_first(tmp_path):
    r = runner.invoke(app, ["diagnose", str(tiny(tmp_path))])
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert "optdoctor" in lines[0] and ("OK" in lines[1] or "FAIL" in lines[1] or "WARN" in lines[1])
    assert "loss" in r.stdout and "baseline" in r.stdout


def test_bad_config_exit_2_nothing_on_stdout(tmp_path):
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("optimizer:", "optimzer:"))
    r = runner.invoke(app, ["diagnose", str(p), "--format", "json"])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert f"{p}:9:1: optimzer: unknown key 'optimzer'; did you mean 'optimizer'?" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_callable_exit_2(tmp_path):
    r = runner.invoke(app, ["diagnose", str(tiny(tmp_path, model="optdoctor.models:mpl"))])
    assert r.exit_code == 2 and "did you mean 'mlp'" in r.stderr and r.stdout == ""


def test_user_code_raising_exit_3_shows_their_frames(tmp_path):
    files = {"mymodels.py": """\
        import torch
        class Boom(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(20, 4)
            def forward(self, x):
                raise ValueError("shapes are wrong in my model")
        def boom(depth=2, width=16):
            return Boom()
        """}
    r = runner.invoke(app, ["diagnose", str(tiny(tmp_path, "mymodels.py:boom", files))])
    assert r.exit_code == 3, r.output
    assert "shapes are wrong in my model" in r.stderr
    assert "mymodels.py" in r.stderr and "line 7" in r.stderr
    assert "optdoctor/probes" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("fail_on,code", [("never", 0), ("info", 1)])
def test_fail_on(fail_on, code, tmp_path):
    # lr far too high: findings certain to exist
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("name: adam\n  lr: 1e-3", "name: sgd\n  lr: 1e4"))
    r = runner.invoke(app, ["diagnose", str(p), "--format", "json", "--fail-on", fail_on])
    assert r.exit_code == code, r.output
    assert json.loads(r.stdout)["findings"]


def test_save_trace_and_replay(tmp_path):
    p = tiny(tmp_path)
    r1 = runner.invoke(app, ["diagnose", str(p), "--format", "json", "--save-trace", str(tmp_path / "tr")])
    r2 = runner.invoke(app, ["replay", str(tmp_path / "tr"), "--format", "json"])
    assert r2.exit_code == r1.exit_code
    a, b = json.loads(r1.stdout), json.loads(r2.stdout)
    assert a["findings"] == b["findings"] and a["symptoms"] == b["symptoms"]


def test_replay_of_a_folder_without_traces(tmp_path):
    r = runner.invoke(app, ["replay", str(tmp_path)])
    assert r.exit_code == 2 and "no baseline.npz" in r.stderr


def test_rules_explain_renders_docs():
    r = runner.invoke(app, ["rules", "explain", "OD101"])
    assert r.exit_code == 0
    for title in ("What it means", "Why it happens", "How it is detected", "Known false positives", "Remedies", "Condition"):
        assert title in r.stdout


def test_rules_explain_unknown_id():
    r = runner.invoke(app, ["rules", "explain", "OD1O1"])
    assert r.exit_code == 2 and "did you mean 'OD101'" in r.stderr


def test_rules_validate_broken_file(tmp_path):
    bad = tmp_path / "OD900-x.yaml"
    bad.write_text("id: OD900\nname: x\ncause: nope\n")
    r = runner.invoke(app, ["rules", "validate", str(bad)])
    assert r.exit_code == 2 and "OD900-x.yaml:3:8: cause: unknown cause 'nope'" in r.stderr


def test_rules_test_passes_for_the_shipped_pack():
    r = runner.invoke(app, ["rules", "test"])
    assert r.exit_code == 0 and " 0 failed" in r.stdout


def test_schema_is_json():
    r = runner.invoke(app, ["schema"])
    s = json.loads(r.stdout)
    assert {"model", "data", "optimizer"} <= set(s["required"])


def test_ctrl_c_writes_what_was_measured(tmp_path):
    files = {"stopper.py": """\
        import torch
        class Stopper(torch.nn.Module):
            # stands in for a person pressing Ctrl-C at step 20 of the baseline probe
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(20, 4)
                self.calls = 0
            def forward(self, x):
                if self.training:
                    self.calls += 1
                    if self.calls == 20:
                        raise KeyboardInterrupt
                return self.lin(x)
        def stopper(depth=2, width=16):
            return Stopper()
        """}
    r = runner.invoke(app, ["diagnose", str(tiny(tmp_path, "stopper.py:stopper", files)), "--format", "json",
                            "--save-trace", str(tmp_path / "tr")])
    assert r.exit_code == 130
    d = json.loads(r.stdout)
    assert d["status"] == "interrupted"
    assert d["probes"]["baseline"]["status"] == "interrupted" and d["probes"]["baseline"]["stopped_at"] == 19
    assert (tmp_path / "tr" / "baseline.npz").exists()
    assert "interrupted" in r.stderr


def test_several_formats_from_one_run(tmp_path):
    p = tiny(tmp_path)
    r = runner.invoke(app, ["diagnose", str(p), "--check", "--format", "sarif", "--output", str(tmp_path / "r.sarif"),
                            "--output", f"junit={tmp_path / 'r.xml'}", "--output", f"json={tmp_path / 'r.json'}"])
    assert r.exit_code in (0, 1), r.output
    assert r.stdout == ""  # a plain --output takes stdout's report
    import xml.etree.ElementTree as ET

    assert json.loads((tmp_path / "r.sarif").read_text())["version"] == "2.1.0"
    assert ET.parse(tmp_path / "r.xml").getroot().tag == "testsuites"
    assert "findings" in json.loads((tmp_path / "r.json").read_text())


def test_unknown_output_format_is_a_usage_error(tmp_path):
    r = runner.invoke(app, ["diagnose", str(tiny(tmp_path)), "--output", "xml=out.xml"])
    assert r.exit_code == 2 and "unknown format 'xml'" in r.stderr


@pytest.mark.slow
def test_check_runs_are_byte_identical(tmp_path):
    p = tiny(tmp_path)
    outs = []
    for fmt in ("json", "sarif"):
        a = runner.invoke(app, ["diagnose", str(p), "--check", "--format", fmt])
        b = runner.invoke(app, ["diagnose", str(p), "--check", "--format", fmt])
        assert a.stdout == b.stdout and a.stdout
        outs.append(a.stdout)


def test_param_override_and_selection_from_the_command_line(tmp_path):
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("name: adam\n  lr: 1e-3", "name: sgd\n  lr: 1e4"))
    base = json.loads(runner.invoke(app, ["diagnose", str(p), "--format", "json"]).stdout)
    fired = {f["rule"] for f in base["findings"]}
    assert fired
    ignored = json.loads(runner.invoke(app, ["diagnose", str(p), "--format", "json", "--ignore", "OD4"]).stdout)
    assert not any(f["rule"].startswith("OD4") for f in ignored["findings"])
    assert all(o["rule"][:3] != "OD4" for o in ignored["rules"])
    bad = runner.invoke(app, ["diagnose", str(p), "--param", "OD401.gain_mn=1"])
    assert bad.exit_code == 2 and "did you mean 'gain_min'" in bad.stderr


def test_settings_file_is_honoured(tmp_path):
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("name: adam\n  lr: 1e-3", "name: sgd\n  lr: 1e4"))
    (tmp_path / "optdoctor.toml").write_text('ignore = ["OD4"]\nfail-on = "never"\n')
    r = runner.invoke(app, ["diagnose", str(p), "--format", "json"])
    assert r.exit_code == 0
    assert not any(f["rule"].startswith("OD4") for f in json.loads(r.stdout)["findings"])


def test_unknown_factory_argument_is_a_config_error(tmp_path):
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("depth: 2", "dept: 2"))
    r = runner.invoke(app, ["diagnose", str(p)])
    assert r.exit_code == 2 and "model.args.dept: unknown argument 'dept'" in r.stderr and "did you mean 'depth'" in r.stderr


def test_tensorboard_runs_per_probe_from_the_flag_and_the_config_key(tmp_path):
    p = tiny(tmp_path)
    r = runner.invoke(app, ["diagnose", str(p), "--format", "json", "--tensorboard", str(tmp_path / "tb")])
    assert r.exit_code in (0, 1)
    probes = set(json.loads(r.stdout)["probes"])
    assert {d.name for d in (tmp_path / "tb").iterdir()} == probes
    p2 = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("probe:\n", "probe:\n  tensorboard: tb2\n"))
    r = runner.invoke(app, ["diagnose", str(p2), "--format", "json"])
    assert (tmp_path / "tb2" / "baseline").is_dir()


def test_seeds_majority_and_spread(tmp_path):
    text = TINY.format(model="optdoctor.models:mlp").replace("name: adam\n  lr: 1e-3", "name: sgd\n  lr: 1e4")
    p = tiny(tmp_path, text=text.replace("probe:\n", "probe:\n  seeds: 3\n"))
    d = json.loads(runner.invoke(app, ["diagnose", str(p), "--format", "json"]).stdout)
    assert d["findings"]
    for f in d["findings"]:
        assert f["seeds"]["of"] == 3 and f["seeds"]["fired"] >= 2
        for lo, hi in f["seeds"]["spread"].values():
            assert lo <= hi
    assert any(name.startswith("s2_") for name in d["probes"])


def test_a_bad_value_for_a_builtin_factory_is_a_config_error(tmp_path):
    p = tiny(tmp_path, text=TINY.format(model="optdoctor.models:mlp").replace("depth: 2", "depth: 2, act: silu"))
    r = runner.invoke(app, ["diagnose", str(p)])
    assert r.exit_code == 2, r.output
    assert "model.args: act must be one of" in r.stderr and "got 'silu'" in r.stderr and r.stdout == ""
