"""Input validation task: every flow starts here, before any teacher call or training step."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from kdflow.config import DataConfig, ModelSpec, ValidationConfig
from kdflow.data import Datasets, datasets_from_frames
from kdflow.models import build_model
from kdflow.rowgroups import ParquetSplit
from kdflow.validation import ValidationReport, dataset_uris, validate_data
from kdflow.validation.chunked import validate_out_of_core
from tasks import kdflow_task
from tasks.tracking import log_metrics


def publish_validation_report(report: ValidationReport, run_id: str | None, out_dir: Path) -> dict[str, Path]:
    """Write the report files, attach them to the MLflow run (``validation/``) and summarise them in a
    Prefect markdown artifact, whether validation passed or failed."""
    paths = report.write(out_dir)
    if run_id:
        from mlflow import MlflowClient

        MlflowClient().log_artifacts(run_id, str(out_dir), "validation")
        log_metrics(
            run_id,
            {
                "validation_passed": float(report.success),
                "validation_failed_checks": float(len(report.failures)),
                "validation_seconds": report.seconds,
            },
        )
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key="kdflow-data-validation",
        description=f"data validation {'passed' if report.success else 'FAILED'}",
    )
    return paths


def log_report(report: ValidationReport) -> None:
    """One log line per dataset: pass or fail, rows, checks run and failed."""
    for d in report.datasets.values():
        get_run_logger().info(
            "validation %s (%s): %s, %s rows, %d check(s), %d failed",
            d.name,
            d.uri,
            "pass" if d.success else "FAIL",
            d.rows,
            len(d.checks),
            len(d.failures),
        )


@kdflow_task(name="validate-inputs")
def validate_inputs(
    data: DataConfig,
    model: ModelSpec,
    endpoint_url: str | None = None,
    with_transfer: bool = True,
    run_id: str | None = None,
    validation: ValidationConfig | None = None,
) -> Datasets:
    """Validate train/val/test (labeled) and the transfer set (unlabeled) with the GX suites
    (:func:`kdflow.validation.validate_data`), attach the report to the MLflow run ``run_id`` and to the flow
    run, then build the datasets and check that ``model`` takes their feature shape. Any failure stops the flow
    with ONE :class:`DataValidationError` naming each dataset, file, failed expectation, offending-row count and
    example ids."""
    logger = get_run_logger()
    validation = validation or ValidationConfig()
    with tempfile.TemporaryDirectory(prefix="kdflow-validation-") as tmp:  # report files and data docs: a tree
        report, frames = validate_data(
            data, validation, endpoint_url, with_transfer, docs_dir=Path(tmp) / "site" if validation.data_docs else None
        )
        publish_validation_report(report, run_id, Path(tmp) / "report")
    log_report(report)
    report.raise_for_failures()
    labeled = {name: flag for name, (_, flag) in dataset_uris(data, with_transfer).items()}
    datasets = datasets_from_frames(frames, {n: d.uri for n, d in report.datasets.items()}, labeled, data)
    build_model(model.arch, model.args, datasets.input_shape, data.num_classes)  # raises ModelSpecError
    for name, ds in datasets.items():
        logger.info("%s: %d rows, input shape %s, fingerprint %s", name, len(ds), ds.input_shape, ds.fingerprint[:12])
    return datasets


@kdflow_task(name="validate-inputs-out-of-core")
def validate_inputs_out_of_core(
    data: DataConfig, model: ModelSpec, endpoint_url: str | None = None, validation: ValidationConfig | None = None
) -> dict[str, ParquetSplit]:
    """:func:`validate_inputs` for ``data.out_of_core``: every dataset validated chunk by chunk straight from its
    Parquet files (:func:`kdflow.validation.chunked.validate_out_of_core`) and left there, as a
    :class:`kdflow.rowgroups.ParquetSplit` (layout, fingerprint, rows read on demand). Same report, same error."""
    logger = get_run_logger()
    validation = validation or ValidationConfig()
    with tempfile.TemporaryDirectory(prefix="kdflow-validation-") as tmp:
        docs = Path(tmp) / "site" if validation.data_docs else None
        report, splits = validate_out_of_core(data, validation, endpoint_url, docs_dir=docs)
        publish_validation_report(report, None, Path(tmp) / "report")
    log_report(report)
    report.raise_for_failures()
    shape = splits[next(iter(splits))].input_shape
    build_model(model.arch, model.args, shape, data.num_classes)  # raises ModelSpecError
    for name, split in splits.items():
        logger.info(
            "%s: %d rows in %d file(s), left on disk; fingerprint %s",
            name,
            len(split),
            len(split.layout),
            split.fingerprint[:12],
        )
    return splits
