"""Reference profile of a student version: what its calibrated outputs and its inputs looked like when it was
registered. Stored as a JSON artifact beside the model and compared with production windows by
:mod:`kdflow.drift`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import entr, softmax

from kdflow.metrics import accuracy

PROFILE_SCHEMA = "kdflow-reference-profile-v1"

# Per-row summaries of the (flattened) feature vector; each becomes one two-sample test in kdflow.drift.
FEATURE_SUMMARIES = ("mean", "std", "min", "max", "l2_norm", "mean_abs_diff")


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row in nats, ``H(p) = -sum_c p_c ln p_c`` with ``0 ln 0 = 0`` (Shannon 1948);
    a uniform row over C classes has ``H = ln C``. Shape (n, C) -> (n,)."""
    return entr(np.asarray(probs, dtype=np.float64)).sum(axis=1)


def summarize_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row summaries of features (n, ...) flattened to (n, d): ``mean``, ``std`` (population), ``min``,
    ``max``, ``l2_norm`` = sqrt(sum_j x_j^2) and ``mean_abs_diff`` = mean_j |x_{j+1} - x_j| (0 when d = 1).

    Summaries turn a d-dimensional input into a few scalars a two-sample test can compare, whatever d is.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))  # (n, d)
    if x.shape[1] == 0:
        raise ValueError("summarize_features: rows have no features")
    diffs = np.abs(np.diff(x, axis=1)).mean(axis=1) if x.shape[1] > 1 else np.zeros(len(x))
    return {
        "mean": x.mean(1),
        "std": x.std(1),
        "min": x.min(1),
        "max": x.max(1),
        "l2_norm": np.linalg.norm(x, axis=1),
        "mean_abs_diff": diffs,
    }


def quantile_edges(values: np.ndarray, n_bins: int) -> list[float]:
    """Bin edges at the reference quantiles k/n_bins (k = 1..n_bins-1), made strictly increasing (ties and cuts
    at the minimum dropped, so no reference bin is empty), with outer edges -inf and +inf."""
    values = np.asarray(values, dtype=np.float64)
    cuts = np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins))
    cuts = cuts[cuts > values.min()]
    return [-math.inf, *map(float, cuts), math.inf]


def bin_counts(edges: list[float], values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])`` (len(edges) - 1 bins)."""
    idx = np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) - 1)


@dataclass
class BinnedReference:
    """One scalar's reference distribution: quantile bin edges (outer -inf/+inf) and the share of rows per bin."""

    edges: list[float]
    props: list[float]

    @classmethod
    def build(cls, values: np.ndarray, n_bins: int) -> BinnedReference:
        """Quantile bins of ``values`` and the proportion of ``values`` in each."""
        edges = quantile_edges(values, n_bins)
        counts = bin_counts(edges, values)
        return cls(edges, [float(c) for c in counts / counts.sum()])

    def to_dict(self) -> dict[str, list[float]]:
        """Strict JSON has no infinities: store the interior cut points only."""
        return {"cuts": self.edges[1:-1], "props": self.props}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinnedReference:
        """Inverse of :meth:`to_dict`."""
        return cls([-math.inf, *map(float, d["cuts"]), math.inf], [float(p) for p in d["props"]])


@dataclass
class FeatureReference:
    """One feature summary on the reference: a deterministic subsample of its values, its mean and std."""

    samples: list[float]
    mean: float
    std: float


