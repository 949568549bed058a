"""Logit precomputation alone: validate -> resolve teacher -> store its logits (a re-run reuses them)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import DistillConfig, load_config
from tasks.data import validate_inputs
from tasks.logits import precompute_teacher_logits, resolve_teacher
from tasks.preflight import check_outputs


@flow(name="precompute-logits", log_prints=True)
def precompute_flow(config_path: str) -> dict[str, Any]:
    """Build (or confirm) the logit stores a distillation config needs, without training anything."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("store",), device=True)  # fail before compute: every output writable
    datasets = validate_inputs(cfg.data, cfg.student, cfg.store.endpoint_url)
    results = {}
    for uri in cfg.teacher_uris:
        teacher = resolve_teacher(uri, cfg.mlflow.tracking_uri)
        out = precompute_teacher_logits(cfg, teacher, datasets)
        results[teacher.version_uri] = {
            "stores": out.store_uris,
            "stats": {n: vars(s) for n, s in out.stats.items()},
            "teacher_loaded": out.teacher_loaded,
        }
    first = next(iter(results))
    return {"teacher": first, **results[first], "teachers": results}
