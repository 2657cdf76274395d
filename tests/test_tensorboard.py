"""TensorBoard logs (optdoctor/report/tensorboard/), read back the way TensorBoard reads them:
with its EventAccumulator, and through the HTTP data API of a real ``tensorboard`` server."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from optdoctor.diagnose import Diagnosis, summarize
from optdoctor.findings import Finding, RuleOutcome
from optdoctor.trace import ProbeSet, Trace
from optdoctor.report.tensorboard import (
    flatten_config,
    scalar_points,
    write_diagnosis,
    write_probe,
)

KEEP_ALL = {"scalars": 0, "histograms": 0, "tensors": 0, "compressedHistograms": 0}
LAYERS = ["embed", "blocks.0.fc", "blocks.1.fc", "head"]
ACTS = ["act0", "act1"]


def declarations() -> dict:
    """``meta["series"]`` as the runner writes it: the loop's and every instrument's declarations."""
    from optdoctor.probes.instruments import default_instruments
    from optdoctor.probes.runner import LOOP_SERIES

    evaluation = dict(at=[0], forward=None, loss_fn=None, train=None)
    insts = default_instruments(10, evaluation=evaluation)
    return {s.name: s.as_meta() for s in list(LOOP_SERIES) + [s for i in insts for s in i.series] if s.per != "raw"}


def synthetic_trace(probe: str = "baseline", steps: int = 30, status: str = "completed") -> Trace:
    """A trace shaped like the runner's, with values whose every entry is distinct."""
    rng = np.random.default_rng(0)
    s = np.arange(steps)
    ck = np.arange(0, steps + 1, 5)
    ak = np.arange(0, steps, 3)
    grad = 10.0 ** (-np.arange(len(LAYERS))[::-1][None, :] - rng.random((steps, len(LAYERS))))
    dead = rng.random((len(ak), len(ACTS)))
    dead[:, 1] = np.nan  # a tanh layer: dead fraction does not apply
    t = Trace(probe, meta={"lr": 0.1, "steps": steps, "layers": LAYERS, "act_layers": ACTS,
                           "act_kinds": ["relu", "tanh"], "n_params": 1000, "optimizer": "sgd",
                           "series": declarations()}, status=status)
    t.series = {
        "loss.train": (s, 2.0 - 0.01 * s + rng.random(steps) * 1e-3),
        "loss.train_eval": (ck, 2.0 - 0.01 * ck),
        "loss.val": (ck, 2.1 - 0.005 * ck),
        "acc.train": (ck, 0.25 + 0.01 * ck),
        "lr": (s, np.full(steps, 0.1)),
        "grad.norm": (s, grad),
        "grad.global_norm": (s, np.sqrt((grad ** 2).sum(1))),
        "update.ratio": (s, grad * 1e-2),
        "weight.norm": (s, 1.0 + rng.random((steps, len(LAYERS)))),
        "act.dead_frac": (ak, dead),
        "act.sat_frac": (ak, rng.random((len(ak), len(ACTS)))),
        "act.scale": (ak, rng.random((len(ak), len(ACTS)))),
        "custom.thing": (s, rng.random(steps)),  # a series the writer has no name for
    }
    t.hessian = [
        {"step": 0.0, "lambda_max": 5.0, "lambda_min": -0.5, "lambda_min_rel": -0.1, "trace": 12.0,
         "negative_mass": 0.2, "effective_condition": 40.0, "lambda_2": 4.0, "lambda_3": 3.0,
         "finite": 1.0, "n_params": 1000.0,
         "density": {"nodes": [-0.5, 0.0, 0.01, 3.0, 5.0], "weights": [0.2, 0.5, 0.2, 0.05, 0.05]}},
        {"step": float(steps), "lambda_max": 9.0, "lambda_min": float("nan"), "lambda_min_rel": float("nan"),
         "trace": 20.0, "negative_mass": float("nan"), "effective_condition": float("nan"),
         "lambda_2": 8.0, "lambda_3": 7.5, "finite": 1.0, "n_params": 1000.0},
    ]
    return t


def finding(rule="OD101", cause="vanishing_gradients", summary="Gradients vanish toward the input | x0.1 per layer.",
            evidence=None, remedies=("Use ReLU instead of sigmoid.", "Add residual connections.")):
    return Finding(rule=rule, name=cause.replace("_", "-"), cause=cause, severity="error", confidence=0.9,
                   summary=summary, evidence=evidence or {"grad.depth_ratio": 1e-6, "loss.rel_drop": 0.003},
                   remedies=list(remedies), blame="model.args.act", onset=3)


