"""The versions a scoring server answers with, kept current by a background poller, and its teacher.

:class:`ModelHolder` holds the champion (``<name>@<alias>``) and, when a challenger split is configured, the
``@challenger`` version. A poller thread re-reads both aliases every ``poll_seconds``; when one moves, the new
version is loaded completely (artifact, ONNX session, cascade threshold) and only then published by rebinding
one attribute, so a request in flight finishes with the version it started with and the next one gets the new
version: no restart, no failed request. A version that fails to load is logged and retried at the next poll;
the old one keeps serving. A version with another input shape or class count is not swapped in (serving it
needs a restart). A removed alias keeps the last version serving (the registry may be briefly down).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdflow.artifact import ServedModel, load_served
from kdflow.config import ServingRuntime
from kdflow.registry import CHALLENGER, TAG_PREFIX, ModelRef, RegistryError, alias_version, load_torch_model, resolve

THRESHOLD_TAG = f"{TAG_PREFIX}cascade_threshold"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedVersion:
    """One loaded registered version: its model and its cascade threshold (0: the student always answers)."""

    name: str
    version: str
    model: ServedModel
    threshold: float


def cascade_threshold(tags: dict[str, str], where: str) -> float:
    """The version's ``kdflow.cascade_threshold`` tag as a float (0 when absent or unreadable)."""
    raw = tags.get(THRESHOLD_TAG)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s: tag %s=%r is not a number; the student answers every row", where, THRESHOLD_TAG, raw)
        return 0.0
    return value if np.isfinite(value) else 0.0


def load_version(name: str, version: str, runtime: ServingRuntime) -> ServedVersion:
    """Load ``models:/<name>/<version>`` with ``runtime`` and read its cascade threshold tag."""
    from mlflow import MlflowClient

    uri = f"models:/{name}/{version}"
    model = load_served(uri, runtime)
    try:
        tags = dict(MlflowClient().get_model_version(name, version).tags or {})
    except Exception as exc:
        raise RegistryError(f"cannot read the tags of {uri}: {exc}") from exc
    return ServedVersion(name, str(version), model, cascade_threshold(tags, uri))


class ModelHolder:
    """The champion and (optionally) the challenger of ``name``, hot-swapped by :meth:`start`'s poller."""

    def __init__(
        self, name: str, alias: str, runtime: ServingRuntime, poll_seconds: float, with_challenger: bool = False
    ):
        self.name = name
        self.alias = alias
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self.with_challenger = with_challenger
        version = alias_version(name, alias)
        if version is None:
            raise RegistryError(
                f"models:/{name}@{alias} does not resolve: no registered model {name!r} or no version "
                f"has the alias {alias!r} (promote one first)"
            )
        self.champion: ServedVersion = load_version(name, version, runtime)
        self._refused: set[str] = set()  # versions whose inputs or classes differ from the champion's
        self.challenger: ServedVersion | None = None
        self.swaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if with_challenger:
            self._refresh_challenger()

    def _load(self, version: str, current: ServedVersion | None) -> ServedVersion | None:
        """``version`` loaded (reusing ``current`` or the champion when it is that version); None when it fails to
        load or takes other inputs or classes than the version serving (requests are validated against those,
        and one log keeps one width: serving it needs a restart)."""
        for loaded in (current, self.champion):
            if loaded is not None and loaded.version == version:
                return loaded
        if version in self._refused:
            return None
        try:
            loaded = load_version(self.name, version, self.runtime)
        except Exception as exc:  # keep serving the old version; the next poll retries
            log.error("cannot load %s version %s (still serving the previous one): %s", self.name, version, exc)
            return None
        serving = self.champion.model
        if (loaded.model.input_shape, loaded.model.num_classes) != (serving.input_shape, serving.num_classes):
            self._refused.add(version)
            log.error("%s version %s takes input shape %s with %d classes, the served version %s and %d: not "
                      "swapped in; restart the server to serve it", self.name, version, loaded.model.input_shape,
                      loaded.model.num_classes, serving.input_shape, serving.num_classes)  # fmt: skip
            return None
        return loaded

    def _refresh_challenger(self) -> None:
        version = alias_version(self.name, CHALLENGER)
        if version is None or version == self.champion.version:
            self.challenger = None
            return
        if self.challenger is None or self.challenger.version != version:
            loaded = self._load(version, self.challenger)
            if loaded is not None:
                self.challenger = loaded
                log.info("%s@%s is now version %s", self.name, CHALLENGER, version)

    def refresh(self) -> bool:
        """Re-read the aliases; load and publish a moved one. Returns whether the champion changed."""
        changed = False
        version = alias_version(self.name, self.alias)
        if version is not None and version != self.champion.version:
            loaded = self._load(version, self.challenger)
            if loaded is not None:
                previous, self.champion = self.champion.version, loaded  # one reference rebound: atomic
                self.swaps += 1
                changed = True
                log.info("%s@%s moved %s -> %s: now serving version %s", self.name, self.alias, previous, version,
                         version)  # fmt: skip
        if self.with_challenger:
            self._refresh_challenger()
        return changed

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # never let the poller die
                log.error("alias poll failed: %s", exc)

    def start(self) -> None:
        """Start the poller thread."""
        self._thread = threading.Thread(target=self._poll, name="kdflow-alias-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the poller (waits for a load in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Teacher:
    """A registered teacher (any MLflow pytorch model returning logits), scoring ``(n, *input_shape)`` rows."""

    def __init__(self, uri: str, input_shape: tuple[int, ...]):
        self.ref: ModelRef = resolve(uri)
        self.module: nn.Module = load_torch_model(self.ref)
        self.input_shape = input_shape

    @property
    def version(self) -> str:
        """The teacher's registered version."""
        return self.ref.version

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw teacher logits ``(n, C)`` float32 of flat rows ``x`` ``(n, d)``."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, np.float32).reshape(-1, *self.input_shape)))
        return out.numpy().astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise ``softmax(z)_k = exp(z_k - max z) / sum_j exp(z_j - max z)`` (T = 1)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
