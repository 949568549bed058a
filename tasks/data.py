"""Input validation tasks: every flow starts here, before any teacher call or training step."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from kdflow.config import DataConfig, ModelSpec
from kdflow.data import Dataset, load_dataset
from kdflow.models import build_model


@task(name="validate-inputs", cache_policy=NO_CACHE)
def validate_inputs(data: DataConfig, model: ModelSpec, endpoint_url: str | None = None,
                    with_transfer: bool = True) -> dict[str, Dataset]:
    """Load train/val/test (labeled) and the transfer set (unlabeled); check schema, finiteness, label range
    and that ``model`` can take the feature width. The first problem stops the flow with an error naming
    the file and column, before any teacher call or training step."""
    logger = get_run_logger()
    splits = {"train": (data.train, True), "val": (data.val, True), "test": (data.test, True)}
    if with_transfer and data.transfer:
        splits["transfer"] = (data.transfer, False)
    datasets = {name: load_dataset(name, uri, data, labeled, endpoint_url) for name, (uri, labeled) in splits.items()}
    widths = {name: ds.input_shape for name, ds in datasets.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"feature shapes differ between splits: {widths}")
    build_model(model.arch, model.args, datasets["train"].input_shape, data.num_classes)  # raises ModelSpecError
    for name, ds in datasets.items():
        logger.info("%s: %d rows, input shape %s, fingerprint %s", name, len(ds), ds.input_shape, ds.fingerprint[:12])
    return datasets
