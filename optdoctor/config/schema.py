"""Typed probe config (CONTRACT.md section 1). Pure data: no torch, no imports of user code.

Every model forbids unknown keys so that a typo is an error with a did-you-mean, never a
silently ignored setting. ``probe:`` holds the extra settings; each has a default so that the
minimal config of CONTRACT.md works as is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_LOSSES = ("cross_entropy", "mse", "bce_with_logits", "nll", "model")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FactoryConfig(_Strict):
    factory: str = Field(description='"file.py:callable" (relative to the config) or "package.module:callable"')
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")

    @field_validator("factory")
    @classmethod
    def _has_colon(cls, v: str) -> str:
        if ":" not in v or v.startswith(":") or v.endswith(":"):
            raise ValueError(f'{v!r} is not of the form "file.py:callable" or "package.module:callable"')
        return v


class ModelConfig(FactoryConfig):
    output: int | str | None = Field(
        None,
        description="what the loss takes from the model's output: an index (tuple/list) or a key (dict, ModelOutput); "
        "default: 'logits' when there is one, else element 0",
    )


class DataConfig(FactoryConfig):
    batch_size: int | None = Field(
        None, gt=0, description="mini-batch size of the probe trainings (default 64); DataLoaders keep their own"
    )
    inputs: int | str | list[int | str] | None = Field(
        None,
        description="which elements of an item the model takes: keys of dict items, indices of tuple items "
        "(default: input_ids, attention_mask, pixel_values, x, ... when present, else every element but the target)",
    )
    target: int | str | None = Field(
        None, description="which element of an item is the target: a key or an index (default: labels, label, targets, target or y; the last element of a tuple)"
    )


class OptimizerConfig(_Strict):
    name: str = Field(description='any torch.optim class name (case-insensitive), or "package.module:Class" (e.g. '
                                  '"pytorch_optimizer:Shampoo", from the optional extra optdoctor[optimizers])')
    lr: float = Field(gt=0, description="learning rate")
    args: dict[str, Any] = Field(default_factory=dict, description="other keyword arguments of that class")


class ScheduleConfig(_Strict):
    name: str = Field(description="any torch.optim.lr_scheduler class name")
    args: dict[str, Any] = Field(default_factory=dict)


class HessianConfig(_Strict):
    enabled: bool = Field(True, description="measure Hessian spectra of the probe loss")
    at: list[float] = Field(
        default_factory=lambda: [0.0, 1.0],
        description="when to measure, as fractions of probe.steps (0 = before training, 1 = at the end)",
    )
    k: int = Field(5, ge=1, le=50, description="how many of the largest eigenvalues")
    batch_size: int = Field(128, gt=0, description="size of the fixed batch the Hessian is measured on")
    max_iter: int = Field(40, ge=4, le=200, description="Lanczos iterations at most")
    tol: float = Field(1e-4, gt=0, description="Lanczos stops when the Ritz values of interest move less than this, relative to lambda_max")
    trace: bool = Field(True, description="estimate the trace (Hutchinson on what the Lanczos basis leaves over)")
    trace_max_hvps: int = Field(40, ge=1, le=1000, description="Hessian-vector products at most for the trace (it stops earlier at a 5% standard error)")
    density: bool = Field(True, description="estimate the spectral density (stochastic Lanczos quadrature)")
    density_starts: int = Field(1, ge=1, le=20, description="Lanczos runs for the density; the first is the main run, so 1 costs nothing extra")

    @field_validator("at")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"fractions of probe.steps must lie in [0, 1], got {bad}")
        return sorted(set(v))


class VariantsConfig(_Strict):
    lr_factors: list[float] = Field(
        default_factory=lambda: [0.1, 10.0],
        description="extra probes of the same config at these multiples of the learning rate (differential diagnosis)",
    )
    perturb: bool = Field(True, description="when a plateau is found, re-run from a slightly perturbed start to test for a saddle")
    steps: int | None = Field(None, gt=0, description="steps of each variant probe (default: probe.steps)")

    @field_validator("lr_factors")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("learning-rate factors must be positive")
        return v


class VerifyConfig(_Strict):
    enabled: bool = Field(False, description="re-run a probe with each patched remedy of the top findings and report what it changed")
    max_findings: int = Field(3, ge=1, le=20, description="verify the remedies of at most this many findings (most important first)")
    max_remedies: int = Field(6, ge=1, le=12, description="at most this many patched remedies per finding")
    seeds: int = Field(2, ge=0, le=8, description="extra seeds on which each remedy that fixed the run is tried again (robustness), time allowing")
    longer: float | None = Field(2.0, gt=1, le=10, description="train each remedy that fixed the run on every seed once more, for this "
                                                                 "multiple of probe.steps, and count it as a fix only if it still fixes the "
                                                                 "run then (a fix that breaks down later is none: real runs are far longer "
                                                                 "than a probe), time allowing; null: off")
    combine: bool = Field(True, description="when two remedies of a finding each fixed the run (on every seed and trained longer) and "
                                            "change different parts of the config, try the two together once, as one more remedy, "
                                            "time allowing (the combination is judged, checked on seeds and ranked like the others)")
    time_factor: float | None = Field(1.5, gt=1, description="--verify may take at most this multiple of the plain diagnosis' time; remedies "
                                                            "(then extra seeds and longer runs) that would not fit are skipped and reported as such. "
                                                            "null: no limit (and then the set tried is deterministic)")


class PerturbGDConfig(_Strict):
    """Perturbed gradient descent (Jin, Ge, Netrapalli, Kakade & Jordan 2017)."""

    threshold: float = Field(gt=0, description="kick when the global gradient norm falls below this (g_thres)")
    radius: float = Field(gt=0, description="the kick is drawn uniformly from a ball of this radius in parameter space (r)")
    interval: int = Field(10, ge=1, description="at least this many steps between two kicks (t_thres)")


class NegativeCurvatureConfig(_Strict):
    """A step along the Hessian's most negative eigenvector (Lanczos), e.g. off a saddle."""

    at: list[float] = Field(default_factory=lambda: [0.25], description="when, as fractions of probe.steps (after that many steps)")
    radius: float = Field(0.05, gt=0, description="first step length tried along the eigenvector (parameter-space norm)")
    doublings: int = Field(8, ge=0, le=20, description="step lengths radius * 2^k, k = 0..doublings, are tried on the Hessian batch; the best is taken")
    max_iter: int = Field(40, ge=4, le=200, description="Lanczos iterations at most")

    @field_validator("at")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 < x <= 1.0]
        if bad:
            raise ValueError(f"fractions of probe.steps must lie in (0, 1], got {bad}")
        return sorted(set(v))


