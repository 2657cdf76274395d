"""Data as users have it and model outputs as they come (optdoctor/probes/batches.py), issue 11.

Unit tests of the pieces (sources, the reader of items, binding inputs to forward, picking the
output), then whole diagnoses through the CLI on the shapes real projects use: dict items,
DataLoaders, IterableDatasets, models returning tuples / dicts / their own loss, a dataset too
big to materialise. Each "fires" case has its near miss beside it.
"""

from __future__ import annotations

import collections
import json
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from typer.testing import CliRunner

from optdoctor.cli import app
from optdoctor.config import load_config
from optdoctor.errors import ProbeError
from optdoctor.probes.batches import (
    EVAL_CAP,
    PERMUTE_MAX,
    Inputs,
    LoaderSource,
    MapSource,
    Reader,
    TensorSource,
    bind,
    call_model,
    eval_indices,
    index_stream,
    make_source,
    model_loss,
    select_output,
)
from optdoctor.probes.runner import ProbeSpec, run_probe
from optdoctor.probes.setup import prepare

CPU = torch.device("cpu")
PLAIN = "{factory: user.py:plain}"
runner = CliRunner()


# --------------------------------------------------------------------------- user code

USER = '''
import collections
import itertools
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

READS = [0]


def blobs(n, seed=0, d=8, k=4):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=torch.Generator().manual_seed(123))
    y = torch.randint(k, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


class Dicts(Dataset):
    """Hugging Face shape: {"pixel_values": x, "labels": y}, a plain int label."""
    def __init__(self, n, seed=0, keys=("pixel_values", "labels")):
        self.x, self.y = blobs(n, seed)
        self.keys = keys

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        READS[0] += 1
        return {self.keys[0]: self.x[i], self.keys[1]: int(self.y[i]), "id": f"item{i}"}


Pair = collections.namedtuple("Pair", "x y")


class Named(Dicts):
    def __getitem__(self, i):
        return Pair(self.x[i], int(self.y[i]))


class Stream(IterableDataset):
    def __init__(self, n, seed=0):
        self.x, self.y = blobs(n, seed)

    def __iter__(self):
        return iter(zip(self.x, self.y))


class Lazy(Dataset):
    """n items, each made on access; counts reads."""
    def __init__(self, n):
        self.n = n
        self.centres = 2 * torch.randn(4, 8, generator=torch.Generator().manual_seed(123))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        READS[0] += 1
        g = torch.Generator().manual_seed(int(i))
        y = int(torch.randint(4, (1,), generator=g))
        return self.centres[y] + torch.randn(8, generator=g), y


def dicts(n_train=256, keys=("pixel_values", "labels")):
    return Dicts(n_train, keys=keys), Dicts(128, seed=1, keys=keys)


def named():
    return Named(256), Named(128, seed=1)


def loaders(shuffle=True):
    tr, va = dicts()
    return DataLoader(tr, batch_size=32, shuffle=shuffle), DataLoader(va, batch_size=50)


def stream():
    return Stream(256), Stream(128, seed=1)


def lazy(n_train=10_000_000):
    return Lazy(n_train), Lazy(2000)


class Net(nn.Module):
    def __init__(self, mode="tensor"):
        super().__init__()
        self.mode = mode
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, pixel_values, labels=None):
        z = self.body(pixel_values)
        if self.mode == "tuple":
            return z, z.detach().abs().mean()
        if self.mode == "aux_first":
            return z.detach().abs().mean(), z
        loss = nn.functional.cross_entropy(z, labels) if labels is not None else None
        if self.mode == "dict":
            return {"logits": z} if loss is None else {"loss": loss, "logits": z}
        if self.mode == "no_loss":
            return {"logits": z}
        return z


class Plain(nn.Module):
    """forward(self, x): takes no target keyword."""
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.body(x)


def net(mode="tensor"):
    return Net(mode)


def plain():
    return Plain()
'''

CONFIG = """\
model: {model}
data: {{factory: {data}{data_extra}}}
loss: {loss}
optimizer: {{name: adam, lr: 3e-3}}
probe: {{steps: 20, hessian: {{enabled: {hessian}}}, variants: {{lr_factors: []}}, lr_range: false}}
"""


def config(tmp_path, model="{factory: user.py:net}", data="user.py:dicts", data_extra=", batch_size: 32", loss="cross_entropy",
           hessian="false", extra=""):
    (tmp_path / "user.py").write_text(USER)
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG.format(model=model, data=data, data_extra=data_extra, loss=loss, hessian=hessian) + extra)
    return p


