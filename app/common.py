"""What every command shares: embedded defaults, exit codes, one-line errors, server checks, the report table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import typer

STATE_DIR = Path(".kdflow")
GATE_FAILED_EXIT = 3
SERVER_DOWN_EXIT = 4
AS_OF_HELP = "Run as of this ISO date/time (UTC; default: now) - replays a past day"


def embedded_defaults() -> None:
    """Keep Prefect's state under ./.kdflow unless the user points it elsewhere (must precede Prefect import)."""
    os.environ.setdefault("PREFECT_HOME", str((STATE_DIR / "prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # The first start migrates a new database, which can take longer than the 20 s default on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def known_errors() -> tuple[type[BaseException], ...]:
    """The library's input/configuration errors: a command prints one line naming the problem and exits 2."""
    from kdflow.config import ConfigError
    from kdflow.data import DataError
    from kdflow.logits import LogitStoreError
    from kdflow.models import ModelSpecError
    from kdflow.preflight import PreflightError
    from kdflow.registry import RegistryError
    from kdflow.store import StoreError

    # PreflightError: an output location is not writable (exit 2, one line naming each), before any compute
    return ConfigError, DataError, LogitStoreError, ModelSpecError, PreflightError, RegistryError, StoreError


def fail(message: str, code: int) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code) from None


def _health(url: str, timeout: float = 5.0) -> str | None:
    """``None`` if ``url`` answers (any HTTP status), else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except Exception as exc:  # refused, timed out, DNS
        return str(getattr(exc, "reason", exc))
    return None


def check_servers(tracking_uri: str | None = None) -> None:
    """Stop with one line (exit 4) when the Prefect API (``$PREFECT_API_URL``) or an HTTP MLflow tracking
    server does not answer, before any flow starts - instead of a long retry loop and a traceback."""
    api = os.environ.get("PREFECT_API_URL")
    if api and (why := _health(api.rstrip("/") + "/health")):
        fail(
            f"the Prefect server at {api} does not answer ({why}); start it or unset PREFECT_API_URL "
            "to use the embedded API",
            SERVER_DOWN_EXIT,
        )
    if (
        tracking_uri
        and tracking_uri.startswith(("http://", "https://"))
        and (why := _health(tracking_uri.rstrip("/") + "/health"))
    ):
        fail(f"the MLflow tracking server at {tracking_uri} does not answer ({why})", SERVER_DOWN_EXIT)


def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` (a flow or library function); on a known input/configuration error print one line naming it
    and exit 2."""
    try:
        return fn(*args)
    except known_errors() as exc:
        fail(str(exc), 2)


def with_runner(flow: Any, config: Path) -> Any:
    """``flow`` with the task runner the config asks for (per-shard logit tasks: threads or a Dask cluster)."""
    from kdflow.config import DistillConfig, load_config
    from tasks.logits import task_runner_for

    cfg = run(load_config, config, DistillConfig)
    check_servers(cfg.mlflow.tracking_uri)
    return flow.with_options(task_runner=task_runner_for(cfg.store))


def preflight(config: Path) -> None:
    """Load the config (exit 2 if bad) and check its servers answer (exit 4 if not)."""
    from kdflow.config import DistillConfig, load_config

    check_servers(run(load_config, config, DistillConfig).mlflow.tracking_uri)


def check_times(*values: str | None) -> None:
    """Refuse a date/time option that is not ISO 8601 with one line and exit 2, before anything starts."""
    from kdflow.lifecycle import parse_as_of

    for value in values:
        run(parse_as_of, value)


def print_report(report: dict[str, Any]) -> None:
    """Print the summary table, SLA checks and decision."""
    from kdflow.report import summary_rows

    rows = summary_rows(report)
    w = max(len(r[0]) for r in rows)
    typer.echo(f"\n{'metric':<{w}}  {'student':>12}  {'teacher':>12}")
    for name, s, t in rows:
        typer.echo(f"{name:<{w}}  {s:>12}  {t:>12}")
    ev = report["evaluation"]
    typer.echo(
        f"\nflip rate {ev['flip_rate']:.4f}  gap {ev['teacher_gap']:.4f}  size ratio {ev['size_ratio']:.4f}  "
        f"served T {report['calibration']['temperature']:.4f} (training T {report['provenance']['training_temperature']})"
    )
    typer.echo("\nSLA checks:")
    for c in report["sla_checks"]:
        mark = "PASS" if c["passed"] else "FAIL"
        detail = f" ({c['detail']})" if c.get("detail") else ""  # e.g. the classes below min_class_accuracy
        typer.echo(f"  [{mark}] {c['name']}: {c['value']:.4f} {c['op']} {c['threshold']}{detail}")
    reg = report["registration"]
    typer.echo(f"\ngate {'PASSED' if report['gate_passed'] else 'FAILED'}: {report['decision']['reason']}")
    typer.echo(
        f"registered: {reg['name'] + ' v' + reg['version'] if reg.get('version') else 'nothing'}"
        f"{' aliases ' + ', '.join(reg['aliases']) if reg.get('aliases') else ''}"
    )
    typer.echo(f"report: {report['paths']['json']}")
