"""Monitoring a served champion: load it with its reference profile, read and validate windows of its production
logs, check them for drift, keep the drift history in MLflow, hand recent traffic to a retrain, and recalibrate.

The domain side of the drift-check, retrain and recalibration flows. Each Prefect task in ``tasks/`` wraps one
function here (retries, logging, artifacts); like every library module, this one never imports Prefect. Steps
hand each other the typed results defined here (:class:`Champion`, :class:`DriftHistory`,
:class:`DriftCheckResult`, :class:`LabeledWindow`) and in :mod:`kdflow.lifecycle` (:class:`RecalibrationOutcome`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from kdflow import registry
from kdflow.config import (
    CalibrationConfig,
    CascadeConfig,
    DriftConfig,
    FeatureSpec,
    LogsConfig,
    RecalibrationConfig,
    RecalibrationTrigger,
    RecentTraffic,
    RetrainConfig,
    RetrainVia,
    SLAConfig,
    ValidationConfig,
)
from kdflow.data import Dataset, write_parquet
from kdflow.drift import Decision, DriftCheck, WindowData, check_window
from kdflow.inference_logs import InferenceLogError, LogWindow, read_window
from kdflow.lifecycle import (
    RecalibrationOutcome,
    ids_from_request_ids,
    judge_refit,
    refit_cascade,
    refit_temperature,
    split_selection,
    traffic_frames,
    window_bounds,
)
from kdflow.models import CalibratedClassifier
from kdflow.profile import ReferenceProfile
from kdflow.served import PROFILE_ARTIFACT, ServedRows, VersionReference, recent_days, served_text
from kdflow.teacher_health import SIGNAL as TEACHER_SIGNAL
from kdflow.train import predict_logits
from kdflow.validation import validate_inference_logs

REPORT_ARTIFACT = "report/report.json"  # a distillation run's report
_P = registry.TAG_PREFIX


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float]) -> None:
    """Log ``metrics`` at step 0, NaN skipped (a repeat logs the same values at the same step: unchanged)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v])


# ------------------------------------------------------------------------------------------------ champion
@dataclass
class Champion:
    """The current champion: pinned version, the served module, its reference profile and version tags."""

    ref: registry.ModelRef
    model: CalibratedClassifier
    profile: ReferenceProfile
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def reference_window_start(self) -> datetime | None:
        """Where the production traffic the reference profile describes begins (tag
        ``kdflow.reference_window_start``; None for a profile of the validation split)."""
        start = self.tags.get(f"{_P}reference_window_start")
        return datetime.fromisoformat(start) if start else None

    @property
    def report_run_id(self) -> str | None:
        """The distillation run whose report describes these weights: a recalibrated version has no report of
        its own and carries its distillation run as ``kdflow.report_run_id``."""
        return self.tags.get(f"{_P}report_run_id") or self.tags.get(f"{_P}run_id", self.ref.run_id)


def load_champion(tracking_uri: str, name: str) -> Champion:
    """Resolve ``name@champion`` (a clear :class:`~kdflow.registry.RegistryError` when there is none), load it
    and the reference profile stored at its registration."""
    import mlflow.artifacts

    from mlflow import MlflowClient

    registry.configure_tracking(tracking_uri)
    registry.champion_version(name)  # "no such model" / "has no champion", named
    ref = registry.resolve(f"models:/{name}@{registry.CHAMPION}")
    model = registry.load_torch_model(ref)
    if not isinstance(model, CalibratedClassifier):
        raise registry.RegistryError(f"{ref.version_uri} is not a calibrated kdflow student ({type(model).__name__})")
    tags = dict(MlflowClient().get_model_version(ref.name, ref.version).tags)
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=ref.run_id, artifact_path=tags.get(f"{_P}reference_profile", PROFILE_ARTIFACT)
        )
    except Exception as exc:
        raise registry.RegistryError(
            f"{ref.version_uri} has no reference profile ({PROFILE_ARTIFACT} of run {ref.run_id}): {exc}"
        ) from exc
    return Champion(ref, model, ReferenceProfile.from_dict(json.loads(Path(path).read_text())), tags)


def parent_evaluation(champion: Champion) -> dict[str, Any]:
    """The evaluation in the champion's distillation report (accuracy, gap, flip rate, latency, size: all
    unchanged by a new temperature)."""
    import mlflow.artifacts

    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.report_run_id, artifact_path=REPORT_ARTIFACT)
    except Exception as exc:
        raise registry.RegistryError(f"{champion.ref.version_uri}: its distillation report is missing: {exc}") from exc
    return json.loads(Path(path).read_text())["evaluation"]


