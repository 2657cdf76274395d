"""The fault benchmark's fast subset runs end to end (benchmarks/faults/).

That the runner works, its results are well-formed and every subset case carries its
verification record; and, as a regression guard (the rules are calibrated on the whole dev split,
not on this test): the contract's promise that a healthy config gets no warning or error, and the
true cause reported on the subset's faulty cases, as it was when the guard was written (10/10).
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")
sys.path.insert(0, str(ROOT))

from benchmarks.faults import run  # noqa: E402

CAUSES = set(run.CAUSES)


def test_fast_subset_cases_are_verified():
    cases = run.load_cases("all", subset="fast")
    assert len(cases) >= 8
    assert {c["cause"] for c in cases} >= {"healthy", "lr_too_high", "lr_too_low"}
    for c in cases:
        assert c["kept"] and not c["dropped_because"]
        assert len(c["runs"]) == 3 and all(r["q_val"] is not None or r["diverged"] for r in c["runs"])
        if c["cause"] == "healthy":
            assert c["fix"] is None
        else:
            assert c["cause"] in CAUSES and c["fix"] and len(c["fix_runs"]) == 3
        assert (run.CASES / (c["config"]["name"] + ".yaml")).is_file()


@pytest.mark.slow
def test_fast_subset_runs(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run.main(["--split", "all", "--subset", "fast", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Confusion matrix" in printed and "False alarms on healthy cases" in printed
    raw = json.loads(out.read_text())
    ids = {c["id"] for c in run.load_cases("all", subset="fast")}
    assert {r["id"] for r in raw["results"]} == ids
    for r in raw["results"]:
        assert "error" not in r, r  # every subset case could be diagnosed
        assert r["exit_code"] in (0, 1) and r["status"] == "completed"
        assert r["seconds"] > 0
        for f in r["findings"]:
            assert f["cause"] in CAUSES and f["severity"] in {"info", "warning", "error"}
        serious = {f["cause"] for f in r["findings"] if f["severity"] in ("warning", "error")}
        if r["cause"] == "healthy":
            assert not serious, r  # CONTRACT.md section 2: a healthy config gets no warning or error
        else:
            assert r["cause"] in serious, r


def test_each_batch_is_split_among_its_own_families():
    """grid.SPLIT_SEEDS: every kept case's split is the split rule applied to the surviving
    families of its own cause and batch (so adding batch 3 moved no batch-1/2 case), and every
    batch with a cause of two surviving families has that cause in both splits (a dev-only
    batch, seed None, has every case in dev)."""
    from benchmarks.faults import grid

    manifest = json.loads((run.HERE / "cases.json").read_text())["cases"]
    kept = [c for c in manifest if c["kept"]]
    assert {c["batch"] for c in manifest} == set(grid.SPLIT_SEEDS) == {1, 2, 3, 4, 5, 6}
    fams: dict = {}
    for c in kept:
        fams.setdefault((c["cause"], c["batch"]), set()).add(c["family"])
    for c in kept:
        assert c["split"] == grid.split_of(c["cause"], c["family"], sorted(fams[(c["cause"], c["batch"])]), c["batch"])
    for (cause, b), fs in fams.items():
        splits = {c["split"] for c in kept if c["cause"] == cause and c["batch"] == b}
        if grid.SPLIT_SEEDS[b] is None:
            assert splits == {"dev"}, (cause, b)
        else:
            assert len(fs) < 2 or splits == {"dev", "test"}, (cause, b)
    for later in (3, 4, 5, 6):  # a family belongs to one batch: later batches hold new mechanisms only
        for b in range(1, later):
            assert not {c["family"] for c in manifest if c["batch"] == later} & \
                {c["family"] for c in manifest if c["batch"] == b}
    assert {c["cause"] for c in manifest if c["batch"] == 6} == {"healthy"}  # batch 6: noise-floor controls only
    b3 = [c for c in kept if c["batch"] == 3]
    assert len(b3) >= 30 and 3 * sum(c["cause"] == "healthy" for c in b3) >= len(b3)


def test_saved_traces_include_the_remedies_probes_under_verify(tmp_path, monkeypatch):
    """--save-traces with --verify keeps each case's traces (it was silently dropped)."""
    case = run.load_cases("all", subset="fast")[0]
    monkeypatch.setitem(run.TRACES, "save", tmp_path / "tr")
    monkeypatch.setitem(run.VERIFY, "on", True)
    monkeypatch.setitem(run.VERIFY, "folder", tmp_path)
    args = run._cli_args(case)
    assert "--verify" in args and args[-2:] == ["--save-trace", str(tmp_path / "tr" / case["config"]["name"])]
    monkeypatch.setitem(run.VERIFY, "on", False)
    assert run._cli_args(case)[-2:] == args[-2:] and "--verify" not in run._cli_args(case)


def _additive(net, x, y) -> bool:
    """A hand check, independent of optdoctor's own (optdoctor/probes/affine.py): on a float64
    copy in eval mode, f(x + y) + f(0) == f(x) + f(y) to 1e-9 of the output's scale."""
    import torch

    net = net.double().eval()
    with torch.no_grad():
        lhs, rhs = net(x + y) + net(0 * x), net(x) + net(y)
    return bool((lhs - rhs).abs().max() <= 1e-9 * rhs.abs().max().clamp_min(1e-300))


def test_every_deep_linear_saddle_case_is_a_linear_network():
    """A saddle_point family named for deep linear nets must build one: its label rests on the
    saddle at the origin of a product of matrices (Saxe et al. 2014). Until look 13 of the test
    split, linear-cnn-small-init max-pooled, which made it piecewise linear like a ReLU net (and
    optdoctor called it bad_init, the benchmark's label for tiny weights in ReLU nets)."""
    import importlib.util

    import torch
    from torch import nn

    spec = importlib.util.spec_from_file_location("faults_factories", run.HERE / "factories.py")
    fac = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fac)
    linear_ops = (nn.Linear, nn.Conv2d, nn.Identity, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    cases = [c for c in run.load_cases("all") if c["cause"] == "saddle_point" and "linear" in c["family"]]
    assert {c["family"] for c in cases} >= {"linear-cnn-small-init", "deep-linear-small-init", "linear-mlp-tiny-init"}
    for c in cases:
        m = c["config"]["model"]
        torch.manual_seed(0)
        net = getattr(fac, m["factory"].split(":")[1])(**m["args"])
        leaves = [mod for mod in net.modules() if not list(mod.children())]
        assert all(isinstance(mod, linear_ops) for mod in leaves), c["id"]
        first = next(mod for mod in net.modules() if isinstance(mod, (nn.Linear, nn.Conv2d)))
        shape = (4, first.in_channels, 8, 8) if isinstance(first, nn.Conv2d) else (4, first.in_features)
        x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        assert _additive(net, x, y), c["id"]
    torch.manual_seed(0)  # the check sees a max-pool: the same CNN with the factory's default pooling fails it
    maxpool = fac.cnn(act="identity", channels=[8, 16], init="default")
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert not _additive(maxpool, x, y)
