"""Retraining: the distill flow with the transfer set extended by recent production inputs (the teacher scores
them into the logit store), the best epoch and temperature chosen on part of the recent labeled traffic and the
gate also comparing with the champion on the rest (``retrain.selection_fraction``)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.distill import distill_flow
from kdflow.config import DistillConfig, load_config
from kdflow.lifecycle import parse_as_of
from tasks.monitoring import collect_recent_traffic
from tasks.preflight import check_outputs


@flow(name="retrain", log_prints=True)
def retrain_flow(config_path: str, as_of: str | None = None, reason: str = "") -> dict[str, Any]:
    """Retrain at ``as_of`` (default: now) on the last ``retrain.window_days`` of traffic; ``reason`` is recorded."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("reports", "store", "mlflow"))  # fail before compute: every output writable
    when = parse_as_of(as_of)
    recent = collect_recent_traffic(cfg.logs, cfg.validation, cfg.data.num_classes, cfg.retrain, when, cfg.output_dir)
    report = distill_flow(config_path, recent=recent)  # typed parameters: the user's config is never rewritten
    return {"as_of": when.isoformat(), "reason": reason, "recent": recent.model_dump(mode="json"), "report": report}
