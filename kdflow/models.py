"""Model architectures by name, plus an import-path factory for a user's own ``nn.Module``.

Every builder takes ``input_shape`` (per-sample shape, e.g. ``(40,)`` or ``(8, 8)``), ``num_classes`` and
its own keyword arguments, and returns a module mapping ``(B, *input_shape)`` floats to ``(B, C)`` logits.
:func:`build_model` wraps it in the input standardisation (:mod:`kdflow.preprocess`) unless ``preprocess`` is
``none``; :func:`build_for_training` also fits that layer on the training inputs.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.preprocess import Preprocessed, PreprocessKind, Standardize, fit_preprocessing

Builder = Callable[..., nn.Module]
ARCHITECTURES: dict[str, Builder] = {}


class ModelSpecError(ValueError):
    """An architecture name, import path or argument set that cannot build a model."""


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to :data:`ARCHITECTURES` under ``name``."""

    def deco(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return deco


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden layers of ``width`` units with ReLU, then a linear head."""

    def __init__(self, in_features: int, num_classes: int, width: int = 128, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1D(nn.Module):
    """1-D CNN for sequences ``(B, L)``: ``depth`` conv blocks (conv-BN-ReLU, stride 2 after the first),
    global average + max pooling, linear head. Any length works: the pooling is global."""

    def __init__(
        self, num_classes: int, channels: int = 32, depth: int = 3, kernel_size: int = 5, dropout: float = 0.0
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for i in range(depth):
            blocks += [
                nn.Conv1d(c_in, channels, kernel_size, stride=1 if i == 0 else 2, padding=kernel_size // 2),
                nn.BatchNorm1d(channels),
                nn.ReLU(),
            ]
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(x.shape[0], 1, -1))  # (B, C, L')
        h = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # (B, 2C)
        return self.head(self.dropout(h))


class CNN2D(nn.Module):
    """2-D CNN for small single-channel images ``(B, H, W)``: ``depth`` conv-BN-ReLU blocks with 2x2 max
    pooling between them, global average pooling, linear head."""

    def __init__(
        self, image_shape: tuple[int, int], num_classes: int, channels: int = 32, depth: int = 2, dropout: float = 0.0
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        blocks: list[nn.Module] = []
        c_in = 1
        for i in range(depth):
            blocks += [nn.Conv2d(c_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            if i < depth - 1:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(x.shape[0], 1, *self.image_shape))  # (B, C, H', W')
        return self.head(self.dropout(h.mean(dim=(2, 3))))


@register("mlp")
def build_mlp(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    """MLP over the flattened input."""
    return MLP(math.prod(input_shape), num_classes, **kw)


@register("cnn1d")
def build_cnn1d(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    """1-D CNN; input is flattened to one sequence (its length comes from the data, never from ``args``)."""
    if "length" in kw:
        raise ModelSpecError(
            f"cnn1d takes no 'length' argument (got length={kw['length']!r}): the sequence is the "
            f"flattened input of shape {list(input_shape)}; remove 'length' from the model's args"
        )
    return CNN1D(num_classes, **kw)


@register("cnn2d")
def build_cnn2d(input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    """2-D CNN; ``input_shape`` must be ``(H, W)``."""
    if len(input_shape) != 2:
        raise ModelSpecError(f"cnn2d needs a 2-D input shape (set data.features.shape), got {list(input_shape)}")
    return CNN2D(tuple(input_shape), num_classes, **kw)


def build_model(
    arch: str,
    args: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    preprocess: PreprocessKind = "none",
) -> nn.Module:
    """Build ``arch`` (a registered name or ``package.module:function``), wrapped in an (identity until fitted)
    :class:`~kdflow.preprocess.Standardize` layer unless ``preprocess`` is ``none``, and check it maps the input
    to C logits."""
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        try:
            builder = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelSpecError(f"cannot import model factory {arch!r}: {exc}") from exc
    elif arch in ARCHITECTURES:
        builder = ARCHITECTURES[arch]
    else:
        raise ModelSpecError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)} or 'package.module:build'")
    try:
        model = builder(input_shape=tuple(input_shape), num_classes=num_classes, **args)
    except TypeError as exc:
        raise ModelSpecError(f"architecture {arch!r} rejected its arguments {args}: {exc}") from exc
    check_io(model, input_shape, num_classes, what=f"model {arch!r}")
    if preprocess != "none":
        model = Preprocessed(Standardize(tuple(input_shape), preprocess), model)
    return model


def build_for_training(spec: Any, x_train: np.ndarray, num_classes: int) -> nn.Module:
    """A fresh model of ``spec`` (a :class:`~kdflow.config.ModelSpec`: ``arch``, ``args``, ``preprocess``) for
    inputs shaped like ``x_train`` rows, its preprocessing fitted on ``x_train``."""
    model = build_model(spec.arch, spec.args, tuple(x_train.shape[1:]), num_classes, spec.preprocess)
    return fit_preprocessing(model, x_train)


def check_io(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, what: str = "model") -> None:
    """Run two dummy rows through ``model`` and fail clearly if it cannot take the input or gives != C outputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:  # any shape error from inside the user's module
        raise ModelSpecError(f"{what} cannot take inputs of shape {list(input_shape)}: {exc}") from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise ModelSpecError(f"{what} returned shape {list(out.shape[1:])} per row, expected [{num_classes}] logits")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class CalibratedClassifier(nn.Module):
    """The served model: ``forward(x) = softmax(model(x) / T)``, or ``calibration_map(model(x) / T)`` when a map
    beyond the temperature was chosen (:mod:`kdflow.calibration`: vector scaling or isotonic regression, fitted
    on the temperature-scaled logits).

    The temperature and the map's parameters are buffers, so they travel with the logged model; the training
    temperature is never stored here.
    """

    def __init__(self, model: nn.Module, temperature: float, calibration_map: nn.Module | None = None):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.calibration_map = calibration_map

    @property
    def map_kind(self) -> str:
        """``temperature``, or the ``kind`` of the map applied after it (``vector``, ``isotonic``)."""
        return "temperature" if self.calibration_map is None else str(self.calibration_map.kind)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits of the wrapped model."""
        return self.model(x)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """The served probabilities of raw ``logits``: the temperature, then the map (when there is one)."""
        z = logits / self.temperature
        return torch.softmax(z, dim=-1) if self.calibration_map is None else self.calibration_map(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.model(x))

    def mapped_probabilities(self, logits: np.ndarray) -> np.ndarray | None:
        """The served probabilities (float64) of raw ``logits`` when a map follows the temperature; ``None`` when
        the temperature is the whole map (``softmax(z / T)`` says it all). Recalibration judges a refit
        temperature against a mapped champion with these."""
        if self.calibration_map is None:
            return None
        with torch.no_grad():
            return self.calibrate(torch.as_tensor(logits, dtype=torch.float32)).double().numpy()


def raw_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a plain module or of the model inside a :class:`CalibratedClassifier`."""
    return model.logits(x) if isinstance(model, CalibratedClassifier) else model(x)
