"""optdoctor.config: YAML -> LoadedConfig, factories -> callables, names -> torch objects.

Bad configs are data (CASES): each names the one problem it must raise, where, and the hint.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import optdoctor
from optdoctor.config import call_user, load_config, resolve_callable
from optdoctor.config.schema import BUILTIN_LOSSES
from optdoctor.errors import ConfigError, ProbeError

FIXTURES = Path(__file__).parent / "fixtures" / "config"

VALID = """\
model:
  factory: models.py:deep_mlp
  args: {depth: 3}
data:
  factory: datasets.py:blobs
  batch_size: 32
optimizer:
  name: sgd
  lr: 0.1
  args: {momentum: 0.9}
"""


def write(folder: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def write_here(workdir: Path, text: str):
    """Write cfg.yaml into the cwd and load it by its relative name, as a user would."""
    write(workdir, text)
    return load_config("cfg.yaml")


def problems_of(path: Path) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with the fixture modules beside the config, and the cwd."""
    for source in FIXTURES.glob("*.py"):
        shutil.copy(source, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- load_config: one bad config, one located problem ----------------------------------------


@dataclass
class Case:
    id: str
    yaml: str
    line: int
    col: int
    key: str
    message: str  # a substring of the problem's message
    suggestion: str | None = None


CASES = [
    Case("typo-section", VALID.replace("optimizer:", "optimzer:"), 7, 1, "optimzer", "unknown key 'optimzer'", "optimizer"),
    Case("typo-nested-key", VALID + "probe:\n  hessian:\n    max_iters: 30\n", 13, 5, "probe.hessian.max_iters", "unknown key 'max_iters'", "max_iter"),
    Case("arg-outside-args", VALID.replace("  args: {momentum: 0.9}", "  momentum: 0.9"), 10, 3, "optimizer.momentum", "unknown key 'momentum'", "did you mean to put it under 'args:'?"),
    Case("setting-at-top", VALID + "steps: 100\n", 11, 1, "steps", "unknown key 'steps'", "probe.steps"),
    Case("wrong-type-lr", VALID.replace("lr: 0.1", "lr: fast"), 9, 3, "optimizer.lr", "expected a number, got 'fast'"),
    Case("wrong-type-section", VALID + "schedule: cosine\n", 11, 1, "schedule", "expected a mapping (key: value), got 'cosine'"),
    Case("empty-lr", VALID.replace("lr: 0.1", "lr:"), 9, 3, "optimizer.lr", "expected a number, got nothing"),
    Case("fractional-steps", VALID + "probe: {steps: 1.5}\n", 11, 9, "probe.steps", "expected an integer, got 1.5"),
    Case("negative-lr", VALID.replace("lr: 0.1", "lr: -0.1"), 9, 3, "optimizer.lr", "must be > 0, got -0.1"),
    Case("zero-batch-size", VALID.replace("batch_size: 32", "batch_size: 0"), 6, 3, "data.batch_size", "must be > 0, got 0"),
    Case("missing-section", VALID.replace("model:\n  factory: models.py:deep_mlp\n  args: {depth: 3}\n", ""), 1, 1, "", "missing section 'model'"),
    Case("missing-key", VALID.replace("  lr: 0.1\n", ""), 7, 1, "optimizer", "missing required key 'lr'"),
    Case("unknown-loss", VALID + "loss: crossentropy\n", 11, 1, "loss", "unknown loss 'crossentropy'", "cross_entropy"),
    Case("factory-without-callable", VALID.replace("models.py:deep_mlp", "models.py"), 2, 3, "model.factory", "is not of the form"),
    Case("list-item-type", VALID + "probe:\n  hessian:\n    at: [0, fast]\n", 13, 13, "probe.hessian.at.1", "expected a number, got 'fast'"),
    Case("list-value-range", VALID + "probe:\n  hessian:\n    at: [0, 2]\n", 13, 5, "probe.hessian.at", "must lie in [0, 1]"),
    Case("duplicate-key", VALID + "  lr: 0.2\n", 11, 3, "optimizer.lr", "duplicate key 'lr' (first at line 9)"),
    Case("yaml-tab", VALID.replace("  name: sgd", "\tname: sgd"), 8, 1, "", "invalid YAML: found character '\\t'"),
    Case("yaml-unclosed-brace", VALID.replace("{depth: 3}", "{depth: 3"), 4, 5, "", "invalid YAML: expected ',' or '}'"),
    Case("yaml-unknown-tag", VALID.replace("lr: 0.1", "lr: !fast 0.1"), 9, 7, "", "invalid YAML: could not determine a constructor for the tag '!fast'"),
    Case("yaml-two-documents", VALID + "---\nseed: 1\n", 11, 1, "", "invalid YAML: but found another document"),
    Case("yaml-control-character", VALID.replace("name: sgd", "name: s\x07gd"), 8, 10, "", "invalid YAML: special characters are not allowed"),
    Case("key-not-a-name", VALID + "? [a, b]\n: 1\n", 11, 3, "", "a key must be a plain name, got a list"),
    Case("empty-file", "", 1, 1, "", "the config is empty"),
    Case("only-comments", "# nothing yet\n", 1, 1, "", "the config is empty"),
    Case("top-level-list", "- model\n- data\n", 1, 1, "", "must be a mapping of sections (model:, data:, optimizer:, ...), got a list"),
    Case("top-level-scalar", "hello\n", 1, 1, "", "got a single value 'hello'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_config_reports_one_located_problem(case: Case, tmp_path: Path) -> None:
    path = write(tmp_path, case.yaml)
    (problem,) = problems_of(path)
    assert (problem.file, problem.line, problem.col, problem.key) == (str(path), case.line, case.col, case.key)
    assert case.message in problem.message
    assert problem.suggestion == case.suggestion


def test_error_string_format(workdir: Path) -> None:
    write(workdir, VALID.replace("name: sgd", "nmae: sgd"))
    with pytest.raises(ConfigError) as info:
        load_config("cfg.yaml")
    assert str(info.value) == "cfg.yaml:8:3: optimizer.nmae: unknown key 'nmae'; did you mean 'name'?"
    assert info.value.exit_code == 2


def test_all_problems_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = VALID.replace("lr: 0.1", "lr: -1").replace("batch_size: 32", "batch_size: many") + "loss: mse\nsede: 3\n"
    path = write(tmp_path, text)
    found = [(p.line, p.key) for p in problems_of(path)]
    assert found == [(6, "data.batch_size"), (9, "optimizer.lr"), (12, "sede")]


@pytest.mark.parametrize(
    "path_kind, message",
    [("missing", "config file not found"), ("directory", "is a directory, expected a YAML config file")],
)
def test_config_path_that_is_not_a_file(path_kind: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml" if path_kind == "missing" else tmp_path
    (problem,) = problems_of(path)
    assert (problem.file, problem.message) == (str(path), message)


# --- load_config: what a valid config becomes --------------------------------------------------

NUMBERS = [
    ("1e-3", 0.001),
    ("3e-4", 3e-4),
    ("1E5", 1e5),
    ("+1e5", 1e5),
    ("-2.5E-3", -2.5e-3),
    ("1.0e5", 1e5),  # YAML 1.1 wants a sign in the exponent
    (".5e1", 5.0),
    ("0.5", 0.5),
    (".inf", math.inf),
    ("-.inf", -math.inf),
    ("10", 10),
    ("1_000", 1000),
    ('"1e-3"', "1e-3"),  # quoted: a string
    ("'10'", "10"),
    ("e5", "e5"),
    ("1e", "1e"),
]


@pytest.mark.parametrize("text, value", NUMBERS, ids=[t for t, _ in NUMBERS])
def test_numbers_as_people_write_them(text: str, value: object, tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{momentum: 0.9}", f"{{x: {text}}}"))
    got = load_config(path).config.optimizer.args["x"]
    assert got == value and type(got) is type(value)


def test_nan(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{momentum: 0.9}", "{x: .nan}"))
    assert math.isnan(load_config(path).config.optimizer.args["x"])


def test_lr_in_exponent_form_is_a_float(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("lr: 0.1", "lr: 1e-3"))
    assert load_config(path).config.optimizer.lr == 0.001


def test_quoted_number_in_a_number_field_is_accepted(tmp_path: Path) -> None:
    # Decision: pydantic's lax mode reads "1e-3" as 0.001 where a number is expected; the
    # intent is plain and rejecting it would only annoy. In free-form args it stays a string.
    path = write(tmp_path, VALID.replace("lr: 0.1", 'lr: "1e-3"'))
    assert load_config(path).config.optimizer.lr == 0.001


def test_path_as_given_and_base_dir_absolute(workdir: Path) -> None:
    (workdir / "runs").mkdir()
    write(workdir / "runs", VALID)
    loaded = load_config("runs/cfg.yaml")
    assert loaded.path == "runs/cfg.yaml"
    assert loaded.base_dir == str(workdir / "runs")
    assert loaded.name == "cfg"


def test_positions_of_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "probe:\n  hessian:\n    at: [0, 0.5]\n")
    loaded = load_config(path)
    assert loaded.positions["optimizer"] == (7, 1)
    assert loaded.positions["optimizer.lr"] == (9, 3)
    assert loaded.positions["optimizer.args.momentum"] == (10, 10)  # inside a flow mapping
    assert loaded.positions["probe.hessian.at.1"] == (13, 13)
    assert loaded.line_of("optimizer.args.momentum.nothing") == (10, 10)


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    text = VALID.replace("  args: {momentum: 0.9}", "  args:\n    <<: &defaults {momentum: 0.9, nesterov: true}\n    momentum: 0.5")
    args = load_config(write(tmp_path, text)).config.optimizer.args
    assert args == {"momentum": 0.5, "nesterov": True}


def test_keys_stay_as_written(tmp_path: Path) -> None:
    # YAML 1.1 would make "on" a boolean key; config keys are names.
    path = write(tmp_path, VALID.replace("{momentum: 0.9}", "{on: 1, 2: 3}"))
    assert load_config(path).config.optimizer.args == {"on": 1, "2": 3}


def test_import_does_not_import_torch() -> None:
    code = "import sys, optdoctor.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- factories ---------------------------------------------------------------------------------


def test_missing_factory_file_suggests_the_close_one(workdir: Path) -> None:
    loaded = write_here(workdir, VALID)
    with pytest.raises(ConfigError) as info:
        resolve_callable("modls.py:deep_mlp", loaded.base_dir, "model.factory", loaded)
    assert str(info.value) == "cfg.yaml:2:3: model.factory: file 'modls.py' not found (relative to ./); did you mean 'models.py'?"


def test_missing_callable_suggests_the_close_one(workdir: Path) -> None:
    loaded = write_here(workdir, VALID)
    with pytest.raises(ConfigError) as info:
        resolve_callable("models.py:deep_mpl", loaded.base_dir, "model.factory", loaded)
    (problem,) = info.value.problems
    assert (problem.line, problem.message, problem.suggestion) == (2, "models.py has no callable 'deep_mpl'", "deep_mlp")


def test_file_factory_imports_its_sibling_and_is_imported_once(workdir: Path) -> None:
    first = resolve_callable("models.py:deep_mlp", str(workdir), "model.factory")
    assert first(depth=2)[0].in_features == 4  # WIDTH from od_fixture_layers.py
    assert resolve_callable("models.py:deep_mlp", str(workdir), "model.factory") is first
    assert str(workdir) not in sys.path  # only while importing


@pytest.mark.parametrize(
    "spec, expected",
    [("math:sqrt", math.sqrt), ("json:dumps", __import__("json").dumps), ("json:JSONDecoder.decode", __import__("json").JSONDecoder.decode)],
    ids=["math:sqrt", "json:dumps", "nested-attribute"],
)
def test_package_module_form(spec: str, expected: object, tmp_path: Path) -> None:
    assert resolve_callable(spec, str(tmp_path), "data.factory") is expected


def test_nested_attribute_in_a_file(workdir: Path) -> None:
    tiny = resolve_callable("models.py:Zoo.tiny", str(workdir), "model.factory")
    assert tiny().out_features == 2


@pytest.mark.parametrize(
    "spec, message, suggestion",
    [
        ("od_no_such_module.sub:f", "cannot import module 'od_no_such_module.sub'", None),
        ("json:dumpz", "json has no callable 'dumpz'", "dump"),
        ("json:JSONDecoder.decod", "json:JSONDecoder has no callable 'decod'", "decode"),
        ("json:__doc__", "json:__doc__ is not callable (it is a str)", None),
        ("./models:f", "'./models' is neither a .py file nor a module name", None),
    ],
    ids=["module-not-found", "missing-function", "missing-method", "not-callable", "neither-file-nor-module"],
)
def test_unresolvable_spec_is_a_config_error(spec: str, message: str, suggestion: str | None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_callable(spec, str(tmp_path), "data.factory")
    (problem,) = info.value.problems
    assert (problem.key, problem.message, problem.suggestion) == ("data.factory", message, suggestion)


def test_user_module_raising_at_import_is_a_probe_error_with_its_traceback(workdir: Path) -> None:
    with pytest.raises(ProbeError) as info:
        resolve_callable("broken.py:helper", str(workdir), "model.factory")
    err = info.value
    assert err.exit_code == 3
    assert err.message == "importing broken.py raised ZeroDivisionError: division by zero"
    assert f'File "{workdir / "broken.py"}", line 8' in err.detail
    assert f'File "{workdir / "broken.py"}", line 5, in helper' in err.detail
    assert str(Path(optdoctor.__file__).parent) not in err.detail
    assert "<frozen" not in err.detail
    assert err.detail.endswith("ZeroDivisionError: division by zero")


def test_user_module_importing_a_missing_package_is_a_probe_error(workdir: Path) -> None:
    with pytest.raises(ProbeError) as info:
        resolve_callable("imports_missing.py:f", str(workdir), "model.factory")
    assert "ModuleNotFoundError: No module named 'od_no_such_package_xyz'" in info.value.message
    assert "imports_missing.py" in info.value.detail


def _user_code(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_call_user_turns_exceptions_into_probe_errors() -> None:
    with pytest.raises(ProbeError) as info:
        call_user(_user_code, 3, what="model factory models.py:deep_mlp")
    assert info.value.message == "model factory models.py:deep_mlp raised ValueError: bad 3"
    assert "in _user_code" in info.value.detail
    assert "factories.py" not in info.value.detail


def test_call_user_lets_interrupts_through() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_user(interrupted, what="loss")


# --- resolve (torch) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resolve():
    from optdoctor.config import resolve

    return resolve


@pytest.mark.parametrize("name, cls_name", [("sgd", "SGD"), ("adamw", "AdamW"), ("ADAM", "Adam"), ("RMSprop", "RMSprop")])
def test_optimizer_names_are_case_insensitive(name: str, cls_name: str, resolve, tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, VALID.replace("name: sgd", f"name: {name}").replace("{momentum: 0.9}", "{}")))
    assert resolve.resolve_optimizer(loaded.config.optimizer, loaded).__name__ == cls_name


@pytest.mark.parametrize(
    "yaml_edit, line, col, key, message, suggestion",
    [
        (("name: sgd", "name: adamm"), 8, 3, "optimizer.name", "unknown optimizer 'adamm'", "Adam"),
        (("{momentum: 0.9}", "{momentun: 0.9}"), 10, 10, "optimizer.args.momentun", "unknown argument 'momentun' of SGD", "momentum"),
        (("{momentum: 0.9}", "{lr: 0.9}"), 10, 10, "optimizer.args.lr", "'lr' is set by optdoctor, not in args", "use optimizer.lr"),
    ],
    ids=["unknown-optimizer", "unknown-optimizer-arg", "lr-in-args"],
)
def test_bad_optimizer(yaml_edit, line, col, key, message, suggestion, resolve, tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, VALID.replace(*yaml_edit)))
    with pytest.raises(ConfigError) as info:
        resolve.resolve_optimizer(loaded.config.optimizer, loaded)
    (problem,) = info.value.problems
    assert (problem.line, problem.col, problem.key, problem.message, problem.suggestion) == (line, col, key, message, suggestion)


def test_scheduler(resolve, tmp_path: Path) -> None:
    good = load_config(write(tmp_path, VALID + "schedule: {name: cosineannealinglr, args: {T_max: 10}}\n"))
    assert resolve.resolve_scheduler(good.config.schedule, good).__name__ == "CosineAnnealingLR"
    bad = load_config(write(tmp_path, VALID + "schedule:\n  name: CosineAnnealingLR\n"))
    with pytest.raises(ConfigError) as info:
        resolve.resolve_scheduler(bad.config.schedule, bad)
    assert str(info.value).endswith("cfg.yaml:11:1: schedule.args: missing required argument 'T_max' of CosineAnnealingLR")


def test_unknown_scheduler_lists_the_choices(resolve, tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, VALID + "schedule: {name: cosine}\n"))
    with pytest.raises(ConfigError) as info:
        resolve.resolve_scheduler(loaded.config.schedule, loaded)
    assert "unknown scheduler 'cosine' (choose from " in str(info.value)
    assert "CosineAnnealingLR" in str(info.value)


def test_builtin_losses_match_the_schema(resolve) -> None:
    assert set(resolve._LOSSES) == set(BUILTIN_LOSSES)


def test_builtin_losses_match_shapes_and_dtypes(resolve) -> None:
    import torch
    import torch.nn.functional as F

    head = torch.tensor([[0.5], [2.0], [-1.0]])  # (N, 1) output
    y = torch.tensor([1, 0, 1])  # (N,) integer targets
    assert torch.allclose(resolve.resolve_loss("mse")(head, y), F.mse_loss(head[:, 0], y.float()))
    assert torch.allclose(resolve.resolve_loss("bce_with_logits")(head, y), F.binary_cross_entropy_with_logits(head[:, 0], y.float()))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(resolve.resolve_loss("cross_entropy")(logits, torch.tensor([0.0, 1.0])), F.cross_entropy(logits, torch.tensor([0, 1])))
    log_probs = logits.log_softmax(1)
    assert torch.allclose(resolve.resolve_loss("nll")(log_probs, torch.tensor([0, 1])), F.nll_loss(log_probs, torch.tensor([0, 1])))


def test_loss_from_a_file_and_unknown_loss(resolve, workdir: Path) -> None:
    loaded = load_config(write(workdir, VALID + "loss: losses.py:l1\n"))
    assert resolve.resolve_loss(loaded.config.loss, loaded).__name__ == "l1"
    with pytest.raises(ConfigError) as info:
        resolve.resolve_loss("msee", loaded)
    assert info.value.problems[0].suggestion == "mse"


def test_validate_resolvable_accepts_a_good_config(resolve, workdir: Path) -> None:
    resolve.validate_resolvable(load_config(write(workdir, VALID)))


def test_validate_resolvable_reports_every_problem_at_once(resolve, workdir: Path) -> None:
    text = VALID.replace("models.py", "modls.py").replace("name: sgd", "name: adamm").replace("n_train", "")
    text = text.replace("factory: datasets.py:blobs", "factory: datasets.py:blobs\n  args: {n_trian: 8}")
    with pytest.raises(ConfigError) as info:
        resolve.validate_resolvable(write_here(workdir, text))
    assert str(info.value).splitlines() == [
        "cfg.yaml:2:3: model.factory: file 'modls.py' not found (relative to ./); did you mean 'models.py'?",
        "cfg.yaml:6:10: data.args.n_trian: unknown argument 'n_trian' of blobs; did you mean 'n_train'?",
        "cfg.yaml:9:3: optimizer.name: unknown optimizer 'adamm'; did you mean 'Adam'?",
    ]


def test_validate_resolvable_lets_a_user_import_failure_through(resolve, workdir: Path) -> None:
    loaded = load_config(write(workdir, VALID.replace("models.py:deep_mlp", "broken.py:helper")))
    with pytest.raises(ProbeError):
        resolve.validate_resolvable(loaded)