# ------------------------------------------------------------------------------------------------ logs
def read_logs(
    logs: LogsConfig, validation: ValidationConfig, num_classes: int, start: datetime, end: datetime
) -> LogWindow:
    """The inference logs of ``[start, end)`` with the labels known by ``end``, validated with the
    ``kdflow-inference-logs`` GX suite (bad logs raise one error naming the problem). Missing date partitions
    do not raise: they are listed on the window (a drift check then cannot decide)."""
    window = read_window(logs.root, start, end, logs.endpoint_url, require_all_partitions=False, labels_as_of=end)
    if len(window):
        validate_inference_logs(
            window.frame,
            num_classes,
            FeatureSpec(column="x"),
            validation,
            name="inference_logs",
            uri=window.root,
            id_column="request_id",
        ).raise_for_failures()
    return window


def retrain_dir(output_dir: str, as_of: datetime) -> Path:
    """Where a retrain at ``as_of`` writes the recent traffic it trains on: ``<output_dir>/retrain/<as_of>``."""
    return Path(output_dir).resolve() / "retrain" / f"{as_of:%Y%m%dT%H%M%S}"


def collect_recent_traffic(
    logs: LogsConfig,
    validation: ValidationConfig,
    num_classes: int,
    cfg: RetrainConfig,
    as_of: datetime,
    output_dir: str,
) -> RecentTraffic:
    """The last ``cfg.window_days`` of logs before ``as_of``: an extra (unlabeled) transfer split (at most
    ``cfg.max_recent_rows``, a deterministic sample) and the labeled rows (None under ``min_recent_labeled_rows``)
    split into the candidate's selection and the gate's rows (:func:`kdflow.lifecycle.split_selection`), as
    Parquet in kdflow's layout under :func:`retrain_dir` (a repeat overwrites the same files). No logs at all:
    :class:`InferenceLogError`, nothing to retrain on."""
    start, end = window_bounds(as_of, cfg.window_days)
    window = read_logs(logs, validation, num_classes, start, end)
    if not len(window):
        raise InferenceLogError(
            f"no inference logs in {logs.root} in the {cfg.window_days} days before "
            f"{as_of.isoformat()}: nothing to retrain on"
        )
    inputs, labeled = traffic_frames(window.request_ids, window.x, window.labels, cfg.max_recent_rows)
    out_dir = retrain_dir(output_dir, as_of)
    enough = len(labeled) >= max(cfg.min_recent_labeled_rows, 1)
    select, gate = split_selection(labeled, cfg.selection_fraction)
    if not (len(select) and len(gate)):  # too few rows to split: the validation split selects, all rows gate
        select, gate = select.iloc[:0], labeled
    return RecentTraffic(
        recent=str(write_parquet(inputs, out_dir / "recent.parquet")),
        recent_labeled=str(write_parquet(gate, out_dir / "recent_labeled.parquet")) if enough else None,
        recent_val=str(write_parquet(select, out_dir / "recent_val.parquet")) if enough and len(select) else None,
        window=(start.isoformat(), end.isoformat()),
        rows=len(window),
        recent_rows=len(inputs),
        labeled_rows=len(labeled),
    )


# ------------------------------------------------------------------------------------------------ drift check
def drift_window(as_of: datetime, cfg: DriftConfig) -> tuple[datetime, datetime]:
    """The logs a check at ``as_of`` reads: the last ``window_days``, plus ``label_lag_days`` further back
    for the accuracy signal (labels arrive late)."""
    return window_bounds(as_of, cfg.window_days + cfg.label_lag_days)


def version_rows(window: LogWindow, version: str, since: datetime | None = None) -> WindowData:
    """The rows of ``window`` served by model ``version`` (from ``since`` on, when given)."""
    rows = window.model_versions == str(version)
    if since is not None:
        rows = rows & (window.frame["timestamp"] >= since).to_numpy()
    return WindowData(
        probs=window.probs[rows],
        x=window.x[rows],
        labels=window.labels[rows],
        teacher_logits=window.teacher_logits[rows],
        shadow_mask=window.shadow_mask[rows],
        answered_by=window.answered_by[rows],
    )


