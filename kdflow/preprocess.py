"""Per-feature input standardisation fitted on the training split and stored in the model as buffers.

Every architecture kdflow builds from a config is wrapped as ``Preprocessed(Standardize, net)`` (unless
``preprocess: none``), so the teacher's logged model and the student's served artifact (pt2, ONNX, spec and
weights) take inputs as users have them — raw feature scales, named columns — and standardise them inside.

- ``standard``: ``(x - mean) / std`` per feature (population std, as scikit-learn's ``StandardScaler``);
- ``robust`` (the default): ``(x - median) / IQR`` per feature (IQR = 75th - 25th percentile, linear
  interpolation, as scikit-learn's ``RobustScaler``), for heavy-tailed features and outliers; a feature whose
  IQR is 0 but which varies (mostly one value, e.g. a sparse count) is scaled by its std instead;
- ``none``: the model sees the raw inputs (no wrapper: the weights keep their plain names).

A constant feature (scale below :data:`MIN_SCALE`, e.g. a digits corner pixel that is always 0) keeps scale 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdflow.config import PreprocessKind

MIN_SCALE = 1e-8


def feature_statistics(x: np.ndarray, kind: PreprocessKind) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(center, scale)`` of ``x`` ``(n, *shape)`` as float32 arrays of ``shape``: mean/std for
    ``standard``, median/IQR for ``robust`` (std where the IQR is 0); a scale below :data:`MIN_SCALE` (or not
    finite) becomes 1."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("cannot fit the input preprocessing on 0 training rows")
    if not np.isfinite(x).all():
        raise ValueError("cannot fit the input preprocessing: the training inputs hold NaN or infinite values")
    if kind == "standard":
        center, scale = x.mean(axis=0), x.std(axis=0)
    elif kind == "robust":
        q25, center, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
        scale = np.where(q75 - q25 >= MIN_SCALE, q75 - q25, x.std(axis=0))  # a sparse feature: IQR 0, std not
    else:
        raise ValueError(f"unknown preprocessing {kind!r}; expected 'standard', 'robust' or 'none'")
    scale = np.where(np.isfinite(scale) & (scale >= MIN_SCALE), scale, 1.0)
    return center.astype(np.float32), scale.astype(np.float32)


class Standardize(nn.Module):
    """``x -> (x - center) / scale`` per feature; ``center`` and ``scale`` are buffers of the input shape
    (identity until :meth:`fit`)."""

    def __init__(self, input_shape: tuple[int, ...], kind: PreprocessKind = "standard"):
        super().__init__()
        self.kind = kind
        self.register_buffer("center", torch.zeros(tuple(input_shape)))
        self.register_buffer("scale", torch.ones(tuple(input_shape)))

    def fit(self, x: np.ndarray) -> Standardize:
        """Set the buffers to :func:`feature_statistics` of the training inputs ``x``."""
        center, scale = feature_statistics(x, self.kind)
        if center.shape != tuple(self.center.shape):
            raise ValueError(f"preprocessing expects rows of shape {list(self.center.shape)}, got {list(center.shape)}")
        self.center.copy_(torch.from_numpy(center))
        self.scale.copy_(torch.from_numpy(scale))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.scale


class Preprocessed(nn.Module):
    """``net(preprocess(x))``: the architecture behind its fitted input standardisation."""

    def __init__(self, preprocess: Standardize, net: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def fit_preprocessing(model: nn.Module, x_train: np.ndarray) -> nn.Module:
    """Fit ``model``'s :class:`Standardize` layer (when it has one) on the training inputs; returns ``model``."""
    if isinstance(model, Preprocessed):
        model.preprocess.fit(x_train)
    return model
