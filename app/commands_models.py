"""The model registry: list, history, promote, rollback, compare."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from app.common import check_servers, embedded_defaults, fail, run
from kdflow.redact import actor

models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, history, promote, rollback, compare.")

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


@models_app.command("compare")
def models_compare(
    name: str = typer.Argument(..., help="Registered model name"),
    config: Path = typer.Option(
        ..., "--config", help="Distillation config YAML (MLflow, logs, drift.min_labeled_rows)"
    ),
    days: Optional[int] = typer.Option(None, min=1, help="The last N days up to now (default 7)"),
    start: Optional[str] = typer.Option(None, help="Window start, ISO date/time (UTC); with --end"),
    end: Optional[str] = typer.Option(None, help="Window end (exclusive), ISO date/time (UTC); with --start"),
    versions: Optional[tuple[str, str]] = typer.Option(
        None, "--versions", help="Two versions to compare (default: champion and challenger)"
    ),
    min_rows: Optional[int] = typer.Option(
        None, min=1, help="Fewest rows a figure rests on (default: drift.min_labeled_rows)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON"),
) -> None:
    """Two versions (champion and challenger by default) on the same window of logged traffic: rows served,
    accuracy and ECE on labeled rows, flip rate vs the shadow teacher, latency p50/p95, deferral rate."""
    import json
    from collections import Counter
    from datetime import timedelta

    from kdflow import compare, monitor, registry, served
    from kdflow.config import DistillConfig, load_config
    from kdflow.lifecycle import parse_as_of

    if days is not None and (start or end):
        fail("give either --days or --start and --end, not both", 2)
    if bool(start) != bool(end):
        fail("--start and --end go together", 2)
    t0, t1 = run(parse_as_of, start), run(parse_as_of, end)
    if not start:
        t0 = t1 - timedelta(days=days or 7)
    cfg = run(load_config, config, DistillConfig)
    uri = _registry_from(None, cfg.mlflow.tracking_uri)
    if versions is None:
        run(registry.champion_version, name)  # the model and its champion exist, or one line naming them
        pair = (registry.alias_version(name, registry.CHAMPION), registry.alias_version(name, registry.CHALLENGER))
        if pair[1] is None:
            fail(f"registered model {name!r} has no challenger; name two versions with --versions A B", 2)
    else:
        pair = versions
    if pair[0] == pair[1]:
        fail(f"--versions names v{pair[0]} twice; give two different versions", 2)
    refs = [run(served.load_reference, uri, name, v) for v in pair]  # an unknown version: one line, exit 2
    window = run(monitor.read_logs, cfg.logs, cfg.validation, cfg.data.num_classes, t0, t1)
    counts = Counter(window.model_versions.tolist())
    for v in pair:
        if not counts.get(v):
            others = ", ".join(f"v{k} {n} rows" for k, n in counts.most_common()) or "none"
            fail(
                f"v{v} served no rows in {window.root} [{t0.isoformat()}, {t1.isoformat()}); versions that did: {others}",
                2,
            )
    roles = {registry.alias_version(name, a): a for a in (registry.CHALLENGER, registry.CHAMPION)}
    figures = [
        compare.version_figures(
            window,
            ref.version,
            min_rows or cfg.drift.min_labeled_rows,
            cfg.calibration.n_bins,
            roles.get(ref.version, ""),
            ref.profile,
            ref.deferral_rate,
        )
        for ref in refs
    ]
    result = compare.compare_versions(window, *figures)
    typer.echo(json.dumps(result.as_dict(), indent=2) if as_json else f"{name}: {result.table()}")
