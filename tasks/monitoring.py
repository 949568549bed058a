"""Lifecycle tasks: the champion and its reference profile, windows of production logs, drift checks and
their history in MLflow, the drift event, recent traffic for retraining, and recalibration."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from kdflow import registry
from kdflow.config import DistillConfig, DriftConfig, FeatureSpec, RecentTraffic, SLAConfig
from kdflow.data import Dataset, write_parquet
from kdflow.drift import Decision, DriftCheck, WindowData, check_window, decide
from kdflow.events import DRIFT_EVENT
from kdflow.inference_logs import InferenceLogError, LogWindow, read_window
from kdflow.lifecycle import Recalibration, ids_from_request_ids, refit_temperature, traffic_frames, window_bounds
from kdflow.models import CalibratedClassifier
from kdflow.profile import ReferenceProfile
from kdflow.sla import SLACheck, check_slas
from kdflow.train import predict_logits
from kdflow.validation import validate_inference_logs
from tasks.registry import PROFILE_ARTIFACT
from tasks.tracking import log_artifact, log_metrics


def _is_registry_error(state) -> bool:
    """A missing champion or profile will not appear on retry."""
    try:
        state.result()
    except registry.RegistryError:
        return True
    except Exception:
        return False
    return False


@dataclass
class Champion:
    """The current champion: pinned version, the served module, its reference profile and version tags."""

    ref: registry.ModelRef
    model: CalibratedClassifier
    profile: ReferenceProfile
    tags: dict[str, str] = field(default_factory=dict)


@task(name="load-champion", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE,
      retry_condition_fn=lambda task, run, state: not _is_registry_error(state))
def load_champion(tracking_uri: str, name: str) -> Champion:
    """Resolve ``name@champion`` (a clear :class:`RegistryError` when there is none), load it and the reference
    profile stored at its registration."""
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
        path = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=tags.get("kdflow.reference_profile",
                                                                                             PROFILE_ARTIFACT))
    except Exception as exc:
        raise registry.RegistryError(f"{ref.version_uri} has no reference profile ({PROFILE_ARTIFACT} of run "
                                     f"{ref.run_id}): {exc}") from exc
    profile = ReferenceProfile.from_dict(json.loads(Path(path).read_text()))
    get_run_logger().info("champion %s version %s (T=%.4f)", name, ref.version, float(model.temperature))
    return Champion(ref, model, profile, tags)


@task(name="read-logs", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_logs(cfg: DistillConfig, start: datetime, end: datetime) -> LogWindow:
    """The inference logs of ``[start, end)`` with the labels known by ``end``, validated with the
    ``kdflow-inference-logs`` GX suite (bad logs stop the flow with one error naming the problem).
    Missing date partitions do not raise: they are listed on the window (the check then cannot decide)."""
    window = read_window(cfg.logs.root, start, end, cfg.logs.endpoint_url, require_all_partitions=False,
                         labels_as_of=end)
    if len(window):
        report = validate_inference_logs(window.frame, cfg.data.num_classes, FeatureSpec(column="x"), cfg.validation,
                                         name="inference_logs", uri=window.root, id_column="request_id")
        report.raise_for_failures()
    get_run_logger().info("logs %s [%s, %s): %d rows, %d labeled, %d shadow-scored, missing dates %s", window.root,
                          start.date(), end.date(), len(window), int(window.label_mask.sum()),
                          int(window.shadow_mask.sum()), [d.isoformat() for d in window.missing_dates])
    return window


def _window_data(window: LogWindow, version: str, since: datetime | None = None) -> WindowData:
    rows = (window.frame["model_version"].astype(str) == str(version)).to_numpy()
    if since is not None:
        rows = rows & (window.frame["timestamp"] >= since).to_numpy()
    return WindowData(probs=window.probs[rows], x=window.x[rows], labels=window.labels[rows],
                      teacher_logits=window.teacher_logits[rows], shadow_mask=window.shadow_mask[rows])


@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift(champion: Champion, window: LogWindow, cfg: DriftConfig) -> DriftCheck:
    """Every drift statistic of the champion's rows in the last ``window_days`` against its reference profile;
    the accuracy signal uses the labeled rows of the whole window read (``label_lag_days`` longer, as labels
    arrive late). Missing partitions or too few rows: "cannot decide", with the reason."""
    recent_start = window.end - timedelta(days=cfg.window_days)
    missing = [d for d in window.missing_dates if d >= recent_start.date()]  # a missing label-lag day only
    if missing:                                                            # means fewer labeled rows
        reason = (f"cannot decide: {len(missing)} missing log partition(s) in {window.root}: "
                  + ", ".join(d.isoformat() for d in missing))
        return DriftCheck("cannot_decide", reason, len(window), 0, 0, signals={})
    check = check_window(champion.profile, _window_data(window, champion.ref.version, recent_start), cfg,
                         labeled_window=_window_data(window, champion.ref.version))
    get_run_logger().info("drift check: %s", check.reason)
    return check


def _monitoring_experiment(cfg: DistillConfig) -> str:
    return registry.configure(cfg.mlflow.tracking_uri, cfg.drift.monitoring_experiment, cfg.mlflow.artifact_location)


@task(name="drift-history", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def drift_history(cfg: DistillConfig, champion: Champion, as_of: datetime) -> tuple[dict[str, Any] | None, datetime | None]:
    """The decision of this champion version's last check before ``as_of`` (it carries every signal's streak;
    None for the version's first check), and when the last retrain of the model was decided (for the cool-down)."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    client, exp = MlflowClient(), _monitoring_experiment(cfg)
    name, before = champion.ref.name, as_of.timestamp()
    base = f"tags.`kdflow.model` = '{name}' AND metrics.as_of_ts < {before}"
    runs = client.search_runs([exp], f"{base} AND tags.`kdflow.model_version` = '{champion.ref.version}'",
                              order_by=["metrics.as_of_ts DESC"], max_results=1)
    previous = None
    if runs:
        path = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="decision.json")
        previous = json.loads(Path(path).read_text())
    retrains = client.search_runs([exp], f"{base} AND tags.`kdflow.action` = 'retrain'",
                                  order_by=["metrics.as_of_ts DESC"], max_results=1)
    last = datetime.fromisoformat(retrains[0].data.tags["kdflow.as_of"]) if retrains else None
    return previous, last