def check_version(
    profile: ReferenceProfile,
    version: str,
    window: LogWindow,
    cfg: DriftConfig,
    deferral_reference: float | None = None,
) -> DriftCheck:
    """Every drift statistic (:func:`kdflow.drift.check_window`) of ``version``'s rows in the last
    ``window_days`` of ``window`` against its reference ``profile`` (and its validation deferral rate
    ``deferral_reference``); the accuracy signal uses the labeled rows of the whole window (``label_lag_days``
    longer, as labels arrive late). A missing log partition in the last ``window_days`` means "cannot decide",
    with the dates; a missing label-lag day only means fewer labels."""
    recent_start, missing = recent_days(window, cfg)
    if missing:
        reason = f"cannot decide: {len(missing)} missing log partition(s) in {window.root}: " + ", ".join(
            d.isoformat() for d in missing
        )
        return DriftCheck("cannot_decide", reason, len(window), 0, 0, signals={})
    return check_window(
        profile,
        version_rows(window, version, recent_start),
        cfg,
        labeled_window=version_rows(window, version),
        deferral_reference=deferral_reference,
    )


def champion_reference(champion: Champion) -> VersionReference:
    """The champion's reference profile and tags, as loaded with it."""
    return VersionReference(champion.ref.version, champion.profile, dict(champion.tags))


def check_served(served: ServedRows, reference: VersionReference, window: LogWindow, cfg: DriftConfig) -> DriftCheck:
    """The drift check of the version ``served`` chose (:func:`check_version` against ``reference``, which must be
    that version's; the champion's when none was chosen), carrying the rows per serving version and which were
    checked. When no version served ``min_rows`` rows, or a checked day has no log partition, "cannot decide"
    names the versions and their rows."""
    version = served.checked or served.champion
    if reference.version != version:
        raise ValueError(f"check_served: the reference is v{reference.version}'s, the checked rows are v{version}'s")
    check = check_version(reference.profile, version, window, cfg, reference.deferral_rate)
    check.served, check.checked_version, check.scope = dict(served.counts), served.checked, served.scope
    if recent_days(window, cfg)[1]:  # a missing day: nothing was checked
        check.reason += (
            f" (rows by serving version on the days present: {served_text(served.counts, served.champion) or 'none'})"
        )
        check.checked_version, check.scope = None, check.reason
    elif served.checked is None:
        check.reason = served.scope
        check.signals = {name: replace(s, detail=served.scope) for name, s in check.signals.items()}
    elif served.checked != served.champion:
        check.reason = f"{served.scope}; {check.reason}"
    return check


@dataclass(frozen=True)
class DriftHistory:
    """What a check needs from the checks before it: the decision of the same version's last check (it carries
    every signal's streak but the teacher's, which comes from the last check of any version:
    :func:`with_teacher_streak`; None for the model's first check), when a retrain was last decided and when the
    teacher was last refreshed (a refresh that trained: promoted or refused)."""

    previous: Decision | None
    last_retrain_at: datetime | None
    last_refresh_at: datetime | None = None


def drift_history(
    experiment_id: str, name: str, version: str, as_of: datetime, refreshes: tuple[str, str] | None = None
) -> DriftHistory:
    """Model ``name``'s checks before ``as_of`` (stored by :func:`record_drift_check` in ``experiment_id``): the
    last check of ``version`` with the teacher's streak of the last check of any version (:func:`with_teacher_streak`),
    the last retrain decision of any version (cool-down); with ``refreshes`` (the teacher-refresh experiment, the
    teacher's name) the last refresh that trained (:func:`kdflow.teacher_refresh.last_acted_refresh`)."""
    import mlflow.artifacts

    from kdflow.teacher_refresh import last_acted_refresh
    from mlflow import MlflowClient

    client = MlflowClient()
    base = f"tags.`{_P}model` = '{name}' AND metrics.as_of_ts < {as_of.timestamp()}"

    def last(where: str) -> tuple[Any, Decision | None]:
        runs = client.search_runs([experiment_id], where, order_by=["metrics.as_of_ts DESC"], max_results=1)
        if not runs:
            return None, None
        path = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="decision.json")
        return runs[0], Decision.from_dict(json.loads(Path(path).read_text()))

    latest_run, latest = last(base)
    same = latest_run is not None and latest_run.data.tags.get(f"{_P}model_version") == str(version)
    previous = latest if same else last(f"{base} AND tags.`{_P}model_version` = '{version}'")[1]  # read once
    previous = with_teacher_streak(previous, latest)
    runs = client.search_runs(
        [experiment_id], f"{base} AND tags.`{_P}action` = 'retrain'", order_by=["metrics.as_of_ts DESC"], max_results=1
    )
    last_retrain = datetime.fromisoformat(runs[0].data.tags[f"{_P}as_of"]) if runs else None
    last_refresh = last_acted_refresh(*refreshes, as_of) if refreshes else None
    return DriftHistory(previous, last_retrain, last_refresh)


