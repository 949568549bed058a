"""Configuration of the production lifecycle (inference logs, drift checks, retraining, recalibration, teacher
refresh), part of :class:`kdflow.config.DistillConfig`; importable from :mod:`kdflow.config` too."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdflow.config_base import Correction, TeacherRefreshMode, _Strict

DriftSignal = Literal[
    "accuracy",
    "estimated_accuracy",
    "flip_rate",
    "psi_confidence",
    "psi_entropy",
    "psi_predicted_class",
    "features",
    "deferral_rate",
    "teacher_accuracy",
]


class LogsConfig(_Strict):
    """Production inference logs (:mod:`kdflow.inference_logs`): Parquet partitioned ``date=YYYY-MM-DD/``
    under an object-store root (a local directory, file:// or s3://bucket/prefix)."""

    root: str = ".kdflow/logs"
    endpoint_url: str | None = None


class DriftConfig(_Strict):
    """Drift checks (:mod:`kdflow.drift`): every statistic's threshold, and when a signal becomes a decision.

    Starting values follow common monitoring practice: flip rate 10%, accuracy gap 2 points, PSI 0.2.
    A signal in ``trigger_on`` that exceeds its threshold on ``consecutive_windows`` consecutive checks triggers
    (:func:`kdflow.drift.decide`): ``teacher_accuracy`` a teacher refresh (at most once per
    ``teacher_cooldown_days``); the others a retrain — or, within ``cooldown_days`` of the last retrain or refresh,
    while the teacher is degraded, or when only the probabilities are off (labeled accuracy held), a
    recalibration."""

    cron: str = "0 2 * * *"  # the scheduled daily check
    window_days: int = Field(default=1, gt=0)
    min_rows: int = Field(default=200, gt=0)  # fewer rows in the window: "cannot decide"
    min_labeled_rows: int = Field(default=50, gt=0)  # fewer labeled rows: the accuracy signal is not computed
    label_lag_days: int = Field(default=1, ge=0)  # labels arrive late: accuracy uses rows this much further back
    min_shadow_rows: int = Field(default=50, gt=0)  # fewer shadow-scored rows: no flip rate
    psi_bins: int = Field(default=10, gt=1)
    psi_threshold: float = Field(default=0.2, gt=0.0)
    feature_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)  # family-wise, after the correction below
    correction: Correction = "holm"
    max_flip_rate: float = Field(default=0.10, ge=0.0, le=1.0)
    max_accuracy_drop: float = Field(default=0.02, ge=0.0, le=1.0)  # vs the champion's reference accuracy
    # The teacher's accuracy on every labeled row of the window (label lag included) may fall at most this much
    # below its registered test accuracy (kdflow.teacher_health); needs min_labeled_rows labeled rows.
    max_teacher_accuracy_drop: float = Field(default=0.03, ge=0.0, le=1.0)
    max_estimated_accuracy_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    # Confidence fallback (serving.cascade): the share of production rows the teacher answered may exceed the
    # version's validation deferral rate by at most this much (absolute). Not computed for logs without it.
    max_deferral_rate_increase: float = Field(default=0.05, ge=0.0, le=1.0)
    trigger_on: list[DriftSignal] = Field(
        default_factory=lambda: [
            "accuracy",
            "estimated_accuracy",
            "flip_rate",
            "psi_confidence",
            "psi_predicted_class",
            "teacher_accuracy",
        ]
    )
    consecutive_windows: int = Field(default=2, gt=0)
    cooldown_days: float = Field(default=7.0, ge=0.0)
    # After a teacher refresh was decided, no other for this long (the refresh retrains the student too, so it
    # also starts the retrain cool-down).
    teacher_cooldown_days: float = Field(default=14.0, ge=0.0)
    # While a retrain is suppressed by the cool-down, refit the champion's temperature on the labeled traffic
    # since the drift began instead (the recalibration flow, gated like the monthly one).
    recalibrate_during_cooldown: bool = True
    monitoring_experiment: str = "kdflow-monitoring"