@dataclass
class ReferenceProfile:
    """What a student version's calibrated outputs and inputs looked like on its reference (validation) set."""

    n_rows: int
    num_classes: int
    num_features: int
    confidence_bins: BinnedReference  # top-label calibrated probability
    entropy_bins: BinnedReference  # entropy of the calibrated probabilities (nats)
    predicted_class_freq: list[float]  # (C,) share of rows predicted as each class
    features: dict[str, FeatureReference]  # keyed by FEATURE_SUMMARIES
    mean_confidence: float
    accuracy: float | None = None  # when labels were given
    teacher_entropy_bins: BinnedReference | None = None  # softmax(teacher logits) at T=1, when given
    schema: str = PROFILE_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, floats, strings; no infinities)."""
        return {
            "schema": self.schema,
            "n_rows": self.n_rows,
            "num_classes": self.num_classes,
            "num_features": self.num_features,
            "confidence_bins": self.confidence_bins.to_dict(),
            "entropy_bins": self.entropy_bins.to_dict(),
            "predicted_class_freq": self.predicted_class_freq,
            "features": {k: asdict(f) for k, f in self.features.items()},
            "mean_confidence": self.mean_confidence,
            "accuracy": self.accuracy,
            "teacher_entropy_bins": self.teacher_entropy_bins.to_dict() if self.teacher_entropy_bins else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceProfile:
        """Inverse of :meth:`to_dict`; refuses a profile written under another schema."""
        if d.get("schema") != PROFILE_SCHEMA:
            raise ValueError(f"reference profile schema {d.get('schema')!r}, expected {PROFILE_SCHEMA!r}")
        teacher = d.get("teacher_entropy_bins")
        return cls(
            n_rows=int(d["n_rows"]),
            num_classes=int(d["num_classes"]),
            num_features=int(d["num_features"]),
            confidence_bins=BinnedReference.from_dict(d["confidence_bins"]),
            entropy_bins=BinnedReference.from_dict(d["entropy_bins"]),
            predicted_class_freq=[float(p) for p in d["predicted_class_freq"]],
            features={
                k: FeatureReference([float(v) for v in f["samples"]], float(f["mean"]), float(f["std"]))
                for k, f in d["features"].items()
            },
            mean_confidence=float(d["mean_confidence"]),
            accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
            teacher_entropy_bins=BinnedReference.from_dict(teacher) if teacher else None,
        )


def build_profile(
    probs: np.ndarray,
    x: np.ndarray,
    labels: np.ndarray | None = None,
    teacher_logits: np.ndarray | None = None,
    n_bins: int = 10,
    max_samples: int = 2000,
    seed: int = 0,
) -> ReferenceProfile:
    """The reference profile of calibrated student ``probs`` (n, C) on inputs ``x`` (n, ...).

    Confidence and entropy get ``n_bins`` quantile bins (the PSI reference); each feature summary keeps a
    subsample of at most ``max_samples`` values drawn without replacement with ``seed`` (KS needs samples).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if probs.ndim != 2 or n == 0 or len(x) != n:
        raise ValueError(
            f"build_profile: need probs (n, C) with n > 0 and x with n rows, got {probs.shape} and {np.shape(x)}"
        )
    num_classes = probs.shape[1]
    summaries = summarize_features(x)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=max_samples, replace=False)) if n > max_samples else np.arange(n)
    teacher_bins = None
    if teacher_logits is not None:
        teacher_logits = np.asarray(teacher_logits, dtype=np.float64)
        if teacher_logits.shape != probs.shape:
            raise ValueError(f"build_profile: teacher logits {teacher_logits.shape} != probs {probs.shape}")
        teacher_bins = BinnedReference.build(entropy(softmax(teacher_logits, axis=1)), n_bins)
    if labels is not None and len(labels) != n:
        raise ValueError(f"build_profile: {len(labels)} labels for {n} rows")
    confidence = probs.max(axis=1)
    return ReferenceProfile(
        n_rows=n,
        num_classes=num_classes,
        num_features=int(np.prod(np.shape(x)[1:], dtype=np.int64)),
        confidence_bins=BinnedReference.build(confidence, n_bins),
        entropy_bins=BinnedReference.build(entropy(probs), n_bins),
        predicted_class_freq=[float(f) for f in np.bincount(probs.argmax(1), minlength=num_classes) / n],
        features={
            name: FeatureReference([float(v) for v in values[keep]], float(values.mean()), float(values.std()))
            for name, values in summaries.items()
        },
        mean_confidence=float(confidence.mean()),
        accuracy=None if labels is None else accuracy(probs, np.asarray(labels)),
        teacher_entropy_bins=teacher_bins,
    )