def cli(path) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, ["diagnose", str(path), "--format", "json", "--check"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = None
    return result.exit_code, report, result.stderr


# --------------------------------------------------------------------------- sources


def test_index_stream_is_a_seeded_permutation_per_epoch():
    a = list(zip(range(6), index_stream(10, 4, seed=3)))
    b = list(zip(range(6), index_stream(10, 4, seed=3)))
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    first_epoch = torch.cat([a[0][1], a[1][1]])
    assert len(set(first_epoch.tolist())) == 8  # no repeats within an epoch; the incomplete batch is dropped


def test_index_stream_of_a_huge_dataset_is_cheap_and_in_range():
    t = time.perf_counter()
    idx = next(index_stream(50 * PERMUTE_MAX, 64, seed=0))
    assert time.perf_counter() - t < 0.5 and idx.shape == (64,) and int(idx.max()) < 50 * PERMUTE_MAX


def test_eval_sample_is_all_items_or_a_spread_bounded_subset():
    assert torch.equal(eval_indices(100), torch.arange(100))
    big = eval_indices(10_000_000)
    assert len(big) == EVAL_CAP and len(set(big.tolist())) == EVAL_CAP
    assert int(big.max()) > 9_000_000 and int(big.min()) < 1_000_000  # not the head of a class-sorted dataset


class _Sorted(Dataset):
    """Sorted by class, as many datasets on disk are: the head is all class 0."""

    def __len__(self):
        return 4000

    def __getitem__(self, i):
        return torch.full((2,), float(i)), i // 1000


def test_map_source_reads_only_the_items_used():
    class Counting(_Sorted):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return super().__getitem__(i)

    src = make_source(Counting(), "data", 16, CPU)
    assert isinstance(src, MapSource) and Counting.reads == 0
    it = src.train_batches(seed=0)
    x, y = next(it)
    assert x.shape == (16, 2) and y.dtype == torch.int64 and Counting.reads == 16
    sample = src.sample()
    assert sum(len(b[1]) for b in sample) == EVAL_CAP and Counting.reads == 16 + EVAL_CAP
    assert set(torch.cat([b[1] for b in sample]).tolist()) == {0, 1, 2, 3}  # every class in the sample
    src.sample()
    assert Counting.reads == 16 + EVAL_CAP  # read once


def test_loader_source_keeps_the_loaders_batches_and_is_seeded():
    ds = torch.utils.data.TensorDataset(torch.arange(40.0)[:, None], torch.arange(40))
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    src = make_source(loader, "data", None, CPU)
    assert isinstance(src, LoaderSource) and src.batch_size == 8 and src.n == 40
    state = torch.get_rng_state()
    run = lambda seed: [b[1].tolist() for _, b in zip(range(12), src.train_batches(seed))]  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c
    assert torch.equal(state, torch.get_rng_state())  # the probe's global RNG is not touched
    assert sorted(sum(a[:5], [])) == list(range(40)) and sorted(sum(a[5:10], [])) == list(range(40))  # epochs


def test_iterable_dataset_is_batched_and_restarted():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(torch.tensor([float(i)]), i % 3) for i in range(10)])

    src = make_source(Stream(), "data", 4, CPU)
    assert src.n is None and src.batch_size == 4
    sizes = [len(b[1]) for _, b in zip(range(6), src.train_batches(0))]
    assert sizes == [4, 4, 2, 4, 4, 2]


def test_tensors_stay_the_fast_path():
    X, y = torch.randn(50, 3), torch.randint(2, (50,))
    src = make_source((X, y), "data", 16, CPU)
    assert isinstance(src, TensorSource) and src.everything()[0] is X
    with pytest.raises(ProbeError, match="X has 50 samples but y has 49"):
        make_source((X, y[:49]), "data", 16, CPU)
    with pytest.raises(ProbeError, match="a Dataset, a DataLoader or a tuple"):
        make_source("nope", "data", 16, CPU)


# --------------------------------------------------------------------------- items -> inputs, target


