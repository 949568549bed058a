"""Offline dataset generators: MNIST-1D (Greydanus & Kobak 2024, package ``mnist1d``), scikit-learn's bundled
digits (an array column, scaled to [0, 1]) and scikit-learn's bundled tables with named columns at their raw
scales. Nothing is downloaded: MNIST-1D is synthesised with ``make_dataset``; scikit-learn ships the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdflow.data import to_frame, write_parquet

MNIST1D_SPLITS = {"train": 4000, "val": 1000, "test": 1000}


def mnist1d_arrays(num_samples: int, seed: int, **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` MNIST-1D sequences (n, 40) and labels, from one ``make_dataset`` call with ``seed``.

    ``overrides`` change generator knobs (``iid_noise_scale``, ``corr_noise_scale``, ``shear_scale``,
    ``max_translation``, ...) for controlled drift. ``num_samples`` is rounded up to a multiple of 10
    (the generator makes equal counts per class) and the surplus trimmed.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    per_class = -(-num_samples // 10)
    args.num_samples = per_class * 10
    args.train_split = 1.0
    args.seed = seed
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"unknown MNIST-1D generator argument {key!r}")
        setattr(args, key, value)
    data = make_dataset(args)
    return data["x"][:num_samples].astype(np.float32), data["y"][:num_samples].astype(np.int64)


def write_mnist1d(
    out: str | Path, transfer_size: int = 50_000, seed: int = 0, sizes: dict[str, int] | None = None
) -> dict[str, Path]:
    """Write train/val/test (labeled) and transfer (unlabeled) Parquet files; each split has its own seed
    and a disjoint id range."""
    out = Path(out)
    sizes = {**MNIST1D_SPLITS, **(sizes or {})}
    if transfer_size:
        sizes["transfer"] = transfer_size
    paths = {}
    next_id = 0
    for offset, (name, n) in enumerate(sizes.items()):
        x, y = mnist1d_arrays(n, seed=seed * 100 + offset + 1)
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        frame = to_frame(ids, x, None if name == "transfer" else y)
        paths[name] = write_parquet(frame, out / f"{name}.parquet")
    return paths


def write_digits(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """scikit-learn's bundled 8x8 digits (1,797 images, scaled to [0, 1]) split 60/20/20 stratified; the
    transfer set is the train inputs without labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(len(digits.images), -1)
    y = digits.target.astype(np.int64)
    ids = np.arange(len(y), dtype=np.int64)
    id_tr, id_rest = train_test_split(ids, test_size=0.4, stratify=y, random_state=seed)
    id_va, id_te = train_test_split(id_rest, test_size=0.5, stratify=y[id_rest], random_state=seed)
    out = Path(out)
    paths = {
        name: write_parquet(to_frame(idx, x[idx], y[idx]), out / f"{name}.parquet")
        for name, idx in (("train", id_tr), ("val", id_va), ("test", id_te))
    }
    paths["transfer"] = write_parquet(to_frame(id_tr, x[id_tr]), out / "transfer.parquet")
    return paths


TABULAR = ("breast_cancer", "wine", "digits", "iris")  # scikit-learn's bundled classification tables


def write_sklearn_table(out: str | Path, name: str, seed: int = 0) -> dict[str, Path]:
    """One of scikit-learn's bundled tables (:data:`TABULAR`) as users have such data: one named numeric column
    per feature at its raw scale (e.g. breast_cancer's ``mean area`` in the hundreds next to ``mean smoothness``
    near 0.1; digits' pixels 0-16), ``id`` and ``label``; split 60/20/20 stratified like :func:`write_digits`,
    the transfer set being the train inputs. Read it with ``data.features.columns`` set to
    :func:`sklearn_table_columns`."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    if name not in TABULAR:
        raise ValueError(f"unknown scikit-learn table {name!r}; known: {', '.join(TABULAR)}")
    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    features = bunch.data.astype(np.float64)
    y = bunch.target.to_numpy().astype(np.int64)
    ids = np.arange(len(y), dtype=np.int64)
    id_tr, id_rest = train_test_split(ids, test_size=0.4, stratify=y, random_state=seed)
    id_va, id_te = train_test_split(id_rest, test_size=0.5, stratify=y[id_rest], random_state=seed)
    frame = features.assign(id=ids, label=y)[["id", *features.columns, "label"]]
    out = Path(out)
    paths = {
        split: write_parquet(frame.iloc[idx].reset_index(drop=True), out / f"{split}.parquet")
        for split, idx in (("train", id_tr), ("val", id_va), ("test", id_te))
    }
    paths["transfer"] = write_parquet(frame.iloc[id_tr].drop(columns="label").reset_index(drop=True),
                                      out / "transfer.parquet")  # fmt: skip
    return paths


def sklearn_table_columns(name: str) -> list[str]:
    """The feature column names :func:`write_sklearn_table` writes for ``name`` (for ``data.features.columns``)."""
    import sklearn.datasets

    return [str(c) for c in getattr(sklearn.datasets, f"load_{name}")(as_frame=True).data.columns]
