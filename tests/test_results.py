"""The typed step results the flows hand each other: Datasets, Registration, DistillReport's provenance."""

from __future__ import annotations

import numpy as np
import pytest

from kdflow.data import DataError, Dataset, Datasets
from kdflow.report import Registration


def _split(name: str, n: int, width: int = 4, labeled: bool = True) -> Dataset:
    rng = np.random.default_rng(len(name))
    return Dataset(
        name,
        f"memory://{name}",
        np.arange(n),
        rng.normal(size=(n, width)).astype(np.float32),
        rng.integers(0, 3, n) if labeled else None,
    )


def test_datasets_read_like_a_dict_and_name_the_reference_split():
    splits = {n: _split(n, 10) for n in ("train", "val", "test")} | {"transfer": _split("transfer", 5, labeled=False)}
    ds = Datasets(splits)
    assert list(ds) == ["train", "val", "test", "transfer"] and len(ds) == 4 and ds["transfer"] is splits["transfer"]
    assert ds.train is splits["train"] and ds.test is splits["test"] and ds.input_shape == (4,)
    assert ds.recent_labeled is None and ds.reference is splits["val"]  # a first distillation: the validation split
    assert ds.fingerprints() == {n: d.fingerprint for n, d in splits.items()}
    retrain = Datasets({**splits, "recent_labeled": _split("recent_labeled", 7)})
    assert retrain.reference is retrain["recent_labeled"] and retrain.reference.name == "recent_labeled"


def test_datasets_with_different_feature_shapes_are_one_error_naming_each():
    with pytest.raises(DataError, match=r"feature shapes differ between splits: \{'train': \(4,\), 'val': \(5,\)"):
        Datasets({"train": _split("train", 3), "val": _split("val", 3, width=5)})


def test_registration_as_the_report_section():
    none = Registration("s", reason="not registered: SLA gate failed")
    assert none.as_dict() == {"version": None, "aliases": [], "reason": "not registered: SLA gate failed"}
    reg = Registration("s", "3", ("challenger",), "models:/m-1")
    assert reg.as_dict() == {"version": "3", "aliases": ["challenger"], "model_uri": "models:/m-1", "name": "s"}
    assert reg.with_alias("champion").aliases == ("challenger", "champion") and reg.aliases == ("challenger",)