def diagnosis(probes: ProbeSet, findings=None, status="completed", loaded=None) -> Diagnosis:
    findings = [finding()] if findings is None else findings
    symptoms = {"loss.final": 1.9, "grad.depth_ratio": 1e-6, "loss.rel_drop": 0.003,
                "hess.lambda_min_rel": float("nan"), "loss.spike": float("inf")}
    outcomes = [RuleOutcome(f.rule, f.name, f.cause, "fired") for f in findings]
    outcomes.append(RuleOutcome("OD305", "dead-relu", "dead_relu", "not_evaluated", "missing symptoms: act.dead_frac.max"))
    return Diagnosis("sample", "sample.yaml", findings, outcomes, symptoms, probes, status, 1.5, loaded,
                     summary=summarize(probes, findings))


def accumulate(folder: Path) -> EventAccumulator:
    ea = EventAccumulator(str(folder), size_guidance=KEEP_ALL)
    ea.Reload()
    return ea


def plugin_content(ea: EventAccumulator, plugin: str) -> dict[str, bytes]:
    try:
        return ea.PluginTagToContent(plugin)
    except KeyError:  # no summary of that plugin in the run
        return {}


def assert_series_equal(ea: EventAccumulator, tag: str, steps: np.ndarray, values: np.ndarray) -> None:
    events = ea.Scalars(tag)
    assert [e.step for e in events] == [int(s) for s in steps], tag
    np.testing.assert_allclose([e.value for e in events], values.astype(np.float32), rtol=1e-6, err_msg=tag)


# ---------------------------------------------------------------------------------- write_probe
def test_every_series_is_written_with_its_steps_and_values(tmp_path):
    t = synthetic_trace()
    folder = write_probe(t, tmp_path)
    assert folder == tmp_path / "baseline"
    ea = accumulate(folder)
    scalars = set(ea.Tags()["scalars"])
    steps, grad = t.series["grad.norm"]
    for j, layer in enumerate(LAYERS):  # every layer, every step, in forward-order columns
        assert_series_equal(ea, f"grad_norm/{layer}", steps, grad[:, j])
        assert_series_equal(ea, f"grad_norm_log10/{layer}", steps, np.log10(grad[:, j]))
        assert_series_equal(ea, f"update_ratio/{layer}", steps, t.values("update.ratio")[:, j])
        assert_series_equal(ea, f"weight_norm/{layer}", steps, t.values("weight.norm")[:, j])
    for series, tag in [("loss.train", "loss/train"), ("loss.val", "loss/val"), ("loss.train_eval", "loss/train_eval"),
                        ("acc.train", "accuracy/train"), ("lr", "lr"), ("grad.global_norm", "grad_norm/global"),
                        ("custom.thing", "other/custom/thing")]:
        assert_series_equal(ea, tag, *t.series[series])
    ak, sat = t.series["act.sat_frac"]
    for j, layer in enumerate(ACTS):
        assert_series_equal(ea, f"activation/saturated_frac/{layer}", ak, sat[:, j])
        assert_series_equal(ea, f"activation/scale/{layer}", ak, t.values("act.scale")[:, j])
    # NaN where a statistic does not apply: no tag at all, rather than a NaN curve
    assert_series_equal(ea, "activation/dead_frac/act0", ak, t.values("act.dead_frac")[:, 0])
    assert "activation/dead_frac/act1" not in scalars


def test_hessian_measurements_become_tags_over_the_checkpoints(tmp_path):
    t = synthetic_trace(steps=30)
    ea = accumulate(write_probe(t, tmp_path))
    assert_series_equal(ea, "hessian/lambda_max", np.array([0, 30]), np.array([5.0, 9.0]))
    assert_series_equal(ea, "hessian/top_k/1", np.array([0, 30]), np.array([5.0, 9.0]))
    assert_series_equal(ea, "hessian/top_k/2", np.array([0, 30]), np.array([4.0, 8.0]))
    assert_series_equal(ea, "hessian/top_k/3", np.array([0, 30]), np.array([3.0, 7.5]))
    assert_series_equal(ea, "hessian/trace", np.array([0, 30]), np.array([12.0, 20.0]))
    for tag in ("hessian/lambda_min", "hessian/negative_mass", "hessian/effective_condition"):
        assert [e.step for e in ea.Scalars(tag)] == [0]  # the NaN of the second measurement is skipped
    assert not any(tag.startswith(("hessian/finite", "hessian/n_params", "hessian/step")) for tag in ea.Tags()["scalars"])


