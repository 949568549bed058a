"""Logit precomputation alone: validate -> resolve teacher -> store its logits (a re-run reuses them)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import DistillConfig, load_config
from tasks.data import validate_inputs, validate_inputs_out_of_core
from tasks.logits import precompute_teacher_logits, resolve_teacher
from tasks.preflight import check_outputs


@flow(name="precompute-logits", log_prints=True)
def precompute_flow(config_path: str) -> dict[str, Any]:
    """Build (or confirm) the logit stores a distillation config needs, without training anything."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("store",), device=True)  # fail before compute: every output writable
    if cfg.data.out_of_core:  # every split stays in its Parquet files: validated in chunks, read shard by shard
        datasets = validate_inputs_out_of_core(cfg.data, cfg.student, cfg.store.endpoint_url, cfg.validation)
    else:
        datasets = validate_inputs(cfg.data, cfg.student, cfg.store.endpoint_url, validation=cfg.validation)
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