@task(name="decide-action", cache_policy=NO_CACHE)
def decide_action(previous: dict[str, Any] | None, check: DriftCheck, cfg: DriftConfig,
                  last_retrain_at: datetime | None, as_of: datetime) -> Decision:
    """Carry the signals' streaks on, apply the consecutive-window rule and the cool-down
    (:func:`kdflow.drift.decide`): retrain, recalibrate, none or cannot decide."""
    decision = decide(previous, check, cfg, last_retrain_at, as_of)
    get_run_logger().info("decision %s: %s", decision.action, decision.reason)
    return decision


def _markdown(name: str, version: str, as_of: datetime, check: DriftCheck, decision: Decision) -> str:
    lines = [f"# Drift check: {name} v{version} at {as_of.isoformat()}", "",
             f"**Decision: {decision.action}** — {decision.reason}", "",
             f"{check.n_rows} rows, {check.n_labeled} labeled, {check.n_shadow} shadow-scored.", "",
             "| signal | value | threshold | exceeded | detail |", "|---|---|---|---|---|"]
    for s in check.signals.values():
        value = "n/a" if s.value is None else f"{s.value:.4g}"
        lines.append(f"| {s.name} | {value} | {s.threshold} | {s.exceeded} | {s.detail} |")
    return "\n".join(lines)


