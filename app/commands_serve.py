"""``kdflow serve-model``: the HTTP scoring server for the registered champion (kdflow.serving)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from app.common import check_servers, fail, known_errors, run


def serve_model(
    config: Path = typer.Option(..., help="Distillation config YAML (registry, logs, serving)"),
    host: Optional[str] = typer.Option(None, help="Address to bind (default: serving.host, 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="Port (default: serving.port, 8080)"),
) -> None:
    """Serve models:/<registry.student_name>@<serving.alias> over HTTP (MLflow's POST /invocations, plus
    /labels, /ping, /health, /version) until SIGTERM; every prediction is logged under logs.root."""
    import torch

    from kdflow.artifact import ArtifactError
    from kdflow.config import DistillConfig, load_config
    from kdflow.registry import configure_tracking
    from kdflow.serving.http import Server, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One request's rows are few: intra-op threads only contend with each other and with the event loop (on 2
    # cores, the torch runtime's p50 went from 12 ms to 0.9 ms with one thread). onnxruntime uses one as well.
    torch.set_num_threads(1)
    cfg = run(load_config, config, DistillConfig)
    check_servers(cfg.mlflow.tracking_uri)
    configure_tracking(cfg.mlflow.tracking_uri)
    try:
        server = Server(cfg)
    except (ArtifactError, *known_errors()) as exc:
        fail(str(exc), 2)
    serve(server, host or cfg.serving.host, cfg.serving.port if port is None else port)