def test_histograms_of_gradient_norms_and_spectral_density(tmp_path):
    t = synthetic_trace(steps=30)
    ea = accumulate(write_probe(t, tmp_path))
    hists = ea.Histograms("grad_norm_dist/log10_across_layers")
    assert [h.step for h in hists] == list(range(30))  # fewer steps than HIST_CHECKPOINTS: all
    h = hists[7].histogram_value
    logs = np.log10(t.values("grad.norm")[7])
    assert h.num == len(LAYERS) and sum(h.bucket) == len(LAYERS)
    assert h.min == pytest.approx(logs.min()) and h.max == pytest.approx(logs.max())
    dens = ea.Histograms("hessian/density")
    assert [d.step for d in dens] == [0]  # only the first measurement kept its nodes/weights
    assert sum(dens[0].histogram_value.bucket) == pytest.approx(1000.0)  # weights x n_params
    assert dens[0].histogram_value.min == pytest.approx(-0.5) and dens[0].histogram_value.max == pytest.approx(5.0)


def test_per_element_gradient_histograms_when_the_trace_has_them(tmp_path):
    t = synthetic_trace(steps=10)
    edges = np.linspace(-10, 2, 13)
    counts = np.zeros((2, len(LAYERS), 12))
    counts[:, :, 4] = 100.0
    counts[1, 0, 5] = 50.0
    t.series["grad.hist"] = (np.array([0, 9]), counts)
    t.meta["grad.hist_edges"] = edges.tolist()
    ea = accumulate(write_probe(t, tmp_path))
    for layer in LAYERS:
        assert [h.step for h in ea.Histograms(f"grad_dist/{layer}")] == [0, 9]
    h = ea.Histograms(f"grad_dist/{LAYERS[0]}")[1].histogram_value
    assert list(h.bucket) == list(counts[1, 0]) and list(h.bucket_limit) == list(edges[1:])


def test_a_diverged_probe_is_written_without_a_single_non_finite_value(tmp_path):
    t = synthetic_trace("lr_x10", steps=20, status="diverged")
    t.stopped_at = 12
    loss = t.values("loss.train").copy()
    loss[10:] = [1e30, 1e39, np.inf, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]
    grad = t.values("grad.norm").copy()
    grad[11:] = np.nan
    grad[10, 0] = 0.0  # log10(0) = -inf
    t.series["loss.train"] = (t.steps("loss.train"), loss)
    t.series["grad.norm"] = (t.steps("grad.norm"), grad)
    t.series["grad.global_norm"] = (t.steps("grad.norm"), np.full(20, np.inf))
    ea = accumulate(write_probe(t, tmp_path))
    tags = ea.Tags()["scalars"]
    for tag in tags:
        assert all(math.isfinite(e.value) for e in ea.Scalars(tag)), tag
    assert [e.step for e in ea.Scalars("loss/train")] == list(range(11))  # 1e30 fits float32, 1e39 does not
    assert len(ea.Scalars(f"grad_norm/{LAYERS[0]}")) == 11 and len(ea.Scalars(f"grad_norm_log10/{LAYERS[0]}")) == 10
    assert "grad_norm/global" not in tags
    text = ea.Tensors("probe")[0].tensor_proto.string_val[0].decode()
    assert "diverged at step 12" in text


