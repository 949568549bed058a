"""Building a model: generate data, validate it, train a teacher, store its logits, distil, the demo."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from app.common import (
    AS_OF_HELP,
    GATE_FAILED_EXIT,
    check_times,
    embedded_defaults,
    fail,
    known_errors,
    preflight,
    print_report,
    run,
    with_runner,
)
from kdflow.config import packaged_config

if TYPE_CHECKING:
    from kdflow.config import DistillConfig

data_app = typer.Typer(no_args_is_help=True, help="Generate datasets offline.")
teacher_app = typer.Typer(no_args_is_help=True, help="Teacher models.")
logits_app = typer.Typer(no_args_is_help=True, help="Teacher-logit stores: build, inspect, verify.")


@data_app.command("mnist1d")
def data_mnist1d(
    out: Path = typer.Option(..., help="Output directory"),
    transfer_size: int = typer.Option(50_000, help="Rows of the unlabeled transfer set"),
    seed: int = typer.Option(0, help="Base seed; each split gets its own"),
) -> None:
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


@data_app.command("table")
def data_table(
    name: str = typer.Option(..., help="breast_cancer, wine, digits or iris (scikit-learn's bundled tables)"),
    out: Path = typer.Option(..., help="Output directory"),
    seed: int = 0,
) -> None:
    """Write a scikit-learn bundled table with named columns at raw scales as train/val/test (+ transfer); print
    the ``data.features.columns`` list to put in the config."""
    from kdflow.generators import sklearn_table_columns, write_sklearn_table

    for split, path in write_sklearn_table(out, name, seed=seed).items():
        typer.echo(f"{split}: {path}")
    typer.echo(f"columns: {sklearn_table_columns(name)}")


@teacher_app.command("train")
def teacher_train(config: Path = typer.Option(..., help="Teacher config YAML")) -> None:
    """Train a teacher and register it in MLflow under the configured name; it gets the configured alias only if
    it passes the teacher gate (``gate`` in the config), else it stays ``challenger`` and this exits 3."""
    embedded_defaults()
    from flows.teacher import teacher_flow

    result = run(teacher_flow, str(config))
    typer.echo(f"teacher {result['uri']} -> version {result['version']}, test accuracy {result['test_accuracy']:.4f}")
    typer.echo(f"gate {'PASSED' if result['promoted'] else 'FAILED'}: {result['reason']}")
    if not result["promoted"]:
        raise typer.Exit(GATE_FAILED_EXIT)


@teacher_app.command("refresh")
def teacher_refresh(
    config: Path = typer.Option(..., help="Distillation config YAML (teacher_uri, logs, teacher_refresh)"),
    as_of: Optional[str] = typer.Option(None, help=AS_OF_HELP),
    mode: Optional[str] = typer.Option(None, help="finetune | retrain (default: teacher_refresh.mode)"),
    reason: str = typer.Option("manual", help="Why (recorded)"),
    since: Optional[str] = typer.Option(None, help="Read labeled rows from this ISO time on (inside window_days)"),
) -> None:
    """Refit the teacher on recent labeled traffic plus a replay of its training data, gate it against the champion
    teacher, promote it and retrain the student from it. Exit 0 on promotion or a clean no-refresh (too few
    labels), 3 when the gate refuses, 2 on bad input."""
    embedded_defaults()
    from flows.teacher_refresh import teacher_refresh_flow

    check_times(as_of, since)
    preflight(config)
    if mode is not None and mode not in ("finetune", "retrain"):
        fail(f"--mode must be finetune or retrain, got {mode!r}", 2)
    result = run(teacher_refresh_flow, str(config), as_of, reason, mode, since)
    typer.echo(
        f"teacher {result['teacher']} v{result['parent_version']} ({result['mode']}) at {result['as_of']}: "
        f"{result['outcome']}"
    )
    typer.echo(f"  {result['outcome_reason']}")
    if "rows" in result:
        typer.echo(f"  rows: {', '.join(f'{k} {v}' for k, v in result['rows'].items())}")
    if result.get("version"):
        typer.echo(f"  refreshed teacher: version {result['version']}")
    typer.echo(f"  phases (s): {', '.join(f'{k} {v:.1f}' for k, v in result['phases'].items())}")
    if result.get("retrain"):
        reg = result["retrain"]["report"]["registration"]
        typer.echo(f"  student retrained: {reg['name']} v{reg.get('version')} aliases {', '.join(reg['aliases'])}")
    if result["outcome"] == "refused":
        raise typer.Exit(GATE_FAILED_EXIT)


def distill(config: Path = typer.Option(..., help="Distillation config YAML")) -> None:
    """Run the distillation flow (born-again generations when ``self_distill.generations`` > 1); exit 3 when the SLA
    gate fails."""
    embedded_defaults()
    from app.commands_methods import distill_flow_for, print_method_sections

    report = run(with_runner(distill_flow_for(config), config), str(config))
    print_report(report)
    print_method_sections(report)
    if not report["gate_passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


@logits_app.command("precompute")
def logits_precompute(config: Path = typer.Option(..., help="Distillation config YAML")) -> None:
    """Store the teacher's logits for every split of a distillation config (reused if already complete)."""
    embedded_defaults()
    from flows.logits import precompute_flow

    result = run(with_runner(precompute_flow, config), str(config))
    for teacher, out in result["teachers"].items():
        typer.echo(teacher)
        for name, uri in out["stores"].items():
            st = out["stats"][name]
            what = (
                "reused"
                if st["reused"]
                else f"{st['shards_computed']} of {st['shards_total']} shards computed, "
                f"{st['shards_kept']} kept from an earlier run, {st['rows_computed']} rows"
            )
            typer.echo(f"  {name}: {uri} ({what})")


