"""The ``kdflow`` command line. Flows are imported lazily, after the embedded defaults are set."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer

from kdflow.redact import actor

app = typer.Typer(add_completion=False, no_args_is_help=True, help="kdflow: knowledge distillation pipeline.")
data_app = typer.Typer(no_args_is_help=True, help="Generate datasets offline.")
teacher_app = typer.Typer(no_args_is_help=True, help="Teacher models.")
logits_app = typer.Typer(no_args_is_help=True, help="Teacher-logit stores: build, inspect, verify.")
drift_app = typer.Typer(no_args_is_help=True, help="Drift checks on production inference logs.")
simulate_app = typer.Typer(no_args_is_help=True, help="Simulated production traffic.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, history, promote, rollback.")
app.add_typer(data_app, name="data")
app.add_typer(teacher_app, name="teacher")
app.add_typer(logits_app, name="logits")
app.add_typer(drift_app, name="drift")
app.add_typer(simulate_app, name="simulate")
app.add_typer(models_app, name="models")

STATE_DIR = Path(".kdflow")
GATE_FAILED_EXIT = 3


def _embedded_defaults() -> None:
    """Keep Prefect's state under ./.kdflow unless the user points it elsewhere (must precede Prefect import)."""
    os.environ.setdefault("PREFECT_HOME", str((STATE_DIR / "prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # The first start migrates a new database, which can take longer than the 20 s default on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _known_errors() -> tuple[type[BaseException], ...]:
    from kdflow.config import ConfigError
    from kdflow.data import DataError
    from kdflow.logits import LogitStoreError
    from kdflow.models import ModelSpecError
    from kdflow.preflight import PreflightError
    from kdflow.registry import RegistryError
    from kdflow.store import StoreError

    # PreflightError: an output location is not writable (exit 2, one line naming each), before any compute
    return ConfigError, DataError, LogitStoreError, ModelSpecError, PreflightError, RegistryError, StoreError


SERVER_DOWN_EXIT = 4


def _fail(message: str, code: int) -> None:
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
        _fail(f"the Prefect server at {api} does not answer ({why}); start it or unset PREFECT_API_URL "
              "to use the embedded API", SERVER_DOWN_EXIT)
    if tracking_uri and tracking_uri.startswith(("http://", "https://")) and (
            why := _health(tracking_uri.rstrip("/") + "/health")):
        _fail(f"the MLflow tracking server at {tracking_uri} does not answer ({why})", SERVER_DOWN_EXIT)


def _run(fn, *args: Any) -> Any:
    """Run a flow; on a known input/configuration error print one line naming it and exit 2."""
    try:
        return fn(*args)
    except _known_errors() as exc:
        _fail(str(exc), 2)


def _with_runner(flow, config: Path):
    """``flow`` with the task runner the config asks for (per-shard logit tasks: threads or a Dask cluster)."""
    from kdflow.config import DistillConfig, load_config
    from tasks.logits import task_runner_for

    cfg = _run(load_config, config, DistillConfig)
    check_servers(cfg.mlflow.tracking_uri)
    return flow.with_options(task_runner=task_runner_for(cfg.store))


def _preflight(config: Path) -> None:
    """Load the config (exit 2 if bad) and check its servers answer (exit 4 if not)."""
    from kdflow.config import DistillConfig, load_config

    check_servers(_run(load_config, config, DistillConfig).mlflow.tracking_uri)


def print_report(report: dict[str, Any]) -> None:
    """Print the summary table, SLA checks and decision."""
    from kdflow.report import summary_rows

    rows = summary_rows(report)
    w = max(len(r[0]) for r in rows)
    typer.echo(f"\n{'metric':<{w}}  {'student':>12}  {'teacher':>12}")
    for name, s, t in rows:
        typer.echo(f"{name:<{w}}  {s:>12}  {t:>12}")
    ev = report["evaluation"]
    typer.echo(f"\nflip rate {ev['flip_rate']:.4f}  gap {ev['teacher_gap']:.4f}  size ratio {ev['size_ratio']:.4f}  "
               f"served T {report['calibration']['temperature']:.4f} (training T {report['provenance']['training_temperature']})")
    typer.echo("\nSLA checks:")
    for c in report["sla_checks"]:
        mark = "PASS" if c["passed"] else "FAIL"
        typer.echo(f"  [{mark}] {c['name']}: {c['value']:.4f} {c['op']} {c['threshold']}")
    reg = report["registration"]
    typer.echo(f"\ngate {'PASSED' if report['gate_passed'] else 'FAILED'}: {report['decision']['reason']}")
    typer.echo(f"registered: {reg['name'] + ' v' + reg['version'] if reg.get('version') else 'nothing'}"
               f"{' aliases ' + ', '.join(reg['aliases']) if reg.get('aliases') else ''}")
    typer.echo(f"report: {report['paths']['json']}")


@data_app.command("mnist1d")
def data_mnist1d(out: Path = typer.Option(..., help="Output directory"),
                 transfer_size: int = typer.Option(50_000, help="Rows of the unlabeled transfer set"),
                 seed: int = typer.Option(0, help="Base seed; each split gets its own")) -> None:
    """Generate MNIST-1D offline: train 4,000 / val 1,000 / test 1,000 labeled + an unlabeled transfer set."""
    from kdflow.generators import write_mnist1d

    for name, path in write_mnist1d(out, transfer_size=transfer_size, seed=seed).items():
        typer.echo(f"{name}: {path}")


@data_app.command("digits")
def data_digits(out: Path = typer.Option(..., help="Output directory"), seed: int = 0) -> None:
    """Write scikit-learn's bundled 8x8 digits as train/val/test (+ transfer = train inputs)."""
    from kdflow.generators import write_digits

    for name, path in write_digits(out, seed=seed).items():
        typer.echo(f"{name}: {path}")


@teacher_app.command("train")
def teacher_train(config: Path = typer.Option(..., help="Teacher config YAML")) -> None:
    """Train a teacher and register it in MLflow under the configured name; it gets the configured alias only if
    it passes the teacher gate (``gate`` in the config), else it stays ``challenger`` and this exits 3."""
    _embedded_defaults()
    from flows.teacher import teacher_flow

    result = _run(teacher_flow, str(config))
    typer.echo(f"teacher {result['uri']} -> version {result['version']}, test accuracy {result['test_accuracy']:.4f}")
    typer.echo(f"gate {'PASSED' if result['promoted'] else 'FAILED'}: {result['reason']}")
    if not result["promoted"]:
        raise typer.Exit(GATE_FAILED_EXIT)


@app.command("distill")
def distill(config: Path = typer.Option(..., help="Distillation config YAML")) -> None:
    """Run the distillation flow; exit 3 when the SLA gate fails."""
    _embedded_defaults()
    from flows.distill import distill_flow

    report = _run(_with_runner(distill_flow, config), str(config))
    print_report(report)
    if not report["gate_passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


@logits_app.command("precompute")
def logits_precompute(config: Path = typer.Option(..., help="Distillation config YAML")) -> None:
    """Store the teacher's logits for every split of a distillation config (reused if already complete)."""
    _embedded_defaults()
    from flows.logits import precompute_flow

    result = _run(_with_runner(precompute_flow, config), str(config))
    for teacher, out in result["teachers"].items():
        typer.echo(teacher)
        for name, uri in out["stores"].items():
            st = out["stats"][name]
            what = ("reused" if st["reused"] else f"{st['shards_computed']} of {st['shards_total']} shards computed, "
                    f"{st['shards_kept']} kept from an earlier run, {st['rows_computed']} rows")
            typer.echo(f"  {name}: {uri} ({what})")


def _stores(store: str, endpoint_url: Optional[str], key: Optional[str]):
    from kdflow.logits import LogitStore, find_stores
    from kdflow.store import open_store

    objects = open_store(store, endpoint_url=endpoint_url)
    keys = [key] if key else find_stores(objects)
    if not keys:
        typer.secho(f"error: no complete logit store under {objects.uri}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return [LogitStore(objects, k) for k in keys]


@logits_app.command("inspect")
def logits_inspect(store: str = typer.Option(..., help="Store root: path, file:// or s3://bucket/prefix"),
                   key: Optional[str] = typer.Option(None, help="One store key (default: every store)"),
                   endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint")) -> None:
    """Print each store's manifest summary and its size."""
    from kdflow.logits import size_bytes

    for ls in _stores(store, endpoint_url, key):
        m = ls.require_manifest()
        total = size_bytes(ls)
        typer.echo(f"{ls.key}\n  teacher {m.teacher_uri} (version {m.teacher_version}), dataset {m.dataset}, "
                   f"fingerprint {m.data_fingerprint[:12]}\n  {m.num_rows} rows x {m.num_classes} classes, {m.dtype} "
                   f"{m.mode}, {len(m.shards)} shards, {total:,} bytes ({total / max(1, m.num_rows):.1f} B/row), "
                   f"{m.clipped_values} clipped, kdflow {m.kdflow_version}")


@logits_app.command("verify")
def logits_verify(store: str = typer.Option(..., help="Store root: path, file:// or s3://bucket/prefix"),
                  key: Optional[str] = typer.Option(None, help="One store key (default: every store)"),
                  endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint")) -> None:
    """Verify every shard checksum and shape; exit 1 if any store has a problem."""
    from kdflow.logits import verify

    bad = 0
    for ls in _stores(store, endpoint_url, key):
        problems = verify(ls)
        bad += bool(problems)
        typer.echo(f"{'OK  ' if not problems else 'FAIL'} {ls.key}")
        for p in problems:
            typer.echo(f"     {p}")
    if bad:
        raise typer.Exit(1)


@app.command("validate")
def validate(config: Path = typer.Option(..., help="Distillation or teacher config YAML"),
             dataset: Optional[str] = typer.Option(None, help="Validate only this dataset (train, val, test, transfer)"),
             out: Optional[Path] = typer.Option(None, help="Also write the report (JSON, Markdown, HTML, Data Docs) here")) -> None:
    """Run the data-validation suites alone and print the result: exit 0 when every dataset passes, 2 if not."""
    import yaml

    from kdflow.config import ConfigError, DistillConfig, TeacherConfig, load_config
    from kdflow.validation import validate_data

    try:
        raw = yaml.safe_load(config.read_text()) if config.is_file() else None
        kind = DistillConfig if isinstance(raw, dict) and "teacher_uri" in raw else TeacherConfig
        cfg = load_config(config, kind)
        endpoint = cfg.store.endpoint_url if isinstance(cfg, DistillConfig) else None
        report, _ = validate_data(cfg.data, cfg.validation, endpoint, with_transfer=isinstance(cfg, DistillConfig),
                                  only=dataset, docs_dir=(out / "data_docs") if out and cfg.validation.data_docs else None)
    except (yaml.YAMLError, ConfigError, *_known_errors()) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for d in report.datasets.values():
        counted = [c for c in d.checks if c.skipped is None]
        typer.echo(f"[{'PASS' if d.success else 'FAIL'}] {d.name} ({d.uri}): {d.rows if d.rows is not None else '?'} rows, "
                   f"{len(counted)} checks, {len(d.failures)} failed")
    if out:
        typer.echo(f"report: {report.write(out)['html']}")
    if not report.success:
        typer.secho(f"error: {report.error_message()}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(f"validation passed in {report.seconds:.2f} s")


def _generated(data_dir: Path, transfer_size: int) -> bool:
    """Whether ``data_dir`` already holds the four demo splits with a transfer set of ``transfer_size`` rows."""
    import pyarrow.parquet as pq

    paths = [data_dir / f"{s}.parquet" for s in ("train", "val", "test", "transfer")]
    if not all(p.is_file() for p in paths):
        return False
    try:
        return pq.ParquetFile(paths[-1]).metadata.num_rows == transfer_size
    except Exception:  # unreadable file: regenerate
        return False


def packaged_config(name: str) -> Path:
    """Path of an example config shipped inside the package."""
    return Path(str(resources.files("kdflow") / "configs" / name))


@app.command("demo")
def demo(transfer_size: int = typer.Option(50_000, help="Transfer-set rows"),
         retrain_teacher: bool = typer.Option(False, help="Train a new teacher even if one is registered")) -> None:
    """MNIST-1D end to end on the embedded default: data, teacher, distillation, report (state in ./.kdflow)."""
    _embedded_defaults()
    from kdflow.config import DistillConfig, TeacherConfig, load_config
    from kdflow.generators import write_mnist1d
    from kdflow.registry import absolute_db_uri, alias_version, configure

    teacher_cfg_path, distill_cfg_path = packaged_config("mnist1d_teacher.yaml"), packaged_config("mnist1d_distill.yaml")
    tcfg = load_config(teacher_cfg_path, TeacherConfig)
    dcfg = load_config(distill_cfg_path, DistillConfig)
    data_dir = Path(tcfg.data.train).parent
    if _generated(data_dir, transfer_size):
        typer.echo(f"[1/3] MNIST-1D already generated in {data_dir}")
    else:
        typer.echo(f"[1/3] generating MNIST-1D into {data_dir} (transfer set {transfer_size:,} rows)")
        write_mnist1d(data_dir, transfer_size=transfer_size)
    configure(tcfg.mlflow.tracking_uri, tcfg.experiment, tcfg.mlflow.artifact_location)
    existing = alias_version(tcfg.registry_name, tcfg.alias)
    if existing and not retrain_teacher:
        typer.echo(f"[2/3] teacher models:/{tcfg.registry_name}@{tcfg.alias} exists (version {existing}); reusing it")
    else:
        typer.echo("[2/3] training the teacher")
        teacher_train(teacher_cfg_path)
    typer.echo("[3/3] distilling the student")
    from flows.distill import distill_flow

    report = _run(_with_runner(distill_flow, distill_cfg_path), str(distill_cfg_path))
    print_report(report)
    db = dcfg.mlflow.tracking_uri
    typer.echo(
        "\nOpen the UIs on this data:\n"
        f"  MLflow:  mlflow ui --backend-store-uri {absolute_db_uri(db)} --port 5000   (http://127.0.0.1:5000)\n"
        f"  Prefect: PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start   (http://127.0.0.1:4200)\n"
        f"Report JSON: {report['paths']['json']}"
    )
    if not report["gate_passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


# ----------------------------------------------------------------------------------------------- lifecycle
AS_OF_HELP = "Run as of this ISO date/time (UTC; default: now) - replays a past day"


def _check_times(*values: str | None) -> None:
    """Refuse a date/time option that is not ISO 8601 with one line and exit 2, before anything starts."""
    from kdflow.lifecycle import parse_as_of

    for value in values:
        _run(parse_as_of, value)


@drift_app.command("check")
def drift_check(config: Path = typer.Option(..., help="Distillation config YAML"),
                as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
                retrain_via: str = typer.Option("auto", help="auto | event | subflow | none")) -> None:
    """Check the champion's recent traffic for drift; on a retrain decision emit the event and retrain."""
    _embedded_defaults()
    from flows.drift import drift_check_flow

    _check_times(as_of)
    _preflight(config)
    result = _run(drift_check_flow, str(config), as_of, retrain_via)
    typer.echo(f"{result['model']} v{result['version']} at {result['as_of']}: {result['status']}")
    for name, value in result["signals"].items():
        typer.echo(f"  {name:<22} {'n/a' if value is None else f'{value:.4f}'}")
    typer.echo(f"decision: {result['decision']['action']} - {result['decision']['reason']}")
    if result.get("recalibration"):
        typer.echo(f"recalibration: {result['recalibration']['reason']}")
    if result.get("retrain"):
        reg = result["retrain"]["report"]["registration"]
        typer.echo(f"retrained: {reg['name']} v{reg['version']} aliases {', '.join(reg['aliases'])}"
                   if reg.get("version") else "retrained: nothing registered")


@app.command("retrain")
def retrain(config: Path = typer.Option(..., help="Distillation config YAML"),
            as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
            reason: str = typer.Option("manual", help="Why (recorded)")) -> None:
    """Distil again with recent production inputs added to the transfer set; gate also on recent traffic."""
    _embedded_defaults()
    from flows.retrain import retrain_flow

    _check_times(as_of)
    result = _run(_with_runner(retrain_flow, config), str(config), as_of, reason)
    print_report(result["report"])


@app.command("recalibrate")
def recalibrate(config: Path = typer.Option(..., help="Distillation config YAML"),
                as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
                since: Optional[str] = typer.Option(None, help="Use no traffic before this ISO date/time (UTC), "
                                                               "e.g. the start of a known shift")) -> None:
    """Refit the champion's temperature on the recent labeled window; register + promote only if ECE improves
    and every SLA still passes."""
    _embedded_defaults()
    from flows.recalibrate import recalibration_flow

    _check_times(as_of, since)
    _preflight(config)
    outcome = _run(recalibration_flow, str(config), as_of, since, "manual")
    typer.echo(outcome["reason"])
    if outcome.get("version"):
        typer.echo(f"registered and promoted version {outcome['version']} (parent {outcome['parent_version']})")


@simulate_app.command("traffic")
def simulate_traffic_cmd(config: Path = typer.Option(..., help="Distillation config YAML (model, teacher, logs)"),
                         days: int = typer.Option(7, help="Days of traffic"),
                         start: Optional[str] = typer.Option(None, help="First day (YYYY-MM-DD; default: today)"),
                         rows_per_day: int = typer.Option(1000, help="Predictions per day"),
                         schedule: str = typer.Option("stable", help="Drift preset or a YAML/JSON schedule file"),
                         shadow_fraction: float = typer.Option(0.1, help="Share shadow-scored by the teacher"),
                         label_fraction: float = typer.Option(0.2, help="Share whose label arrives later"),
                         seed: int = typer.Option(0)) -> None:
    """Score generated MNIST-1D traffic with the champion and write inference logs day by day."""
    from datetime import date

    from kdflow.config import DistillConfig, load_config
    from kdflow.registry import configure_tracking, load_torch_model, resolve
    from kdflow.simulate import simulate_traffic

    cfg = _run(load_config, config, DistillConfig)
    configure_tracking(cfg.mlflow.tracking_uri)
    name = cfg.registry.student_name
    ref = _run(resolve, f"models:/{name}@champion")
    teacher = _run(load_torch_model, _run(resolve, cfg.teacher_uri)) if shadow_fraction > 0 else None
    try:
        summary = simulate_traffic(_run(load_torch_model, ref), name, ref.version, cfg.logs.root,
                                   date.fromisoformat(start) if start else date.today(), days, rows_per_day, schedule,
                                   shadow_fraction, label_fraction, teacher, seed, cfg.logs.endpoint_url)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for day in summary["per_day"]:
        typer.echo(f"{day['date']}: {day['rows']} rows, accuracy {day['accuracy']:.4f}")
    typer.echo(f"logs: {cfg.logs.root}")


def _registry_from(config: Optional[Path], tracking_uri: Optional[str]) -> str:
    """Point MLflow at ``--tracking-uri``, else the config's, else $MLFLOW_TRACKING_URI, else the embedded
    database; stop (exit 4) if an HTTP tracking server does not answer. Returns the URI."""
    from kdflow.config import DistillConfig, MlflowConfig, load_config
    from kdflow.registry import configure_tracking

    uri = tracking_uri or (_run(load_config, config, DistillConfig).mlflow.tracking_uri if config
                           else os.environ.get("MLFLOW_TRACKING_URI", MlflowConfig().tracking_uri))
    check_servers(uri)
    return configure_tracking(uri)


CONFIG_OPT = typer.Option(None, "--config", help="Take the MLflow tracking URI from this config")
TRACKING_OPT = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                                          "the embedded SQLite database)")


@models_app.command("list")
def models_list(config: Optional[Path] = CONFIG_OPT, tracking_uri: Optional[str] = TRACKING_OPT) -> None:
    """Registered models with their champion, challenger and latest versions."""
    from kdflow.registry import list_models

    _registry_from(config, tracking_uri)
    for m in _run(list_models):
        typer.echo(f"{m.name}: champion {m.champion or '-'}, challenger {m.challenger or '-'}, latest {m.latest}")


@models_app.command("history")
def models_history(name: str = typer.Argument(..., help="Registered model name"),
                   config: Optional[Path] = CONFIG_OPT, tracking_uri: Optional[str] = TRACKING_OPT) -> None:
    """Every version (aliases, SLA result) and every alias move: when, who, from which version, why."""
    from kdflow.registry import history, versions

    _registry_from(config, tracking_uri)
    for v in _run(versions, name):
        typer.echo(f"v{v.version}  {v.created}  sla_passed={v.sla_passed}  aliases={','.join(v.aliases) or '-'}")
    typer.echo("alias moves:")
    for e in _run(history, name):
        typer.echo(f"  {e.at}  {e.alias}: {e.previous or '-'} -> {e.version}  by {e.actor}  ({e.reason})")


@models_app.command("promote")
def models_promote(name: str = typer.Argument(...), version: str = typer.Argument(...),
                   reason: str = typer.Option(..., help="Why (recorded)"),
                   config: Optional[Path] = CONFIG_OPT, tracking_uri: Optional[str] = TRACKING_OPT) -> None:
    """Make VERSION champion after re-checking its SLA report (serialized with every other promotion)."""
    _embedded_defaults()
    from tasks.promotion import promote_version

    _registry_from(config, tracking_uri)
    out = _run(promote_version, name, version, reason, actor("cli"))
    typer.echo(f"{name}: champion {out['previous'] or '-'} -> {out['version']}"
               + ("" if out["changed"] else " (already champion)"))


@models_app.command("rollback")
def models_rollback(name: str = typer.Argument(...), reason: str = typer.Option(..., help="Why (recorded)"),
                    config: Optional[Path] = CONFIG_OPT, tracking_uri: Optional[str] = TRACKING_OPT) -> None:
    """Move champion back to the previous champion (serialized with every promotion)."""
    _embedded_defaults()
    from tasks.promotion import rollback_champion

    _registry_from(config, tracking_uri)
    out = _run(rollback_champion, name, reason, actor("cli"))
    typer.echo(f"{name}: champion {out['previous']} -> {out['version']} (rolled back)")


@app.command("serve")
def serve(config: Path = typer.Option(..., help="Distillation config YAML the deployments run with")) -> None:
    """Serve the distill, retrain, drift-check and recalibration deployments (schedules and the drift trigger)
    from this process against the Prefect server at $PREFECT_API_URL."""
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho("error: PREFECT_API_URL is not set; start a server (infra/start-stack.sh) and point "
                    "PREFECT_API_URL at it (the embedded API cannot schedule)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    from flows.deployments import serve_all

    _preflight(config)
    _run(serve_all, str(config.resolve()))


def main(argv: Optional[list[str]] = None) -> None:  # pragma: no cover - console entry
    """Entry point for ``python -m kdflow.cli``."""
    app(args=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