def test_odd_traces_are_written_without_raising(tmp_path):
    t = Trace("odd", meta={"layers": ["a"], "series": declarations()}, status="diverged", stopped_at=0)
    t.series = {
        "grad.norm": (np.arange(3), np.zeros((3, 1))),  # log10(0): no log10 tag, no histogram
        "update.ratio": (np.arange(3), np.array([np.nan, np.inf, -np.inf])),  # 1-D where 2-D is usual
        "loss.val": (np.zeros(0, dtype=np.int64), np.zeros(0)),
        "weight.norm": (np.arange(2), np.ones((2, 3))),  # more columns than meta["layers"] names
    }
    t.hessian = [{"step": float("nan"), "lambda_max": 1.0},
                 {"step": 2.0, "lambda_max": float("inf"), "density": {"nodes": [1.0], "weights": [0.0]}},
                 {"step": 3.0, "density": {"grid": [0.0], "values": [1.0]}}]
    ea = accumulate(write_probe(t, tmp_path))
    assert sorted(ea.Tags()["scalars"]) == ["grad_norm/a", "weight_norm/0", "weight_norm/1", "weight_norm/2"]
    assert ea.Tags()["histograms"] == []
    del t.meta["series"]  # a trace without declarations (saved by hand): nothing is lost, tags are generic
    ea = accumulate(write_probe(t, tmp_path / "plain"))
    assert sorted(ea.Tags()["scalars"]) == ["other/grad/norm/a", "other/weight/norm/0", "other/weight/norm/1",
                                            "other/weight/norm/2"]


def test_rewriting_a_run_replaces_its_event_file(tmp_path):
    t = synthetic_trace()
    write_probe(t, tmp_path)
    write_probe(t, tmp_path)
    assert len(list((tmp_path / "baseline").glob("events.out.tfevents.*"))) == 1
    assert len(accumulate(tmp_path / "baseline").Scalars("loss/train")) == 30


def test_run_name_overrides_the_probe_name_and_cannot_escape_the_logdir(tmp_path):
    assert write_probe(synthetic_trace(), tmp_path, run_name="seed1") == tmp_path / "seed1"
    assert write_probe(synthetic_trace(), tmp_path, run_name="../x") == tmp_path / ".._x"


def test_an_empty_trace_writes_an_empty_run(tmp_path):
    ea = accumulate(write_probe(Trace("baseline", status="interrupted"), tmp_path))
    assert ea.Tags()["scalars"] == [] and ea.Tags()["tensors"] == ["probe"]


# ---------------------------------------------------------------------------------- write_diagnosis
def written_diagnosis(tmp_path, **kw) -> tuple[Diagnosis, dict[str, EventAccumulator]]:
    probes = ProbeSet({name: synthetic_trace(name, status=st) for name, st in
                       [("baseline", "completed"), ("lr_x0.1", "completed"), ("lr_x10", "diverged")]})
    diag = diagnosis(probes, **kw)
    assert write_diagnosis(diag, tmp_path) == tmp_path
    runs = {p.name: accumulate(p) for p in sorted(tmp_path.iterdir())}
    return diag, runs


def test_one_run_per_probe_and_the_diagnosis_on_the_baseline(tmp_path):
    f2 = finding("OD401", "lr_too_high", "The loss spikes.", {"loss.spike": 3.0}, ["Lower the learning rate."])
    diag, runs = written_diagnosis(tmp_path, findings=[finding(), f2])
    assert sorted(runs) == ["baseline", "lr_x0.1", "lr_x10"]
    assert runs["lr_x0.1"].Tags()["tensors"] == ["probe"]
    text = runs["baseline"].Tensors("diagnosis")[0].tensor_proto.string_val[0].decode()
    for f in diag.findings:
        assert f.summary.replace("|", r"\|") in text and f.cause in text and f.severity in text
        for r in f.remedies:
            assert r in text
    assert "| `grad.depth_ratio` | 1.00e-06 |" in text  # the evidence table, numbers as in the text report
    assert "OD305 dead-relu: not evaluated" in text
    assert "| lr_x10 | 0.1 | 30 | diverged |" in text