@task(name="record-drift-check", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_drift_check(cfg: DistillConfig, champion: Champion, as_of: datetime, check: DriftCheck,
                       decision: Decision) -> str:
    """One MLflow run per check in the monitoring experiment (every statistic, its threshold, the decision and
    why; ``check.json`` for the next checks) and a Prefect markdown artifact. Returns the MLflow run id.

    Idempotent under retries: the run is keyed by this task run's id (:func:`kdflow.registry.open_run`), so a
    retry completes the run its first attempt created instead of adding a second check to the drift history;
    metrics are re-logged with the same values and the JSON artifacts overwritten in place."""
    from mlflow import MlflowClient
    from prefect.runtime import task_run

    client, exp = MlflowClient(), _monitoring_experiment(cfg)
    name, version = champion.ref.name, champion.ref.version
    tags = {"kdflow.flow": "drift-check", "kdflow.model": name, "kdflow.model_version": version,
            "kdflow.as_of": as_of.isoformat(), "kdflow.status": check.status, "kdflow.action": decision.action,
            "kdflow.triggered": ",".join(decision.triggered), "kdflow.reason": decision.reason[:5000]}
    if decision.episode_start is not None:
        tags["kdflow.episode_start"] = decision.episode_start.isoformat()
    params = {f"drift.{k}": v for k, v in cfg.drift.model_dump(mode="json").items()}
    key = task_run.get_id()
    run_id, _ = registry.open_run(exp, f"record-drift-check:{key}" if key else None,
                                  f"drift-{name}-v{version}-{as_of:%Y%m%dT%H%M}", tags, params)
    metrics = {"as_of_ts": as_of.timestamp(), "n_rows": check.n_rows, "n_labeled": check.n_labeled,
               "n_shadow": check.n_shadow, "retrain": float(decision.action == "retrain"),
               **{f"signal_{s.name}": s.value for s in check.signals.values() if s.value is not None},
               **{f"exceeded_{s.name}": float(bool(s.exceeded)) for s in check.signals.values()
                  if s.exceeded is not None},
               **{f"window_{k}": v for k, v in check.metrics.items()}}
    log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for file, payload in (("check.json", check.to_dict()), ("decision.json", decision.to_dict())):
            path = Path(tmp) / file
            path.write_text(json.dumps(payload, indent=1, default=str))
            log_artifact(run_id, path)
    client.set_terminated(run_id, "FINISHED")
    create_markdown_artifact(markdown=_markdown(name, version, as_of, check, decision), key="kdflow-drift-check",
                             description=f"drift check of {name} v{version}: {decision.action}")
    return run_id


@task(name="emit-drift-event", cache_policy=NO_CACHE)
def emit_drift_event(config_path: str, champion: Champion, as_of: datetime, check: DriftCheck,
                     decision: Decision) -> str | None:
    """Emit ``kdflow.drift.detected`` (resource ``kdflow.model.<name>``) with the model, version and statistics;
    a deployment trigger on it starts the retrain deployment. Returns the event id."""
    from prefect.events import emit_event

    name, version = champion.ref.name, champion.ref.version
    stats = {s.name: s.value for s in check.signals.values() if s.value is not None}
    event = emit_event(event=DRIFT_EVENT,
                       resource={"prefect.resource.id": f"kdflow.model.{name}", "kdflow.model": name,
                                 "kdflow.version": str(version)},
                       payload={"config_path": str(Path(config_path).resolve()), "as_of": as_of.isoformat(),
                                "model": name, "version": str(version), "statistics": stats,
                                "triggered": decision.triggered, "reason": decision.reason})
    get_run_logger().info("emitted %s for %s v%s", DRIFT_EVENT, name, version)
    return str(event.id) if event is not None else None


def retrain_deployment_exists() -> bool:
    """Whether a ``retrain`` deployment is registered on the Prefect API (then its event trigger retrains)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    try:
        with get_client(sync_client=True) as client:
            return bool(client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"]))))
    except Exception:
        return False


@task(name="collect-recent-traffic", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def collect_recent_traffic(cfg: DistillConfig, as_of: datetime, out_dir: Path) -> RecentTraffic:
    """Recent production inputs as an extra (unlabeled) transfer split, and the recent labeled rows for the
    gate, written as Parquet in kdflow's layout under ``out_dir`` (a retry overwrites the same files)."""
    start, end = window_bounds(as_of, cfg.retrain.window_days)
    window = read_logs.fn(cfg, start, end)
    if not len(window):
        raise InferenceLogError(f"no inference logs in {cfg.logs.root} in the {cfg.retrain.window_days} days "
                                f"before {as_of.isoformat()}: nothing to retrain on")
    inputs, labeled = traffic_frames(window.request_ids, window.x, window.labels, cfg.retrain.max_recent_rows)
    enough = len(labeled) >= max(cfg.retrain.min_recent_labeled_rows, 1)
    traffic = RecentTraffic(
        recent=str(write_parquet(inputs, out_dir / "recent.parquet")),
        recent_labeled=str(write_parquet(labeled, out_dir / "recent_labeled.parquet")) if enough else None,
        window=(start.isoformat(), end.isoformat()), rows=len(window), recent_rows=len(inputs),
        labeled_rows=len(labeled))
    get_run_logger().info("recent traffic: %d inputs added to the transfer set; %d labeled rows %s", len(inputs),
                          len(labeled), "for the gate" if enough else "(too few: gate on test only)")
    return traffic


@task(name="labeled-window", cache_policy=NO_CACHE)
def labeled_window(cfg: DistillConfig, start: datetime, end: datetime) -> tuple[Dataset, int]:
    """The labeled rows of the logs in ``[start, end)`` (labels known by ``end``) as a dataset (ids from the
    request ids), and the window's total row count."""
    window = read_logs.fn(cfg, start, end)
    known = window.label_mask
    labeled = Dataset("recalibration_window", window.root, ids_from_request_ids(window.request_ids[known]),
                      window.x[known], window.labels[known])
    get_run_logger().info("labeled window %s [%s, %s): %d of %d rows labeled", window.root, start.isoformat(),
                          end.isoformat(), len(labeled), len(window))
    return labeled, len(window)


@task(name="refit-temperature", cache_policy=NO_CACHE)
def refit_champion_temperature(champion: Champion, x: np.ndarray, y: np.ndarray, cfg: DistillConfig) -> Recalibration:
    """Refit the champion's temperature on the labeled window (:func:`kdflow.lifecycle.refit_temperature`)."""
    logits = predict_logits(champion.model.model, x)
    result = refit_temperature(logits, y, float(champion.model.temperature), cfg.calibration,
                               cfg.recalibration.min_ece_improvement, cfg.recalibration.min_improvement_confidence)
    get_run_logger().info("recalibration of %s v%s: %s", champion.ref.name, champion.ref.version, result.reason)
    return result


@task(name="parent-evaluation", cache_policy=NO_CACHE)
def parent_evaluation(champion: Champion) -> dict[str, Any]:
    """The evaluation in the champion's distillation report (accuracy, gap, flip rate, latency, size: all
    unchanged by a new temperature)."""
    import mlflow.artifacts

    try:
        # A recalibrated version has no report of its own: it carries its distillation run as report_run_id.
        run_id = champion.tags.get("kdflow.report_run_id") or champion.tags.get("kdflow.run_id", champion.ref.run_id)
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report/report.json")
    except Exception as exc:
        raise registry.RegistryError(f"{champion.ref.version_uri}: its distillation report is missing: {exc}") from exc
    return json.loads(Path(path).read_text())["evaluation"]


@task(name="judge-recalibration", cache_policy=NO_CACHE)
def judge_recalibration(result: Recalibration, evaluation: dict[str, Any], sla: SLAConfig
                        ) -> tuple[list[SLACheck], bool, str]:
    """Every SLA on the recalibrated model (the parent's evaluation with the new out-of-fold ECE and temperature)
    and whether to register it: only if ECE improved and every SLA still passes."""
    checks = check_slas({**evaluation, "student_ece": result.ece_after, "served_temperature": result.new_temperature},
                        sla)
    failed = [c.name for c in checks if not c.passed]
    if not result.improved:
        return checks, False, f"nothing changed: {result.reason}"
    if failed:
        return checks, False, f"nothing changed: the recalibrated model would fail SLA(s) {', '.join(failed)}"
    return checks, True, f"recalibrated: {result.reason}; every SLA passes"


def reference_window_start(champion: Champion) -> datetime | None:
    """Where the production traffic the champion's reference profile describes begins (tag
    ``kdflow.reference_window_start``; None for a profile of the validation split)."""
    start = champion.tags.get(f"{registry.TAG_PREFIX}reference_window_start")
    return datetime.fromisoformat(start) if start else None


def recalibration_tags(champion: Champion, result: Recalibration, start: datetime, end: datetime,
                       trigger: str) -> dict[str, Any]:
    """The parent's provenance (teacher, data, config) plus what this recalibration did; the new version's
    reference profile is the window it was refit on."""
    keep = {k.removeprefix(registry.TAG_PREFIX): v for k, v in champion.tags.items()
            if k.startswith(registry.TAG_PREFIX) and not k.startswith((f"{registry.TAG_PREFIX}alias",
                                                                       f"{registry.TAG_PREFIX}sla_"))
            and k not in (f"{registry.TAG_PREFIX}run_id", f"{registry.TAG_PREFIX}reference_profile")}
    tags = champion.tags
    report_run = tags.get(f"{registry.TAG_PREFIX}report_run_id", tags.get(f"{registry.TAG_PREFIX}run_id"))
    return {**keep, "parent_version": champion.ref.version, "trigger": "recalibration", "report_run_id": report_run,
            "recalibration_trigger": trigger, "recalibration_window": f"[{start.isoformat()}, {end.isoformat()})",
            "reference": "production", "reference_window_start": start.isoformat(),
            "reference_window_end": end.isoformat(),
            "calibrated_temperature": result.new_temperature, "previous_temperature": result.current_temperature}


@task(name="record-recalibration", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_recalibration(run_id: str, champion: Champion, as_of: datetime, outcome: dict[str, Any]) -> None:
    """Metrics, ``recalibration.json`` and a Prefect markdown artifact saying what changed, or why nothing did.

    A repeat is harmless, so it is retried as is: it creates no run and no version; metrics are logged again with
    the same values at the same step, ``recalibration.json`` is overwritten in place, and the markdown artifact
    is written last, so an attempt that created it did not fail before it."""
    result = outcome.get("result") or {}
    log_metrics(run_id, {"labeled_rows": outcome["labeled_rows"], "registered": float(bool(outcome.get("version"))),
                         **{k: float(v) for k, v in result.items() if isinstance(v, (int, float))}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recalibration.json"
        path.write_text(json.dumps(outcome, indent=1, default=str))
        log_artifact(run_id, path)
    create_markdown_artifact(
        key="kdflow-recalibration", description=f"recalibration of {champion.ref.name} v{champion.ref.version}",
        markdown=f"# Recalibration of {champion.ref.name} v{champion.ref.version} at {as_of.isoformat()}\n\n"
                 f"{outcome['reason']}\n\nNew version: {outcome.get('version') or 'none'}")
    get_run_logger().info("recalibration: %s", outcome["reason"])