def with_teacher_streak(previous: Decision | None, latest: Decision | None) -> Decision | None:
    """``previous`` (the checked version's last decision) with the ``teacher_accuracy`` streak of ``latest`` (the
    last check of any version): the teacher's health does not depend on which student version served, so a new
    student version (a recalibration, a retrain) neither restarts nor revives the teacher's streak."""
    n = latest.consecutive.get(TEACHER_SIGNAL, 0) if latest is not None else 0
    start = latest.since.get(TEACHER_SIGNAL) if n and latest is not None else None
    if previous is None and not n:
        return None
    base = previous or Decision("none", "", [], {})
    if base.consecutive.get(TEACHER_SIGNAL, 0) == n and base.since.get(TEACHER_SIGNAL) == start:
        return base
    since = {k: v for k, v in base.since.items() if k != TEACHER_SIGNAL} | ({TEACHER_SIGNAL: start} if start else {})
    return replace(base, consecutive={**base.consecutive, TEACHER_SIGNAL: n}, since=since)


def drift_metrics(as_of: datetime, check: DriftCheck, decision: Decision) -> dict[str, float]:
    """The MLflow metrics of one check: ``as_of_ts`` (what :func:`drift_history` orders by), row counts (also
    per serving version: ``served_rows_v<version>``), each computed signal (``signal_*``) and whether it exceeded
    its threshold (``exceeded_*``), the window's raw metrics (``window_*``), ``retrain`` and ``refresh_teacher``
    (1 on such a decision)."""
    signals = check.signals.values()
    return {
        "as_of_ts": as_of.timestamp(),
        "n_rows": check.n_rows,
        "n_labeled": check.n_labeled,
        "n_shadow": check.n_shadow,
        "retrain": float(decision.action == "retrain"),
        "refresh_teacher": float(decision.action == "refresh_teacher"),
        **{f"served_rows_v{version}": n for version, n in check.served.items()},
        **{f"signal_{s.name}": s.value for s in signals if s.value is not None},
        **{f"exceeded_{s.name}": float(bool(s.exceeded)) for s in signals if s.exceeded is not None},
        **{f"window_{k}": v for k, v in check.metrics.items()},
    }