def test_key_symptoms_are_scalars_and_hparams_metrics_and_the_config_is_hparams(tmp_path):
    from optdoctor.config.schema import LoadedConfig, ProbeConfig

    cfg = ProbeConfig.model_validate({"model": {"factory": "optdoctor.models:mlp", "args": {"depth": 8, "act": "sigmoid"}},
                                      "data": {"factory": "optdoctor.data:blobs"}, "optimizer": {"name": "sgd", "lr": 0.1}})
    diag, runs = written_diagnosis(tmp_path, loaded=LoadedConfig(config=cfg, path="c.yaml", base_dir="."))
    ea = runs["baseline"]
    assert_series_equal(ea, "symptom/loss.final", np.array([30]), np.array([1.9]))
    assert_series_equal(ea, "symptom/grad.depth_ratio", np.array([30]), np.array([1e-6]))
    tags = ea.Tags()["scalars"]
    assert "symptom/hess.lambda_min_rel" not in tags and "symptom/loss.spike" not in tags  # NaN, inf
    content = plugin_content(ea, "hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.1
    assert start.hparams["model.args.depth"].number_value == 8
    assert start.hparams["model.args.act"].string_value == "sigmoid"
    assert start.hparams["probe.hessian.enabled"].bool_value is True
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {"symptom/loss.final", "symptom/grad.depth_ratio", "symptom/loss.rel_drop"}
    assert {h.name for h in exp.hparam_infos} == set(start.hparams)
    for other in ("lr_x0.1", "lr_x10"):
        assert plugin_content(runs[other], "hparams") == {}


def test_custom_scalars_layout_puts_every_layer_of_a_family_on_one_chart(tmp_path):
    _, runs = written_diagnosis(tmp_path)
    raw = runs["baseline"].Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(raw)
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    for title in ("gradient norm per layer", "log10 gradient norm per layer", "update ratio |dW|/|W| per layer",
                  "dead fraction per layer", "loss"):
        assert title in charts
    tags = runs["baseline"].Tags()["scalars"]
    matched = [t for t in tags if re.match(charts["gradient norm per layer"][0], t)]
    assert sorted(matched) == sorted(f"grad_norm/{layer}" for layer in LAYERS)  # not grad_norm/global
    assert sorted(t for t in tags if re.match(charts["loss"][0], t)) == ["loss/train", "loss/train_eval", "loss/val"]
    assert "hessian top-k eigenvalues" in charts
    assert layout.category[0].chart[0].title == "log10 gradient norm per layer"


def test_an_interrupted_diagnosis_is_written_with_an_unknown_session_status(tmp_path):
    probes = ProbeSet({"baseline": synthetic_trace(status="interrupted")})
    write_diagnosis(diagnosis(probes, findings=[], status="interrupted"), tmp_path)
    ea = accumulate(tmp_path / "baseline")
    end = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_end_info"])
    assert end.session_end_info.status == 0  # STATUS_UNKNOWN (the enum has no "aborted")
    assert "No problem found" in ea.Tensors("diagnosis")[0].tensor_proto.string_val[0].decode()
    assert len(ea.Scalars("loss/train")) == 30


def test_a_run_that_fails_to_write_does_not_stop_the_others(tmp_path, monkeypatch):
    import optdoctor.report.tensorboard.writing as tb

    real = tb.scalar_points

    def flaky(trace):
        if trace.probe == "lr_x0.1":
            raise OSError("disk full")
        return real(trace)

    monkeypatch.setattr(tb, "scalar_points", flaky)
    probes = ProbeSet({n: synthetic_trace(n) for n in ("baseline", "lr_x0.1", "lr_x10")})
    with pytest.raises(OSError, match="disk full"):
        write_diagnosis(diagnosis(probes), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline", "lr_x10"]
    assert "diagnosis" in accumulate(tmp_path / "baseline").Tags()["tensors"]


def test_flatten_config_keeps_scalars_strings_and_bools():
    flat = flatten_config({"optimizer": {"lr": 0.1, "args": {"momentum": 0.9}}, "name": "x", "flag": True,
                           "lst": [1, 2], "none": None, "bad": float("nan"), "model": {"args": {}}})
    assert flat == {"optimizer.lr": 0.1, "optimizer.args.momentum": 0.9, "name": "x", "flag": True}


# ---------------------------------------------------------------------------------- a real probe
@pytest.fixture(scope="module")
def real_probes(tmp_path_factory) -> ProbeSet:
    from optdoctor.config import load_config
    from optdoctor.probes.runner import run_probes
    from optdoctor.probes.setup import prepare

    cfg = tmp_path_factory.mktemp("cfg") / "deep-sigmoid.yaml"
    cfg.write_text("name: deep-sigmoid\n"
                   "model: {factory: optdoctor.models:mlp, args: {depth: 4, width: 16, act: sigmoid}}\n"
                   "data: {factory: optdoctor.data:blobs, batch_size: 32}\n"
                   "optimizer: {name: sgd, lr: 0.1}\n"
                   "probe: {steps: 20, variants: {perturb: false}}\n")
    return run_probes(prepare(load_config(cfg)))


def test_a_real_probe_set_round_trips_through_the_event_files(tmp_path, real_probes):
    write_diagnosis(diagnosis(real_probes), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(real_probes.traces)
    for name, t in real_probes.traces.items():
        ea = accumulate(tmp_path / name)
        if name != "lr_range":  # the LR range test records only the loss and the learning rate
            steps, grad = t.series["grad.norm"]
            assert len(t.meta["layers"]) == grad.shape[1] == 5
            for j, layer in enumerate(t.meta["layers"]):
                assert_series_equal(ea, f"grad_norm/{layer}", steps, grad[:, j])
        assert_series_equal(ea, "loss/train", *t.series["loss.train"])
        assert set(ea.Tags()["scalars"]) == set(scalar_points(t)) | (
            {tag for tag in ea.Tags()["scalars"] if tag.startswith("symptom/")} if name == "baseline" else set())
    base = accumulate(tmp_path / "baseline")
    assert "hessian/lambda_max" in base.Tags()["scalars"]
    assert len(base.Scalars("hessian/lambda_max")) == len(real_probes.baseline.hessian)


# ---------------------------------------------------------------------------------- the real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_tensorboard_server_serves_the_runs_and_tags(tmp_path):
    exe = shutil.which("tensorboard") or (str(Path(sys.executable).with_name("tensorboard"))
                                          if Path(sys.executable).with_name("tensorboard").exists() else None)
    if exe is None:
        pytest.skip("the tensorboard executable is not installed")
    probes = ProbeSet({n: synthetic_trace(n) for n in ("baseline", "lr_x10")})
    write_diagnosis(diagnosis(probes), tmp_path / "logs")
    port = free_port()
    server = subprocess.Popen([exe, "--logdir", str(tmp_path / "logs"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())

    try:
        deadline = time.monotonic() + 60
        runs = None
        while time.monotonic() < deadline:  # up, and done loading both runs
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited: {server.stderr.read().decode()[-2000:]}")
            try:
                runs = get("/data/runs")
                tags = get("/data/plugin/scalars/tags")
                if sorted(runs) == ["baseline", "lr_x10"] and all(
                        "grad_norm/head" in tags.get(r, {}) for r in runs):
                    break
            except OSError:
                pass
            time.sleep(0.25)
        else:
            pytest.fail(f"tensorboard did not serve both runs within 60 s (runs: {runs})")
        assert {"loss/train", "grad_norm/embed", "grad_norm/global", "symptom/loss.final"} <= set(tags["baseline"])
        assert "symptom/loss.final" not in tags["lr_x10"]
        q = urllib.parse.urlencode({"run": "baseline", "tag": "grad_norm/embed"})
        points = get(f"/data/plugin/scalars/scalars?{q}")  # [[wall_time, step, value], ...]
        steps, grad = probes.baseline.series["grad.norm"]
        assert [p[1] for p in points] == steps.tolist()
        np.testing.assert_allclose([p[2] for p in points], grad[:, 0].astype(np.float32), rtol=1e-6)
        layout = get("/data/plugin/custom_scalars/layout")
        assert "gradient norm per layer" in json.dumps(layout)
        assert "diagnosis" in get("/data/plugin/text/tags")["baseline"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_markdown_and_the_text_report_show_the_same_probe_table(tmp_path):
    """One final-loss definition (the smoothed one the symptoms use), not the last step's."""
    from optdoctor.report import REPORTERS
    from optdoctor.report.numbers import fmt
    from optdoctor.report.tensorboard import diagnosis_markdown
    from optdoctor.symptoms._util import final_loss

    probes = ProbeSet({name: synthetic_trace(name) for name in ("baseline", "lr_x0.1")})
    probes.traces["lr_x0.1"].series["loss.train"][1][-1] = 7.0  # a last-step spike: smoothed final != last
    diag = diagnosis(probes)
    md, text = diagnosis_markdown(diag), REPORTERS["text"](diag)
    for name, t in probes.traces.items():
        span = f"{fmt(float(t.values('loss.train')[0]))} → {fmt(final_loss(t))}"
        assert re.search(rf"\| {re.escape(name)} \|.*\| {re.escape(span)} \|", md), md
        assert re.search(rf"{re.escape(name)} .*{re.escape(span)}", text), text
    assert "→ 7" not in md and "→ 7" not in text