class EarlyStoppingConfig(_Strict):
    patience: int = Field(3, ge=1, description="stop after this many validations without a new validation-loss minimum")
    restore_best: bool = Field(True, description="end with the weights of the validation minimum (the best checkpoint)")


class ProbeSettings(_Strict):
    steps: int = Field(200, gt=0, le=100_000, description="training steps of the probe")
    val_every: int | None = Field(None, gt=0, description="validate every N steps (default: steps/20)")
    eval_samples: int | None = Field(None, gt=0, description="samples of each split (train, val) evaluated at a checkpoint (default: 1024)")
    device: str = Field("cpu", description='"cpu", "cuda", "cuda:1", ... or "auto"')
    threads: int | None = Field(1, ge=1, description="torch threads on CPU (1 is fastest for small models on small machines); null keeps torch's default")
    seeds: int = Field(1, ge=1, le=16, description="repeat the baseline probe with this many seeds; findings must hold in a majority")
    hessian: HessianConfig = Field(default_factory=HessianConfig)
    variants: VariantsConfig = Field(default_factory=VariantsConfig)
    tensorboard: str | None = Field(None, description="write TensorBoard logs under this folder (relative to the config)")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the global gradient norm, as the user's training does")
    standardize_inputs: bool = Field(False, description="standardise each input feature (each element of its non-batch dimensions: a pixel, a time step's feature) with the training set's mean and std before probing; features constant in the sample are only centred")
    whiten_inputs: bool = Field(False, description="whiten the one floating input (ZCA: every feature jointly decorrelated to unit "
                                                    "variance, training-set statistics; at most 512 features) before probing")
    standardize_targets: bool = Field(False, description="standardise floating (regression) targets per output with the training "
                                                         "set's mean and std before the loss; losses are then in those units")
    reinit: Literal["kaiming_normal", "xavier_normal", "orthogonal", "default"] | None = Field(
        None, description="re-initialise the built model: Linear/Conv weights from this scheme and biases zero, recurrent "
                          "hidden-to-hidden matrices orthogonal, normalisation layers reset (an init remedy for any "
                          "factory; null: the factory's own init)")
    lr_range: bool = Field(True, description="run a short LR range test (Smith 2017) on a copy of the model")
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    perturb_gd: PerturbGDConfig | None = Field(None, description="perturbed gradient descent: a random kick when the gradient is small (null: off)")
    negative_curvature_step: NegativeCurvatureConfig | None = Field(None, description="steps along the Hessian's lambda_min eigenvector (null: off)")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="stop at the validation minimum and keep its checkpoint (null: off)")
    budget: float | str | None = Field(
        None, description='time budget of the whole diagnosis: "30s", "2m", "1m30s" or seconds; the probes are planned from a '
                          'timed calibration to fit it and stopped so that it never overruns by more than 20% (what was cut '
                          "is reported; results then depend on the machine's speed)")

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        from optdoctor.probes.budget import parse_budget  # pure: no torch

        return None if v is None else parse_budget(v)


class ProbeConfig(_Strict):
    name: str | None = Field(None, description="defaults to the config file's stem")
    seed: int = Field(0, description="same seed + same machine => same findings")
    model: ModelConfig
    data: DataConfig
    loss: str = Field("cross_entropy", description='cross_entropy | mse | bce_with_logits | nll | "file.py:callable" | model (the loss the model returns itself)')
    optimizer: OptimizerConfig
    schedule: ScheduleConfig | None = None
    probe: ProbeSettings = Field(default_factory=ProbeSettings)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v in BUILTIN_LOSSES or ":" in v:
            return v
        raise ValueError(f'unknown loss {v!r}: use one of {", ".join(BUILTIN_LOSSES)} or "file.py:callable"')


class LoadedConfig(BaseModel):
    """A validated config plus where it came from (for relative paths and error locations)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: ProbeConfig
    path: str  # as the user gave it (relative paths stay relative: reports carry no absolute paths)
    base_dir: str  # the config's folder, absolute: factories' file paths are relative to it
    positions: dict[str, tuple[int, int]] = Field(default_factory=dict)  # "optimizer.lr" -> (line, col), 1-based

    @property
    def name(self) -> str:
        from pathlib import Path

        return self.config.name or Path(self.path).stem

    def line_of(self, key: str) -> tuple[int, int] | None:
        """Line/col of a key path, or of its closest present ancestor."""
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key.rpartition(".")[0]
        return None