def _stores(store: str, endpoint_url: Optional[str], key: Optional[str]) -> list:
    """The logit stores under ``store`` (one if ``key``); exit 2 when there is none."""
    from kdflow.logits import LogitStore, find_stores
    from kdflow.store import open_store

    objects = open_store(store, endpoint_url=endpoint_url)
    keys = [key] if key else find_stores(objects)
    if not keys:
        typer.secho(f"error: no complete logit store under {objects.uri}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    return [LogitStore(objects, k) for k in keys]


@logits_app.command("inspect")
def logits_inspect(
    store: str = typer.Option(..., help="Store root: path, file:// or s3://bucket/prefix"),
    key: Optional[str] = typer.Option(None, help="One store key (default: every store)"),
    endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint"),
) -> None:
    """Print each store's manifest summary and its size."""
    from kdflow.logits import size_bytes

    for ls in _stores(store, endpoint_url, key):
        m = ls.require_manifest()
        total = size_bytes(ls)
        typer.echo(
            f"{ls.key}\n  teacher {m.teacher_uri} (version {m.teacher_version}), dataset {m.dataset}, "
            f"fingerprint {m.data_fingerprint[:12]}\n  {m.num_rows} rows x {m.num_classes} classes, {m.dtype} "
            f"{m.mode}, {len(m.shards)} shards, {total:,} bytes ({total / max(1, m.num_rows):.1f} B/row), "
            f"{m.clipped_values} clipped, kdflow {m.kdflow_version}"
        )


@logits_app.command("verify")
def logits_verify(
    store: str = typer.Option(..., help="Store root: path, file:// or s3://bucket/prefix"),
    key: Optional[str] = typer.Option(None, help="One store key (default: every store)"),
    endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint"),
) -> None:
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


def validate(
    config: Path = typer.Option(..., help="Distillation or teacher config YAML"),
    dataset: Optional[str] = typer.Option(None, help="Validate only this dataset (train, val, test, transfer)"),
    out: Optional[Path] = typer.Option(None, help="Also write the report (JSON, Markdown, HTML, Data Docs) here"),
) -> None:
    """Run the data-validation suites alone and print the result: exit 0 when every dataset passes, 2 if not."""
    import yaml

    from kdflow.config import ConfigError, DistillConfig, TeacherConfig, load_config
    from kdflow.validation import validate_data

    try:
        raw = yaml.safe_load(config.read_text()) if config.is_file() else None
        kind = DistillConfig if isinstance(raw, dict) and "teacher_uri" in raw else TeacherConfig
        cfg = load_config(config, kind)
        endpoint = cfg.store.endpoint_url if isinstance(cfg, DistillConfig) else None
        report, _ = validate_data(
            cfg.data,
            cfg.validation,
            endpoint,
            with_transfer=isinstance(cfg, DistillConfig),
            only=dataset,
            docs_dir=(out / "data_docs") if out and cfg.validation.data_docs else None,
        )
    except (yaml.YAMLError, ConfigError, *known_errors()) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for d in report.datasets.values():
        counted = [c for c in d.checks if c.skipped is None]
        typer.echo(
            f"[{'PASS' if d.success else 'FAIL'}] {d.name} ({d.uri}): {d.rows if d.rows is not None else '?'} rows, "
            f"{len(counted)} checks, {len(d.failures)} failed"
        )
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


def demo(
    transfer_size: int = typer.Option(50_000, help="Transfer-set rows"),
    retrain_teacher: bool = typer.Option(False, help="Train a new teacher even if one is registered"),
) -> None:
    """MNIST-1D end to end on the embedded default: data, teacher, distillation, report (state in ./.kdflow)."""
    embedded_defaults()
    from kdflow.config import DistillConfig, TeacherConfig, load_config
    from kdflow.generators import write_mnist1d
    from kdflow.registry import absolute_db_uri, alias_version, configure

    teacher_cfg_path, distill_cfg_path = (
        packaged_config("mnist1d_teacher.yaml"),
        packaged_config("mnist1d_distill.yaml"),
    )
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

    report = run(with_runner(distill_flow, distill_cfg_path), str(distill_cfg_path))
    print_report(report)
    db = dcfg.mlflow.tracking_uri
    typer.echo(
        "\nOpen the UIs on this data:\n"
        f"  MLflow:  mlflow ui --backend-store-uri {absolute_db_uri(db)} --port 5000   (http://127.0.0.1:5000)\n"
        f"  Prefect: PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start   (http://127.0.0.1:4200)\n"
        f"Report JSON: {report['paths']['json']}"
    )
    hint = serve_hint(dcfg, distill_cfg_path)
    if hint:
        typer.echo(hint)
    if not report["gate_passed"]:
        raise typer.Exit(GATE_FAILED_EXIT)


def serve_hint(cfg: DistillConfig, config_path: Path) -> Optional[str]:
    """How to start ``kdflow serve-model`` on the config's champion and send it one row (None: no champion)."""
    from kdflow.artifact import ArtifactError, model_dir, read_spec
    from kdflow.registry import alias_version

    name, alias, serving = cfg.registry.student_name, cfg.serving.alias, cfg.serving
    version = alias_version(name, alias)
    if version is None:
        return None
    hint = (
        f"\nServe the champion (models:/{name}@{alias}, version {version}) from this directory:\n"
        f"  kdflow serve-model --config {config_path} --port {serving.port}"
    )
    try:
        width = math.prod(read_spec(model_dir(f"models:/{name}/{version}")).input_shape)
    except ArtifactError:  # registered before served artifacts: serve-model will say so
        return hint
    row = ", ".join(["0.0"] * width)
    return (
        f"{hint}\n  curl -s http://{serving.host}:{serving.port}/invocations -H 'Content-Type: application/json' "
        f"-d '{{\"inputs\": [[{row}]]}}'"
    )