def test_reader_defaults_match_the_common_item_shapes():
    x, y = torch.randn(4, 3), torch.arange(4)
    inp, t = Reader()({"pixel_values": x, "labels": y, "id": ["a"] * 4})
    assert inp.kwargs.keys() == {"pixel_values"} and t is y
    inp, t = Reader()({"input_ids": x, "attention_mask": x, "label": y})
    assert list(inp.kwargs) == ["input_ids", "attention_mask"] and t is y
    inp, t = Reader()({"feats": x, "y": y})  # no known input name: every tensor but the target
    assert list(inp.kwargs) == ["feats"] and t is y
    inp, t = Reader()((x, x, y))
    assert len(inp.args) == 2 and t is y
    Pair = collections.namedtuple("Pair", "image label")
    inp, t = Reader()(Pair(x, y))
    assert list(inp.kwargs) == ["image"] and t is y


def test_reader_takes_the_names_it_is_given():
    x, y = torch.randn(4, 3), torch.arange(4)
    inp, t = Reader(inputs="a", target="b")({"a": x, "b": y, "c": x})
    assert list(inp.kwargs) == ["a"] and t is y
    inp, t = Reader(inputs=[1], target=0)((y, x, x))
    assert inp.args == (x,) and t is y


@pytest.mark.parametrize("item, kw, message", [
    ({"x": 1, "labels": 2}, {"target": "label"}, "'label' is not a key"),  # near miss of labels
    ({"x": 1, "score": 2}, {}, "which key of the items is the target"),
    ((1, 2), {"target": "labels"}, "name their elements by index"),
    ((1, 2), {"inputs": [5]}, "out of range"),
])
def test_reader_names_that_do_not_fit_say_so(item, kw, message):
    with pytest.raises(ProbeError, match=message):
        Reader(**kw)(item)


# --------------------------------------------------------------------------- inputs -> model


class _Two(nn.Module):
    def forward(self, x, mask=None, labels=None):
        return x * (mask if mask is not None else 1), labels


@pytest.mark.parametrize("shape", [(40, 3), (40, 4, 3), (40, 2, 3, 3)])
def test_standardize_inputs_scales_every_element_on_its_own_like_a_hand_loop(shape):
    """probe.standardize_inputs: each element of the non-batch dimensions is a feature (what
    DataStats measures and the finding cites): mean 0, std 1 from the sample, against a loop over
    elements; a feature constant in the sample is only centred (a later batch that lights it is
    not blown up); dict items as tensors."""
    g = torch.Generator().manual_seed(0)
    d = int(np.prod(shape[1:]))
    X = torch.randn(shape, generator=g) * torch.logspace(-3, 3, d).reshape(1, *shape[1:]) + 5.0
    X.reshape(len(X), -1)[:, 1] = 2.0  # a constant feature
    y = torch.zeros(len(X))
    reader = Reader(None, None)
    reader.fit_standardize([(X[:20], y[:20]), (X[20:], y[20:])])
    out = reader((X, y))[0].args[0]
    flat, got = X.reshape(len(X), -1).double(), out.reshape(len(X), -1).double()
    for j in range(d):
        col = flat[:, j].tolist()
        mean = sum(col) / len(col)
        std = (sum((v - mean) ** 2 for v in col) / (len(col) - 1)) ** 0.5
        ref = [(v - mean) / (std if std > 0 else 1.0) for v in col]
        tol = 1e-6 * (1 + abs(mean) / (std or 1.0))  # applied in the input's float32
        assert got[:, j].tolist() == pytest.approx(ref, rel=1e-5, abs=tol)
    lit = X.clone()
    lit.reshape(len(X), -1)[0, 1] = 3.0
    assert reader((lit, y))[0].args[0].reshape(len(X), -1)[0, 1].item() == pytest.approx(1.0)
    keyed = Reader(None, "y")
    keyed.fit_standardize([{"x": X, "y": y}])
    assert torch.allclose(keyed({"x": X, "y": y})[0].kwargs["x"], out)


def test_bind_passes_keys_that_forward_names_by_name_and_the_rest_positionally():
    x, m, y = torch.ones(2), torch.zeros(2), torch.arange(2)
    c = bind(_Two(), Inputs((), {"pixel_values": x, "mask": m}))
    assert c.args == (x,) and c.kwargs == {"mask": m}
    c = bind(_Two(), Inputs((), {"pixel_values": x}, target=y, target_key="label"))
    assert c.kwargs["labels"] is y  # "label" is not a parameter: the keyword forward takes
    out, labels = call_model(_Two(), Inputs((x,), {}, target=y))
    assert labels is y
    with pytest.raises(ProbeError, match="take the target as a keyword"):
        bind(nn.Linear(2, 2), Inputs((x,), {}, target=y))


