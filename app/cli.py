"""The ``kdflow`` command line. Flows are imported lazily, after the embedded defaults are set.

Commands live by theme in ``app/commands_*.py``; this module assembles them into one typer app.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from app.commands_lifecycle import deployments_app, drift_app, recalibrate, retrain, serve, simulate_app, worker
from app.commands_methods import distill_online
from app.commands_models import models_app
from app.commands_pipeline import data_app, demo, distill, logits_app, teacher_app, validate
from app.commands_serve import serve_model
from app.commands_tune import tune
from app.common import GATE_FAILED_EXIT, SERVER_DOWN_EXIT

__all__ = ["GATE_FAILED_EXIT", "SERVER_DOWN_EXIT", "app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kdflow: knowledge distillation pipeline.")
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")
app.add_typer(logits_app, name="logits")
app.add_typer(drift_app, name="drift")
app.add_typer(simulate_app, name="simulate")
app.add_typer(models_app, name="models")
app.add_typer(deployments_app, name="deployments")
app.command("distill")(distill)
app.command("distill-online")(distill_online)
app.command("validate")(validate)
app.command("demo")(demo)
app.command("retrain")(retrain)
app.command("recalibrate")(recalibrate)
app.command("serve")(serve)
app.command("worker")(worker)
app.command("tune")(tune)
app.command("serve-model")(serve_model)


def main(argv: Optional[list[str]] = None) -> None:  # pragma: no cover - console entry
    """Entry point for ``python -m app`` / ``python -m app.cli``."""
    app(args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