def record_drift_check(
    experiment_id: str,
    run_key: str | None,
    ref: registry.ModelRef,
    as_of: datetime,
    check: DriftCheck,
    decision: Decision,
    cfg: DriftConfig,
) -> str:
    """Store one check as a finished MLflow run in ``experiment_id``: tags (model, version, as_of, status,
    action, triggered signals, reason, episode start; the checked version, rows per serving version and why),
    the drift config as params, :func:`drift_metrics`, ``check.json`` and ``decision.json`` (what the next check
    reads back). Returns the run id.

    ``run_key`` (:func:`kdflow.registry.open_run`): a repeat with the same key completes the run the first call
    created instead of adding a second check to the history; metrics and the JSON files are rewritten with the
    same values."""
    from mlflow import MlflowClient

    tags = {
        f"{_P}flow": "drift-check",
        f"{_P}model": ref.name,
        f"{_P}model_version": ref.version,
        f"{_P}as_of": as_of.isoformat(),
        f"{_P}status": check.status,
        f"{_P}action": decision.action,
        f"{_P}triggered": ",".join(decision.triggered),
        f"{_P}reason": decision.reason[:5000],
    }
    if decision.episode_start is not None:
        tags[f"{_P}episode_start"] = decision.episode_start.isoformat()
    if check.scope:
        tags[f"{_P}checked_version"] = check.checked_version or ""
        tags[f"{_P}served"] = ",".join(f"{v}={n}" for v, n in check.served.items())
        tags[f"{_P}scope"] = check.scope[:5000]
    run_id, _ = registry.open_run(
        experiment_id,
        run_key,
        f"drift-{ref.name}-v{ref.version}-{as_of:%Y%m%dT%H%M}",
        tags,
        {f"drift.{k}": v for k, v in cfg.model_dump(mode="json").items()},
    )
    client = MlflowClient()
    _log_metrics(client, run_id, drift_metrics(as_of, check, decision))
    client.log_dict(run_id, check.to_dict(), "check.json")
    client.log_dict(run_id, decision.to_dict(), "decision.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def drift_markdown(ref: registry.ModelRef, as_of: datetime, check: DriftCheck, decision: Decision) -> str:
    """A markdown summary of one check: the decision and why, row counts (per serving version and which were
    checked, when known), and a table of every signal."""
    lines = [
        f"# Drift check: {ref.name} v{ref.version} at {as_of.isoformat()}",
        "",
        f"**Decision: {decision.action}** — {decision.reason}",
        "",
        f"{check.n_rows} rows, {check.n_labeled} labeled, {check.n_shadow} shadow-scored.",
        "",
        *(
            [
                f"Rows by serving version: {served_text(check.served, ref.version) or 'none'}.",
                "",
                f"Scope: {check.scope}",
                "",
            ]
            if check.scope
            else []
        ),
        "| signal | value | threshold | exceeded | detail |",
        "|---|---|---|---|---|",
    ]
    for s in check.signals.values():
        value = "n/a" if s.value is None else f"{s.value:.4g}"
        lines.append(f"| {s.name} | {value} | {s.threshold} | {s.exceeded} | {s.detail} |")
    return "\n".join(lines)


@dataclass
class DriftCheckResult:
    """One drift check: the champion checked, the check, the decision, its MLflow run, and what followed it
    (the event and who acts on it; the retrain's, the teacher refresh's or the recalibration's result)."""

    ref: registry.ModelRef
    as_of: datetime
    check: DriftCheck
    decision: Decision
    mlflow_run_id: str
    event_id: str | None = None
    retrain_via: RetrainVia | None = None
    retrain: dict[str, Any] | None = None
    recalibration: dict[str, Any] | None = None
    teacher_refresh: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able result the drift-check flow returns; ``served`` (rows per serving version),
        ``checked_version`` and ``scope`` when the check knows who served; ``event_id`` and ``retrain_via`` only
        after a retrain or refresh decision; ``teacher_refresh`` only when a refresh ran here."""
        out: dict[str, Any] = {
            "model": self.ref.name,
            "version": self.ref.version,
            "as_of": self.as_of.isoformat(),
            "status": self.check.status,
            "decision": self.decision.to_dict(),
            "mlflow_run_id": self.mlflow_run_id,
            "signals": {n: s.value for n, s in self.check.signals.items()},
            "retrain": self.retrain,
            "recalibration": self.recalibration,
        }
        if self.teacher_refresh is not None:
            out["teacher_refresh"] = self.teacher_refresh
        if self.check.scope:
            out.update(served=self.check.served, checked_version=self.check.checked_version, scope=self.check.scope)
        if self.decision.action in ("retrain", "refresh_teacher"):
            out.update(event_id=self.event_id, retrain_via=self.retrain_via)
        return out


# ------------------------------------------------------------------------------------------------ recalibration
@dataclass
class LabeledWindow:
    """The labeled rows of ``[start, end)`` as a dataset (ids from the request ids), and how many rows the
    window had in all."""

    start: datetime
    end: datetime
    labeled: Dataset
    rows: int
    teacher_logits: np.ndarray | None = None  # of the labeled rows; NaN rows where not shadow-scored


def labeled_rows(window: LogWindow) -> LabeledWindow:
    """The rows of ``window`` whose label is known, as the dataset ``recalibration_window``, with their shadow
    teacher logits (for the cascade threshold's refit)."""
    known = window.label_mask
    dataset = Dataset(
        "recalibration_window",
        window.root,
        ids_from_request_ids(window.request_ids[known]),
        window.x[known],
        window.labels[known],
    )
    return LabeledWindow(window.start, window.end, dataset, len(window), window.teacher_logits[known])


def read_labeled_window(
    logs: LogsConfig, validation: ValidationConfig, num_classes: int, start: datetime, end: datetime
) -> LabeledWindow:
    """The labeled rows of the (validated) logs in ``[start, end)``, labels known by ``end``."""
    return labeled_rows(read_logs(logs, validation, num_classes, start, end))


def recalibration_tags(champion: Champion, outcome: RecalibrationOutcome) -> dict[str, Any]:
    """The version tags of a recalibrated champion: the parent's provenance (teacher, data, config) plus what
    this recalibration did; its reference profile is the window it was refit on. The cascade threshold is the
    refitted one (``kdflow.cascade_refit`` True) or, when it could not be refitted, the parent's, carried over
    (``cascade_refit`` False); ``cascade_reason`` says which. No cascade tags when the cascade is disabled.
    ``sla_alert``: the SLA(s) it still misses, when it replaces a champion that missed them worse."""
    keep = {
        k.removeprefix(_P): v
        for k, v in champion.tags.items()
        if k.startswith(_P)
        and not k.startswith((f"{_P}alias", f"{_P}sla_", f"{_P}cascade_"))
        and k not in (f"{_P}run_id", f"{_P}reference_profile")
    }
    start, end = outcome.start.isoformat(), outcome.end.isoformat()
    return {
        **keep,
        "parent_version": champion.ref.version,
        "trigger": "recalibration",
        "report_run_id": champion.report_run_id,
        "recalibration_trigger": outcome.trigger,
        "recalibration_window": f"[{start}, {end})",
        "reference": "production",
        "reference_window_start": start,
        "reference_window_end": end,
        "calibrated_temperature": outcome.result.new_temperature,
        "previous_temperature": outcome.result.current_temperature,
        **_cascade_tags(champion, outcome),
        **({"sla_alert": outcome.sla_alert} if outcome.sla_alert else {}),
    }


def _cascade_tags(champion: Champion, outcome: RecalibrationOutcome) -> dict[str, Any]:
    if outcome.cascade_reason is None:
        return {}
    if outcome.cascade is not None:
        return {**outcome.cascade.tags(), "cascade_refit": True, "cascade_reason": outcome.cascade_reason}
    carried = {
        k.removeprefix(_P): v
        for k, v in champion.tags.items()
        if k.startswith(f"{_P}cascade_") and k not in (f"{_P}cascade_refit", f"{_P}cascade_reason")
    }
    reason = f"{outcome.cascade_reason}; carried over from version {champion.ref.version}"
    return {**carried, "cascade_refit": False, "cascade_reason": reason}


def recalibrate(
    champion: Champion,
    window: LabeledWindow,
    trigger: RecalibrationTrigger,
    cfg: RecalibrationConfig,
    calibration: CalibrationConfig,
    sla: SLAConfig,
    cascade: CascadeConfig | None = None,
    min_shadow_rows: int = 50,
) -> RecalibrationOutcome:
    """Refit the champion's temperature on ``window``'s labeled rows and judge it (a champion serving a vector
    or isotonic map is judged as served; the refit replaces it with a temperature alone).

    Fewer than ``cfg.min_labeled_rows`` labeled rows: "cannot decide", nothing refit. Otherwise the temperature
    is refit and judged out of fold (:func:`kdflow.lifecycle.refit_temperature`, gated by
    ``min_ece_improvement`` and ``min_improvement_confidence``), then against every SLA with the parent's
    evaluation (:func:`kdflow.lifecycle.judge_refit`). When it is to be registered, the outcome carries the
    served module (the same weights at the new temperature), the cascade threshold refitted at the new
    temperature when ``cascade`` is enabled and the window has ``min_shadow_rows`` labeled shadow-scored rows
    (:func:`kdflow.lifecycle.refit_cascade`), and its version tags."""
    outcome = RecalibrationOutcome(
        champion.ref.version, trigger, window.start, window.end, window.rows, len(window.labeled)
    )
    if outcome.labeled_rows < cfg.min_labeled_rows:
        outcome.reason = (
            f"cannot decide: {outcome.labeled_rows} labeled rows in the window, fewer than "
            f"recalibration.min_labeled_rows={cfg.min_labeled_rows}"
        )
        return outcome
    logits = predict_logits(champion.model.model, window.labeled.x)
    result = refit_temperature(  # a champion serving a map after its temperature is judged as served
        logits, window.labeled.y, float(champion.model.temperature), calibration, cfg.min_ece_improvement,
        cfg.min_improvement_confidence, current_probs=champion.model.mapped_probabilities(logits),
    )  # fmt: skip
    outcome = judge_refit(outcome, result, parent_evaluation(champion), sla)
    if outcome.register:
        outcome.served = CalibratedClassifier(champion.model.model, result.new_temperature)
        if cascade is not None and cascade.enabled:
            outcome.cascade, outcome.cascade_reason = refit_cascade(
                logits, window.labeled.y, window.teacher_logits, result.new_temperature, cascade, min_shadow_rows
            )
        outcome.tags = recalibration_tags(champion, outcome)
    return outcome


def record_recalibration(run_id: str, outcome: RecalibrationOutcome) -> None:
    """Log the outcome's metrics and ``recalibration.json`` to run ``run_id``. A repeat logs the same values at
    the same step and overwrites the file in place: harmless."""
    from mlflow import MlflowClient

    client = MlflowClient()
    _log_metrics(client, run_id, outcome.metrics())
    client.log_dict(run_id, outcome.as_dict(), "recalibration.json")