def test_select_output_defaults_and_choices():
    z = torch.randn(3, 4)

    @dataclass
    class Out:
        loss: torch.Tensor
        logits: torch.Tensor

    assert select_output(z) is z
    assert select_output((z, 1)) is z
    assert select_output({"hidden": 1, "logits": z}) is z
    assert select_output(Out(torch.tensor(1.0), z)) is z
    assert select_output((1, z), 1) is z and select_output({"pred": z}, "pred") is z
    with pytest.raises(ProbeError, match="model.output is 'logit'.*keys logits"):
        select_output({"logits": z}, "logit")


def test_model_loss_takes_what_the_model_computed():
    assert model_loss({"loss": torch.tensor(2.0), "logits": 1}).item() == 2.0
    assert model_loss((torch.tensor(3.0), None)).item() == 3.0
    with pytest.raises(ProbeError, match="returned no scalar loss"):
        model_loss({"logits": torch.randn(2, 3)})


# --------------------------------------------------------------------------- whole probes


def test_dict_items_train_like_the_same_tensors(tmp_path):
    """Same items as tensors or as dicts in a Dataset: the same batches, the same losses."""
    for name in "ab":
        (tmp_path / name).mkdir()
    a = prepare(load_config(config(tmp_path / "a", model=PLAIN)))
    (tmp_path / "b" / "more.py").write_text(
        "from user import dicts\n\ndef as_tensors():\n    tr, va = dicts()\n    return (tr.x, tr.y), (va.x, va.y)\n")
    b = prepare(load_config(config(tmp_path / "b", model=PLAIN, data="more.py:as_tensors")))
    ta, _ = run_probe(a, ProbeSpec(steps=10))
    tb, _ = run_probe(b, ProbeSpec(steps=10))
    for k in ("loss.train", "loss.val", "acc.val"):
        np.testing.assert_array_equal(ta.values(k), tb.values(k), err_msg=k)


def test_a_probe_reads_a_bounded_number_of_items(tmp_path):
    setup = prepare(load_config(config(tmp_path, model=PLAIN, data="user.py:lazy", hessian="true")))
    reads = setup.model_factory.__globals__["READS"]
    before = reads[0]
    trace, _ = run_probe(setup, ProbeSpec(steps=20, hessian_steps=[0, 20]))
    assert trace.status == "completed" and trace.meta["n_train"] == 10_000_000
    # 20 training batches of 32, the validation sample (1024 of 2000 items), the Hessian batch
    # (128) and the discovery batch (32); the training sample was read when the data was prepared
    assert reads[0] - before == 20 * 32 + EVAL_CAP + 128 + 32
    before = reads[0]
    run_probe(setup, ProbeSpec(steps=20, hessian_steps=[0, 20]))
    assert reads[0] - before == 20 * 32  # the next probe reads its training batches only


def test_iterables_and_loaders_probe_with_unknown_length(tmp_path):
    setup = prepare(load_config(config(tmp_path, model=PLAIN, data="user.py:stream")))
    trace, _ = run_probe(setup, ProbeSpec(steps=12))
    assert trace.status == "completed" and trace.meta["n_train"] is None and trace.meta["batch_size"] == 32


def test_same_seed_same_batches_through_a_shuffling_loader(tmp_path):
    setup = prepare(load_config(config(tmp_path, data="user.py:loaders", data_extra="")))
    a, _ = run_probe(setup, ProbeSpec(steps=15, seed=2))
    b, _ = run_probe(setup, ProbeSpec(steps=15, seed=2))
    np.testing.assert_array_equal(a.values("loss.train"), b.values("loss.train"))


def test_curvature_of_a_dict_output_model_with_keyword_inputs(tmp_path):
    setup = prepare(load_config(config(tmp_path, model="{factory: user.py:net, args: {mode: dict}}", loss="model", hessian="true")))
    trace, _ = run_probe(setup, ProbeSpec(steps=5, hessian_steps=[0, 5]))
    assert len(trace.hessian) == 2 and "hessian_errors" not in trace.meta
    assert trace.hessian[0]["lambda_max"] > 0


# --------------------------------------------------------------------------- through the CLI (issue 11's rows)


