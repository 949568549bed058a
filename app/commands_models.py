"""The model registry: list, history, promote, rollback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from app.common import check_servers, embedded_defaults, run
from kdflow.redact import actor

models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, history, promote, rollback.")

CONFIG_OPT = typer.Option(None, "--config", help="Take the MLflow tracking URI from this config")
TRACKING_OPT = typer.Option(
    None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the embedded SQLite database)"
)


def _registry_from(config: Optional[Path], tracking_uri: Optional[str]) -> str:
    """Point MLflow at ``--tracking-uri``, else the config's, else $MLFLOW_TRACKING_URI, else the embedded
    database; stop (exit 4) if an HTTP tracking server does not answer. Returns the URI."""
    from kdflow.config import DistillConfig, MlflowConfig, load_config
    from kdflow.registry import configure_tracking

    uri = tracking_uri or (
        run(load_config, config, DistillConfig).mlflow.tracking_uri
        if config
        else os.environ.get("MLFLOW_TRACKING_URI", MlflowConfig().tracking_uri)
    )
    check_servers(uri)
    return configure_tracking(uri)


@models_app.command("list")
def models_list(config: Optional[Path] = CONFIG_OPT, tracking_uri: Optional[str] = TRACKING_OPT) -> None:
    """Registered models with their champion, challenger and latest versions."""
    from kdflow.registry import list_models

    _registry_from(config, tracking_uri)
    for m in run(list_models):
        typer.echo(f"{m.name}: champion {m.champion or '-'}, challenger {m.challenger or '-'}, latest {m.latest}")


@models_app.command("history")
def models_history(
    name: str = typer.Argument(..., help="Registered model name"),
    config: Optional[Path] = CONFIG_OPT,
    tracking_uri: Optional[str] = TRACKING_OPT,
) -> None:
    """Every version (aliases, SLA result) and every alias move: when, who, from which version, why."""
    from kdflow.registry import history, versions

    _registry_from(config, tracking_uri)
    for v in run(versions, name):
        typer.echo(f"v{v.version}  {v.created}  sla_passed={v.sla_passed}  aliases={','.join(v.aliases) or '-'}")
    typer.echo("alias moves:")
    for e in run(history, name):
        typer.echo(f"  {e.at}  {e.alias}: {e.previous or '-'} -> {e.version}  by {e.actor}  ({e.reason})")


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    reason: str = typer.Option(..., help="Why (recorded)"),
    config: Optional[Path] = CONFIG_OPT,
    tracking_uri: Optional[str] = TRACKING_OPT,
) -> None:
    """Make VERSION champion after re-checking its SLA report (serialized with every other promotion)."""
    embedded_defaults()
    from tasks.promotion import promote_version

    _registry_from(config, tracking_uri)
    out = run(promote_version, name, version, reason, actor("cli"))
    typer.echo(
        f"{name}: champion {out['previous'] or '-'} -> {out['version']}"
        + ("" if out["changed"] else " (already champion)")
    )


@models_app.command("rollback")
def models_rollback(
    name: str = typer.Argument(...),
    reason: str = typer.Option(..., help="Why (recorded)"),
    config: Optional[Path] = CONFIG_OPT,
    tracking_uri: Optional[str] = TRACKING_OPT,
) -> None:
    """Move champion back to the previous champion (serialized with every promotion)."""
    embedded_defaults()
    from tasks.promotion import rollback_champion

    _registry_from(config, tracking_uri)
    out = run(rollback_champion, name, reason, actor("cli"))
    typer.echo(f"{name}: champion {out['previous']} -> {out['version']} (rolled back)")