class RetrainConfig(_Strict):
    """The retrain flow: the distill flow with the transfer set extended by recent production inputs."""

    window_days: int = Field(default=14, gt=0)  # recent inputs added to the transfer set
    max_recent_rows: int = Field(default=50_000, gt=0)
    # With at least this many recent labeled rows, the gate also compares on them and they become the new
    # version's reference profile (fewer: gate on the test split, profile of the validation split).
    min_recent_labeled_rows: int = Field(default=300, ge=0)
    # Share of those rows (split by a hash of the request id) that the candidate picks its best epoch and fits its
    # temperature on — the traffic it will serve, not the validation split of the regime before the drift; the
    # rest is the gate's. 0: select and calibrate on the validation split, gate on all of them.
    selection_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)


class RecalibrationConfig(_Strict):
    """The monthly recalibration flow: refit the champion's temperature on the recent labeled window."""

    cron: str = "0 3 1 * *"
    window_days: int = Field(default=30, gt=0)
    # A drift-triggered recalibration reads the drift episode only: with daily checks, consecutive_windows 2 and
    # label_lag_days 1 it has (2 - 1) x 1 day of labels when it runs, about 200 rows at 200 labels a day; 150 lets
    # it act (the bootstrap gate below still refuses a gain within the noise of so few rows).
    min_labeled_rows: int = Field(default=150, gt=0)
    min_ece_improvement: float = Field(default=0.0, ge=0.0)
    # ECE must be lower in at least this share of paired bootstrap resamples of the window: a gain within the
    # window's noise does not replace the temperature (0: any gain).
    min_improvement_confidence: float = Field(default=0.95, ge=0.0, le=1.0)


class TeacherRefreshConfig(_Strict):
    """The teacher-refresh flow (:mod:`kdflow.teacher_refresh`; README "Teacher refresh"): refit the teacher
    (``teacher_uri``, named by ``@champion``) on the labeled traffic of the last ``window_days`` plus a replay
    sample of ``data.train`` (``replay_fraction`` of the mix), gate, promote, retrain the student.

    Rows split by a seeded hash of their request id (the same side in every refresh): a held-out slice
    (``holdout_fraction``, the gate's), a validation slice (``val_fraction`` of the rest) and the training part.
    ``finetune`` continues from the champion's weights (``finetune_epochs`` at ``finetune_lr``); ``retrain``
    trains ``teacher_config``'s architecture from scratch with its ``train`` section. Gate: held-out accuracy
    above the champion's by MORE than ``min_improvement`` (0: strictly better), ``data.test`` accuracy at most
    ``max_forgetting`` below the champion's."""

    mode: TeacherRefreshMode = "finetune"
    teacher_config: str | None = None  # the teacher's YAML (kdflow teacher train): architecture and train section
    # The drift check bounds the window by where the teacher's degradation began (``since``): rows of the regime it
    # failed on. 28 days let 4,000 rows arrive at 200 labels a day.
    window_days: int = Field(default=28, gt=0)
    # Fewer labeled rows in the window: no refresh (recorded; no cool-down: the next check tries again). A refreshed
    # teacher's held-out accuracy becomes its health reference, so refreshing on too few rows locks in a weak
    # teacher: on MNIST-1D's sudden shift, fine-tuned on 1,000 rows it was 7.8 points below a teacher trained on
    # 4,000 rows of the new regime, on 2,000 rows 3.8 below, on 4,000 rows 2.0 below (bench/teacher_refresh.py).
    min_labeled_rows: int = Field(default=4000, gt=0)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    replay_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)
    # Fine-tuning the MNIST-1D teacher on 4,000 rows of the sudden shift: 10 epochs at 3e-4 ended 2.0 points below
    # the oracle, 30 at 1e-3 0.2 below, with 0.983 on the old test split (bench/teacher_refresh.py).
    finetune_epochs: int = Field(default=30, gt=0)
    finetune_lr: float = Field(default=1e-3, gt=0.0)  # a third of the MNIST-1D teacher's training lr
    min_improvement: float = Field(default=0.0, ge=0.0, le=1.0)
    max_forgetting: float = Field(default=0.02, ge=0.0, le=1.0)
    seed: int = 0
    experiment: str = "kdflow-teacher"
    retrain_student: bool = True  # after a promotion, run the retrain flow from the new teacher

    @model_validator(mode="after")
    def _retrain_needs_architecture(self) -> "TeacherRefreshConfig":
        if self.mode == "retrain" and not self.teacher_config:
            raise ValueError("mode retrain trains the teacher's architecture from scratch: set teacher_config")
        return self
