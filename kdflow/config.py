"""Typed pipeline configuration, loaded from YAML with ``yaml.safe_load``.

Every model forbids unknown keys, so a typo in a config file is an error that names the key
instead of a silently ignored setting. SLA thresholds and tolerances are data here, not code.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from kdflow.config_base import (  # noqa: F401 - re-exported: callers import them from kdflow.config
    AutocastKind,
    CalibrationMapKind,
    ConfigError,
    Correction,
    DriftAction,
    DriftStatus,
    LossKind,
    LrScaling,
    ModelSpec,
    Optimizer,
    PreprocessKind,
    RecalibrationTrigger,
    RetrainVia,
    ServingRuntime,
    SplitName,
    TaskRunnerKind,
    TeacherGateConfig,
    TeacherRefreshMode,
    TeacherWeighting,
    _Strict,
    check_device_spec,
)
from kdflow.config_hard import HardExamplesConfig, check_hard_examples  # noqa: F401 - re-exported
from kdflow.config_lifecycle import (  # noqa: F401 - re-exported
    DriftConfig,
    DriftSignal,
    LogsConfig,
    RecalibrationConfig,
    RetrainConfig,
    TeacherRefreshConfig,
)
from kdflow.config_methods import OnlineConfig, SelfDistillConfig  # noqa: F401 - re-exported


def packaged_config(name: str) -> Path:
    """Path of an example config shipped inside the package (``kdflow/configs/<name>``)."""
    return Path(str(resources.files("kdflow") / "configs" / name))


class FeatureSpec(_Strict):
    """Where the features live in a dataset file.

    Either one fixed-length array column (``column``) or a list of named numeric columns (``columns``).
    ``shape`` reshapes each row for models that take images (e.g. ``[8, 8]`` for digits).
    """

    column: str | None = "x"
    columns: list[str] | None = None
    shape: list[int] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "FeatureSpec":
        if self.columns:
            self.column = None
        if not self.column and not self.columns:
            raise ValueError("features: give either 'column' (array column) or 'columns' (named columns)")
        return self


class DataConfig(_Strict):
    """Dataset URIs (local paths, file:// or s3://) and their schema."""

    train: str
    val: str
    test: str
    transfer: str | None = None
    # Set by the retrain flow: recent production inputs (unlabeled, distilled like the transfer set), the
    # recent labeled traffic the gate compares candidate and champion on (and the new version's reference
    # profile is built from), the recent labeled rows the candidate is selected and calibrated on (disjoint
    # from recent_labeled) and the [start, end) of that traffic (ISO 8601).
    recent: str | None = None
    recent_labeled: str | None = None
    recent_val: str | None = None
    recent_window: tuple[str, str] | None = None
    num_classes: int = Field(gt=1)
    features: FeatureSpec = FeatureSpec()
    id_column: str = "id"
    label_column: str = "label"
    min_rows: int = Field(default=1, ge=1)
    # The precompute flow (flows/logits.py) leaves every dataset in its Parquet files: validated chunk by chunk,
    # fingerprinted and planned from the footers, each shard's rows read by the task that scores it.
    out_of_core: bool = False


class ValidationConfig(_Strict):
    """Tolerances of the Great Expectations suites run at the start of every flow (:mod:`kdflow.validation`).

    Schema, ids, nulls, finiteness, array length and label range are always checked on every row and
    strictly; ``*_mostly`` only relaxes the statistical checks (feature ranges, probability sums).
    """

    min_rows: dict[str, int] = Field(default_factory=dict)  # per dataset, on top of data.min_rows
    require_all_classes: list[str] = Field(default_factory=lambda: ["train", "val"])
    feature_ranges: bool = True  # learn per-feature [min, max] from train, check the other datasets
    range_margin: float = Field(default=0.5, ge=0.0)  # widen the learned range by this fraction of its span
    range_mostly: float = Field(default=0.99, ge=0.0, le=1.0)
    sample_size: int = Field(default=100_000, gt=0)  # rows per dataset for the statistical checks
    sample_seed: int = 0
    chunk_rows: int = Field(default=262_144, gt=0)  # data.out_of_core: rows per chunk validated at a time
    probability_tolerance: float = Field(default=1e-3, gt=0.0)  # inference logs: |sum(p) - 1| <=
    probability_mostly: float = Field(default=1.0, ge=0.0, le=1.0)
    max_examples: int = Field(default=5, gt=0)  # example values / ids per failed expectation
    data_docs: bool = True  # build GX Data Docs (HTML) for the report
    # Cross-split ids: train, val, test and transfer must not share ids (a shared id is a leak that inflates
    # every figure measured on val/test). The transfer set may share ids with the labeled splits listed here:
    # train by default (distilling on the training inputs is the classic transfer set, Hinton et al. 2015);
    # add "test" only for deliberately transductive distillation, whose test figures are then optimistic.
    disjoint_ids: bool = True
    transfer_overlap_allowed: list[SplitName] = Field(default_factory=lambda: ["train"])
    # Feature scale: each split in scale_datasets is compared with train, per feature, both ways (a train on a
    # larger scale fails as surely as a val on a smaller one). A feature fails when its standardized mean
    # difference |mean - mean_train| / pooled sd exceeds max_mean_shift, or |ln(sd / sd_train)| exceeds
    # max_log_sd_ratio (0.693: a factor of 2), AND the difference exceeds scale_z standard errors (so small or
    # heavy-tailed samples are not failed on noise). Sds below scale_sd_floor x train's RMS feature sd are
    # raised to it (near-constant features, e.g. always-blank pixels). Computed on the deterministic sample.
    feature_scale: bool = True
    scale_datasets: list[str] = Field(default_factory=lambda: ["val", "test", "transfer"])
    max_mean_shift: float = Field(default=0.5, gt=0.0)
    max_log_sd_ratio: float = Field(default=0.693, gt=0.0)
    scale_z: float = Field(default=6.0, ge=0.0)
    scale_sd_floor: float = Field(default=0.1, ge=0.0)


class ScheduleConfig(_Strict):
    """Linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    warmup_steps: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    """Optimisation hyper-parameters shared by teacher and student training."""

    temperature: float = Field(default=4.0, gt=0.0)
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    # The soft term (kdflow.losses): kd (Hinton et al. 2015), dkd (Zhao et al. 2022: dkd_alpha * TCKD +
    # dkd_beta * NCKD) or dist (Huang et al. 2022: dist_beta * inter- + dist_gamma * intra-class relation).
    loss: LossKind = "kd"
    dkd_alpha: float = Field(default=1.0, ge=0.0)
    dkd_beta: float = Field(default=8.0, ge=0.0)
    dist_beta: float = Field(default=1.0, ge=0.0)
    dist_gamma: float = Field(default=1.0, ge=0.0)
    optimizer: Optimizer = "adamw"
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    batch_size: int = Field(default=256, gt=0)
    # Large batches (e.g. 4,096 on a GPU): the learning rate actually used is lr * (batch_size / base_batch_size)
    # for "linear" (Goyal et al. 2017; keep schedule.warmup_steps), lr * sqrt(batch_size / base_batch_size) for
    # "sqrt" (often better for Adam/AdamW), lr as given for "none" (kdflow.train.scaled_lr).
    lr_scaling: LrScaling = "none"
    base_batch_size: int = Field(default=256, gt=0)
    epochs: int = Field(default=20, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip_norm: float | None = Field(default=1.0, gt=0.0)
    teacher_logit_clip: float | None = Field(default=50.0, gt=0.0)
    early_stopping_patience: int | None = Field(default=5, gt=0)
    seed: int = 0
    num_threads: int | None = Field(default=None, gt=0)
    # Save the full training state to the store's checkpoints/<training key>/ every this many epochs, so a killed
    # run resumes where it stopped (kdflow.checkpoint); None: no checkpoints.
    checkpoint_every_epochs: int | None = Field(default=1, gt=0)
    # Streamed training input (kdflow.stream): buffers of row groups (and their logit shards) read ahead while the
    # step trains (0: each read when due), by prefetch_readers threads at once. Changes no result, only whether
    # the step waits on storage.
    prefetch_buffers: int = Field(default=2, ge=0)
    prefetch_readers: int = Field(default=4, gt=0)


class CalibrationConfig(_Strict):
    """Temperature scaling (Guo et al. 2017), the maps tried when it is not enough, and ECE binning.

    When the validation ECE after temperature scaling exceeds ``max_ece_after_temperature`` (empty: never),
    each of ``maps`` (vector scaling, Guo et al. 2017; isotonic regression, Zadrozny & Elkan 2002) is fitted
    on the temperature-scaled logits and judged with the temperature by ``folds``-fold cross-fitting on the
    validation split; the lowest out-of-fold ``select_by`` (ece or nll) is served (kdflow.calibration)."""

    n_bins: int = Field(default=15, gt=1)
    t_min: float = Field(default=0.05, gt=0.0)
    t_max: float = Field(default=20.0, gt=0.0)
    max_iter: int = Field(default=200, gt=0)
    max_ece_after_temperature: float | None = Field(default=0.03, ge=0.0, le=1.0)
    maps: list[CalibrationMapKind] = Field(default_factory=lambda: ["vector", "isotonic"])
    folds: int = Field(default=5, ge=2)
    select_by: Literal["ece", "nll"] = "ece"


class SLAConfig(_Strict):
    """Service-level thresholds; a threshold left empty is not checked."""

    min_accuracy: float | None = Field(default=0.85, ge=0.0, le=1.0)
    max_teacher_gap: float | None = Field(default=0.05, ge=0.0, le=1.0)
    max_ece: float | None = Field(default=0.05, ge=0.0, le=1.0)
    max_flip_rate: float | None = Field(default=0.15, ge=0.0, le=1.0)
    max_latency_p95_ms: float | None = Field(default=50.0, gt=0.0)
    max_size_ratio: float | None = Field(default=0.5, gt=0.0)
    champion_tolerance: float = Field(default=0.005, ge=0.0, le=1.0)
    # A retrain's candidate (gated on the recent labeled traffic that triggered it) must beat the champion there by
    # more than this, not merely come within champion_tolerance (kdflow.sla.decide_promotion).
    min_recent_improvement: float = Field(default=0.0, ge=0.0, le=1.0)
    # ... and, being better there, it may be this much below the champion on the test split (the regime before the
    # drift) instead of champion_tolerance, as a refreshed teacher may (teacher_refresh.max_forgetting).
    max_forgetting: float = Field(default=0.02, ge=0.0, le=1.0)
    # Every class's test accuracy (classes with test rows) must be at least this (kdflow.sla.class_accuracy_check).
    min_class_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)


class EvaluationConfig(_Strict):
    """How much work the latency/throughput measurement does."""

    latency_batches: int = Field(default=200, gt=0)
    throughput_batch_size: int = Field(default=256, gt=0)
    throughput_batches: int = Field(default=10, gt=0)


class RegistryConfig(_Strict):
    """MLflow experiment and registered-model names."""

    experiment: str = "kdflow"
    student_name: str
    register_failed_candidates: bool = False


class MlflowConfig(_Strict):
    """Where MLflow keeps runs (a database URI or an http server) and artifacts."""

    tracking_uri: str = "sqlite:///.kdflow/mlflow.db"
    artifact_location: str | None = ".kdflow/mlartifacts"


class StoreConfig(_Strict):
    """Object store for teacher logits: a local directory, file:// or s3://bucket/prefix."""

    root: str = ".kdflow/store"
    endpoint_url: str | None = None
    # Up to millions of rows per shard: each shard is one task, so with store.task_runner "dask" a worker holds one
    # shard's features and logits at a time (a multiple of the data's Parquet row-group size reads whole groups).
    rows_per_shard: int = Field(default=8192, gt=0, le=16_777_216)
    top_k: int | None = Field(default=None, gt=0)  # None: dense fp16 logits; k: top-k log-probs per row
    task_runner: TaskRunnerKind = "threads"  # how per-shard precompute tasks run
    workers: int = Field(default=2, gt=0)
    # With task_runner "dask": the scheduler of an existing Dask cluster (e.g. "tcp://10.0.0.5:8786"), whose workers
    # read their shards' rows from the data's Parquet row groups and write the shards to the store themselves;
    # None: a local cluster of `workers` processes.
    cluster_address: str | None = None
    # With task_runner "dask": the Dask worker resources each shard task needs, e.g. {"GPU": 1}, so that on a cluster
    # whose GPU workers were started with `--resources GPU=1` the shards are scored there only ({}: any worker).
    worker_resources: dict[str, float] = Field(default_factory=dict)
    # Teacher scoring (kdflow.device.score_logits): rows per forward pass (None: 1,024 on the CPU, 65,536 on CUDA)
    # and its precision: "bf16" autocast (stored logits checked against fp32 on a sample of rows, within
    # autocast_tolerance x max(1, largest |logit|); the figures go into the store manifest) or "none" (fp32).
    score_batch_size: int | None = Field(default=None, gt=0)
    autocast: AutocastKind = "none"
    autocast_tolerance: float = Field(default=0.02, gt=0.0)


class CascadeConfig(_Strict):
    """Confidence fallback (selective classification, Geifman & El-Yaniv 2017): the student answers when its
    calibrated confidence is at or above a threshold, the teacher otherwise.

    At registration the threshold is chosen on the validation split: the largest student coverage whose system
    accuracy (student above the threshold, teacher below) stays at or above ``target_accuracy`` — or, when that
    is empty, the teacher's validation accuracy minus ``max_accuracy_loss``. It is stored on the version
    (``kdflow.cascade_threshold``) and refitted by recalibration."""

    enabled: bool = True
    target_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    max_accuracy_loss: float = Field(default=0.005, ge=0.0, le=1.0)
    # An operator's fixed threshold for the server, used instead of every served version's tag (e.g. to cap the
    # teacher's load); None: each version's own kdflow.cascade_threshold.
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class ServingConfig(_Strict):
    """``kdflow serve-model``: an HTTP scoring server for ``models:/<registry.student_name>@<alias>``.

    Every accepted prediction is logged under ``logs.root`` (buffered; flushed every ``log_flush_rows`` rows or
    ``log_flush_seconds`` seconds and on SIGTERM; a failed write spills to ``spill_dir`` and is retried).
    ``teacher`` (a ``models:/`` URI) enables the shadow teacher (``shadow_fraction`` of requests scored off the
    request path, filling ``teacher_logits``) and the confidence fallback (``cascade``); without it the student
    answers alone. ``challenger_fraction`` of requests goes to ``@challenger`` when one exists."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    alias: str = "champion"
    runtime: ServingRuntime = "onnx"
    poll_seconds: float = Field(default=10.0, gt=0.0)  # how often the alias is re-read; a move swaps models live
    max_rows_per_request: int = Field(default=1024, gt=0)
    max_body_bytes: int = Field(default=4_000_000, gt=0)
    log_flush_rows: int = Field(default=1000, gt=0)
    log_flush_seconds: float = Field(default=5.0, gt=0.0)
    spill_dir: str = ".kdflow/spill"
    teacher: str | None = None
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    cascade: CascadeConfig = CascadeConfig()
    challenger_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("teacher")
    @classmethod
    def _teacher_uri(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("models:/"):
            raise ValueError(
                f"serving.teacher must look like models:/<name>@<alias> or models:/<name>/<version>, got {v!r}"
            )
        return v


class SearchDimension(_Strict):
    """One hyper-parameter's search range: ``low``..``high`` (uniform, or log-uniform when ``log``; integers for
    an integer setting) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchDimension":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("give either choices or low/high (and log), not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got low={self.low}")
        return self