@pytest.mark.parametrize("model, kw", [
    pytest.param(PLAIN, {}, id="dict items"),
    pytest.param(PLAIN, dict(data="user.py:named"), id="namedtuple items"),
    pytest.param(PLAIN, dict(data="user.py:loaders", data_extra=""), id="two DataLoaders, no batch_size"),
    pytest.param(PLAIN, dict(data="user.py:stream"), id="an IterableDataset"),
    pytest.param("{factory: user.py:net, args: {mode: tuple}}", {}, id="a tuple output"),
    pytest.param("{factory: user.py:net, args: {mode: dict}}", {}, id="a dict output with logits"),
    pytest.param("{factory: user.py:net, args: {mode: dict}}", dict(loss="model", data="user.py:loaders", data_extra=""),
                 id="its own loss (loss: model)"),
    pytest.param("{factory: user.py:net, args: {mode: aux_first}, output: 1}", {}, id="model.output picks element 1"),
])
def test_real_world_shapes_get_a_diagnosis(tmp_path, model, kw):
    code, report, err = cli(config(tmp_path, model=model, hessian="true", **kw))
    assert code in (0, 1), err
    assert isinstance(report["findings"], list) and "Traceback" not in err


@pytest.mark.parametrize("model, loss, code, message", [
    # the near miss of "a tuple output": logits are element 1, the scalar extra element 0
    ("{factory: user.py:net, args: {mode: aux_first}}", "cross_entropy", 3, "the loss"),
    ("{factory: user.py:net, args: {mode: dict}, output: logit}", "cross_entropy", 3, "model.output is 'logit'"),
    ("{factory: user.py:net, args: {mode: no_loss}}", "model", 3, "returned no scalar loss"),
    ("{factory: user.py:plain}", "model", 3, "take the target as a keyword"),
])
def test_outputs_that_do_not_fit_are_clear_errors(tmp_path, model, loss, code, message):
    got, report, err = cli(config(tmp_path, model=model, loss=loss))
    assert got == code and message in err, err
    assert "Traceback (most recent call last)" not in err or "optdoctor/" not in err


@pytest.mark.parametrize("data_extra, key, message", [
    (", batch_size: 32, target: label", "data.target", "did you mean 'labels'"),
    (", batch_size: 32, inputs: [pixel_value]", "data.inputs", "did you mean 'pixel_values'"),
])
def test_names_that_do_not_fit_the_items_are_config_errors(tmp_path, data_extra, key, message):
    code, report, err = cli(config(tmp_path, model=PLAIN, data_extra=data_extra))
    assert code == 2 and key in err and message in err, err


def test_data_loaders_keep_their_batch_size(tmp_path):
    code, _, err = cli(config(tmp_path, model=PLAIN, data="user.py:loaders", data_extra=", batch_size: 16"))
    assert code == 2 and "data.batch_size" in err and "their own batch size (32)" in err


def test_huge_map_style_dataset_starts_probing_at_once(tmp_path):
    """10 million items, each made on access: preparing reads the evaluation samples only."""
    loaded = load_config(config(tmp_path, model=PLAIN, data="user.py:lazy"))
    t = time.perf_counter()
    setup = prepare(loaded)
    assert time.perf_counter() - t < 3.0
    assert setup.train.n == 10_000_000 and setup.n_classes == 4


HF_USER = '''
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertForSequenceClassification


class Tokens(Dataset):
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 50, (n, 12), generator=g)
        self.y = (self.ids[:, 0] > 27).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.y[i]}


def data():
    return DataLoader(Tokens(256), batch_size=32, shuffle=True), DataLoader(Tokens(128, 1), batch_size=64)


def bert():
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2, attn_implementation="eager")
    return BertForSequenceClassification(cfg)
'''


@pytest.mark.slow
def test_a_hugging_face_model_with_its_own_loss_or_ours(tmp_path):
    """A real ModelOutput: `loss: model` (its .loss, labels passed by keyword) and cross_entropy
    on its .logits train identically."""
    pytest.importorskip("transformers")
    (tmp_path / "hf.py").write_text(HF_USER)
    losses = {}
    for loss in ("model", "cross_entropy"):
        (tmp_path / f"{loss}.yaml").write_text(
            f"model: {{factory: hf.py:bert}}\ndata: {{factory: hf.py:data}}\nloss: {loss}\n"
            "optimizer: {name: adamw, lr: 1e-3}\nprobe: {steps: 8, variants: {lr_factors: []}, lr_range: false}\n")
        setup = prepare(load_config(tmp_path / f"{loss}.yaml"))
        trace, _ = run_probe(setup, ProbeSpec(steps=8, hessian_steps=[0]))
        assert trace.status == "completed" and len(trace.hessian) == 1, trace.meta.get("hessian_errors")
        assert trace.has("acc.val")
        losses[loss] = trace.values("loss.train")
    np.testing.assert_allclose(losses["model"], losses["cross_entropy"], rtol=1e-5)