def _default_space() -> dict[str, SearchDimension]:
    return {
        "temperature": SearchDimension(low=1.0, high=20.0, log=True),
        "alpha": SearchDimension(low=0.1, high=0.95),
        "lr": SearchDimension(low=3e-4, high=3e-2, log=True),
        "weight_decay": SearchDimension(low=1e-6, high=1e-2, log=True),
        "loss": SearchDimension(choices=["kd", "dkd", "dist"]),
    }


class TuneConfig(_Strict):
    """``kdflow tune``: Bayesian search (Optuna's TPE sampler, Bergstra et al. 2011) over ``train.*`` settings.

    ``space`` maps a ``train`` setting to its range; every trial trains the student with the sampled values for
    ``epochs`` epochs (default ``train.epochs``), reports validation accuracy after each epoch to a median pruner
    (a trial below the median of earlier trials at the same epoch stops), and must keep its validation ECE after
    temperature scaling within ``sla.max_ece``. ``trials`` and ``subset`` (a stratified fraction of train and
    transfer rows) are defaults for the command's options."""

    space: dict[str, SearchDimension] = Field(default_factory=_default_space)
    trials: int = Field(default=30, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    subset: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int = 0  # the sampler's (worker i uses seed + i) and the subset's
    startup_trials: int = Field(default=10, ge=0)  # TPE: random trials before the model is fitted
    pruner_startup_trials: int = Field(default=5, ge=0)  # no pruning until this many trials finished
    pruner_warmup_epochs: int = Field(default=1, ge=0)  # no pruning in a trial's first epochs

    @field_validator("space")
    @classmethod
    def _known_settings(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        if not space:
            raise ValueError("the search space is empty")
        for name, dim in space.items():
            default = TrainConfig.model_fields.get(name)
            if default is None or isinstance(default.default, BaseModel):
                scalars = sorted(k for k, f in TrainConfig.model_fields.items() if not isinstance(f.default, BaseModel))
                raise ValueError(f"{name!r} is not a train setting that can be tuned; expected one of {scalars}")
            values = dim.choices if dim.choices is not None else [dim.low, dim.high]
            if dim.choices is None and tune_as_int(name) and any(float(v) != int(v) for v in values):
                raise ValueError(f"{name}: train.{name} is an integer, got bounds {values}")
            for value in values:
                try:
                    TrainConfig.model_validate({name: int(value) if tune_as_int(name) else value})
                except ValidationError as exc:
                    raise ValueError(
                        f"{name}: {value!r} is not a valid train.{name}: {exc.errors()[0]['msg']}"
                    ) from None
        return space


def tune_as_int(name: str) -> bool:
    """Whether ``train.<name>`` is an integer setting (sampled with ``suggest_int``)."""
    field = TrainConfig.model_fields[name]
    return field.annotation in (int, int | None)


class DistillConfig(_Strict):
    """Everything one distillation run needs."""

    data: DataConfig
    teacher_uri: str
    # More teachers, combined with teacher_uri's (kdflow.ensemble): the weighted mean of their softened
    # probabilities, weights uniform ("mean") or proportional to validation accuracy ("val_accuracy").
    extra_teachers: list[str] = Field(default_factory=list)
    teacher_weighting: TeacherWeighting = "mean"
    student: ModelSpec
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    sla: SLAConfig = SLAConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    mlflow: MlflowConfig = MlflowConfig()
    store: StoreConfig = StoreConfig()
    validation: ValidationConfig = ValidationConfig()
    logs: LogsConfig = LogsConfig()
    drift: DriftConfig = DriftConfig()
    retrain: RetrainConfig = RetrainConfig()
    recalibration: RecalibrationConfig = RecalibrationConfig()
    serving: ServingConfig = ServingConfig()
    tune: TuneConfig = TuneConfig()
    teacher_refresh: TeacherRefreshConfig = TeacherRefreshConfig()
    output_dir: str = ".kdflow/reports"
    hard_examples: HardExamplesConfig = HardExamplesConfig()  # kdflow.hard_examples
    self_distill: SelfDistillConfig = SelfDistillConfig()  # born-again generations (kdflow.self_distill)
    online: OnlineConfig | None = None  # online (mutual) distillation, kdflow distill-online (kdflow.mutual)
    # Where torch work runs (kdflow.device): auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device_spec(v)

    @field_validator("teacher_uri")
    @classmethod
    def _models_uri(cls, v: str) -> str:
        if not v.startswith("models:/"):
            raise ValueError(
                f"teacher_uri must look like models:/<name>@<alias> or models:/<name>/<version>, got {v!r}"
            )
        return v

    @field_validator("extra_teachers")
    @classmethod
    def _models_uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            cls._models_uri(uri)
        return v

    @model_validator(mode="after")
    def _distinct_teachers(self) -> "DistillConfig":
        if len(set(self.teacher_uris)) != len(self.teacher_uris):
            raise ValueError(f"the same teacher is listed twice: {self.teacher_uris}")
        return self

    @model_validator(mode="after")
    def _hard_examples_apply(self) -> "DistillConfig":
        check_hard_examples(self.hard_examples, self.train.loss, bool(self.data.transfer), bool(self.data.recent))
        return self

    @property
    def teacher_uris(self) -> list[str]:
        """Every teacher, the primary one first."""
        return [self.teacher_uri, *self.extra_teachers]


class TeacherConfig(_Strict):
    """Training and registering a teacher on hard labels. A teacher that fails ``gate`` is registered as
    ``challenger`` only, with the reason on the version and the run."""

    data: DataConfig
    model: ModelSpec
    train: TrainConfig = TrainConfig(alpha=0.0, epochs=40)
    registry_name: str
    alias: str = "champion"
    gate: TeacherGateConfig = TeacherGateConfig()
    experiment: str = "kdflow-teacher"
    mlflow: MlflowConfig = MlflowConfig()
    validation: ValidationConfig = ValidationConfig()
    # Where training checkpoints go (checkpoints/<training key>/); only root and endpoint_url are used here.
    # The default is the distillation config's default store, so both keep their state in one place.
    store: StoreConfig = StoreConfig()
    # Where torch work runs (kdflow.device): auto (CUDA when available, else CPU), cpu, cuda or cuda:N.
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device_spec(v)


C = TypeVar("C", bound=BaseModel)


def load_config(path: str | Path, model: type[C]) -> C:
    """Read ``path`` with ``yaml.safe_load`` and validate it into ``model``; errors name file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc


class RecentTraffic(_Strict):
    """Recent production traffic handed from the retrain flow to the distill flow as a typed parameter: the
    unlabeled inputs added to the transfer set, the labeled rows the gate also compares on (``None``: too few),
    the labeled rows the candidate is selected and calibrated on (``None``: the validation split is), the
    ``[start, end)`` window (ISO 8601) and row counts."""

    recent: str
    recent_labeled: str | None = None
    recent_val: str | None = None
    window: tuple[str, str]
    rows: int = Field(ge=0)
    recent_rows: int = Field(ge=0)
    labeled_rows: int = Field(ge=0)


def with_recent(cfg: DistillConfig, traffic: RecentTraffic) -> DistillConfig:
    """``cfg`` with ``data.recent`` / ``recent_labeled`` / ``recent_val`` / ``recent_window`` set from ``traffic``
    (validated again, so the result is as strict as a loaded config)."""
    data = {
        **cfg.data.model_dump(),
        "recent": traffic.recent,
        "recent_labeled": traffic.recent_labeled,
        "recent_val": traffic.recent_val,
        "recent_window": traffic.window,
    }
    return DistillConfig.model_validate({**cfg.model_dump(), "data": data})


def config_hash(cfg: BaseModel) -> str:
    """A stable SHA-256 of the validated config (sorted JSON), for tagging what produced a model."""
    payload = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()
