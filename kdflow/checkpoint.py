"""Training checkpoints in the object store, so a killed training resumes where it stopped.

A training is named by its *training key* (:func:`training_key`): a hash of everything that decides what the
training computes — the role (teacher or student), the model spec, the training hyper-parameters (all of
``train`` except ``checkpoint_every_epochs`` and the ``prefetch_*`` settings, which do not change the result),
the number of classes, the per-sample input shape, the content fingerprint of every split in the run and, for a
student, each teacher's name, registered version, ensemble weight and logit-store keys, and any ``extra`` setting
that changes the rows trained on (the ``hard_examples`` section when enabled). Re-running the same training (same
key) resumes from its last checkpoint; change any of these and the training starts fresh under another key.

Layout under the store root (the logit store's :class:`~kdflow.store.ObjectStore`, local or S3)::

    checkpoints/<training key>/epoch-00007-<sha256[:12]>.pt   the state after epoch 7 (torch.save)
    checkpoints/<training key>/latest.json                    pointer: object, epoch, size, sha256, key

A save writes the new state object first, then the pointer, then deletes older state objects, so a kill at any
moment leaves either the previous pointer (and its object, not yet deleted) or the new one. A load trusts a
state only when the pointer parses, its object exists with the recorded size and SHA-256, it was written for
this training key and format, and it loads with ``torch.load(weights_only=True)`` (no pickled code runs); any
other checkpoint is ignored with a warning and training starts fresh. A finished training deletes its
checkpoint, so a later deliberate re-run trains from the start.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kdflow.config import ModelSpec, TrainConfig
from kdflow.store import ObjectStore

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "checkpoints"
POINTER = "latest.json"
_KEY = re.compile(r"^[a-z]+-[0-9a-f]{32}$")


class CheckpointError(ValueError):
    """A stored checkpoint cannot be trusted (corrupt, truncated, or written for another training)."""


def training_key(
    role: str,
    model: ModelSpec,
    train: TrainConfig,
    num_classes: int,
    input_shape: Sequence[int],
    fingerprints: Mapping[str, str],
    teachers: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> str:
    """``<role>-<sha256[:32]>`` of what the training computes (see the module docstring for the fields).

    ``fingerprints`` are the content fingerprints of every split of the run; ``teachers`` (students only) one
    mapping per teacher, e.g. ``{"name", "version", "weight", "logit_keys"}``; ``extra`` (when given) more settings
    that decide the result, e.g. ``{"hard_examples": {...}}`` (absent: the key is what it was before ``extra``)."""
    if not re.fullmatch(r"[a-z]+", role):
        raise ValueError(f"training role must be lowercase letters, got {role!r}")
    payload = {
        "role": role,
        "model": model.model_dump(mode="json"),
        "train": train.model_dump(
            mode="json", exclude={"checkpoint_every_epochs", "prefetch_buffers", "prefetch_readers"}
        ),
        "num_classes": int(num_classes),
        "input_shape": [int(d) for d in input_shape],
        "fingerprints": {str(k): str(v) for k, v in sorted(fingerprints.items())},
        "teachers": [dict(t) for t in teachers],
    }
    if extra:
        payload["extra"] = dict(extra)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"{role}-{digest[:32]}"


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch, numpy and Python's ``random``, in a ``weights_only``-loadable form."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    np_state = state["numpy"]
    key = np.asarray(np_state["key"].numpy(), dtype=np.uint32)
    torch.set_rng_state(state["torch"])
    np.random.set_state((np_state["name"], key, np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class Checkpoints:
    """The checkpoint of one training (``checkpoints/<key>/`` in ``store``), saved every ``every_epochs`` epochs
    (``None``: never saved, never loaded)."""

    def __init__(self, store: ObjectStore, key: str, every_epochs: int | None = 1):
        if not _KEY.match(key):
            raise ValueError(f"invalid training key {key!r}: expected <role>-<32 hex digits> from training_key()")
        if every_epochs is not None and every_epochs < 1:
            raise ValueError(f"every_epochs must be a positive number of epochs or None, got {every_epochs}")
        self.store = store
        self.key = key
        self.every_epochs = every_epochs
        self.prefix = f"{PREFIX}/{key}"

    @property
    def pointer_key(self) -> str:
        """Key of the pointer object (``latest.json``)."""
        return f"{self.prefix}/{POINTER}"

    @property
    def enabled(self) -> bool:
        """Whether checkpoints are written and read at all."""
        return self.every_epochs is not None

    def due(self, epoch: int) -> bool:
        """Whether a checkpoint is written after ``epoch`` (1-based)."""
        return self.every_epochs is not None and epoch % self.every_epochs == 0

    def save(self, epoch: int, state: Mapping[str, Any]) -> str:
        """Write ``state`` (tensors, numbers, strings, lists, dicts) as the checkpoint after ``epoch``; returns
        the object key. The object goes first, then the pointer, then older objects are removed."""
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "training_key": self.key, "epoch": int(epoch), **state}, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"{self.prefix}/epoch-{epoch:05d}-{digest[:12]}.pt"
        self.store.put(name, data)
        pointer = {
            "format": FORMAT,
            "training_key": self.key,
            "epoch": int(epoch),
            "object": name,
            "size": len(data),
            "sha256": digest,
        }
        self.store.put(self.pointer_key, json.dumps(pointer, sort_keys=True).encode())
        for old in self.store.list(f"{self.prefix}/"):
            if old.endswith(".pt") and old != name:
                self.store.delete(old)
        return name

    def pointer(self) -> dict[str, Any] | None:
        """The parsed pointer, or ``None`` when there is no checkpoint; :class:`CheckpointError` if malformed."""
        if not self.store.exists(self.pointer_key):
            return None
        raw = self.store.get(self.pointer_key)
        try:
            pointer = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"pointer is not valid JSON ({len(raw)} bytes): {exc}") from exc
        fields = {"format": int, "training_key": str, "epoch": int, "object": str, "size": int, "sha256": str}
        if not isinstance(pointer, dict) or any(not isinstance(pointer.get(f), t) for f, t in fields.items()):
            raise CheckpointError(f"pointer lacks or mistypes one of {sorted(fields)}: {str(pointer)[:200]}")
        if pointer["format"] != FORMAT:
            raise CheckpointError(f"checkpoint format {pointer['format']}, this code reads format {FORMAT}")
        if pointer["training_key"] != self.key:
            raise CheckpointError(f"pointer was written for training {pointer['training_key']}, not {self.key}")
        if not pointer["object"].startswith(f"{self.prefix}/"):
            raise CheckpointError(f"pointer names {pointer['object']!r}, outside {self.prefix}/")
        return pointer

    def _read(self) -> dict[str, Any] | None:
        pointer = self.pointer()
        if pointer is None:
            return None
        name = pointer["object"]
        if not self.store.exists(name):
            raise CheckpointError(f"the object it points to, {name}, is missing")
        data = self.store.get(name)
        if len(data) != pointer["size"]:
            raise CheckpointError(f"{name} has {len(data)} bytes, the pointer recorded {pointer['size']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != pointer["sha256"]:
            raise CheckpointError(f"{name} has SHA-256 {digest[:12]}…, the pointer recorded {pointer['sha256'][:12]}…")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{name} does not load: {exc}") from exc
        if (
            not isinstance(state, dict)
            or state.get("training_key") != self.key
            or state.get("format") != FORMAT
            or state.get("epoch") != pointer["epoch"]
        ):
            raise CheckpointError(f"{name} was not written for training {self.key} at epoch {pointer['epoch']}")
        return state

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or ``None`` when there is none, checkpoints are disabled, or it cannot be
        trusted (then a warning names the reason and training starts fresh). Store failures other than a missing
        object propagate: they are not evidence of a bad checkpoint."""
        if not self.enabled:
            return None
        try:
            return self._read()
        except CheckpointError as exc:
            self.warn_ignored(str(exc))
            return None

    def warn_ignored(self, reason: str) -> None:
        """Log that the checkpoint is not used and why."""
        log.warning("ignoring the checkpoint at %s: %s; training starts fresh", self.store.url(self.prefix), reason)

    def clear(self) -> None:
        """Delete the checkpoint (pointer first, so a kill midway leaves no pointer to a removed object)."""
        self.store.delete(self.pointer_key)
        for key in self.store.list(f"{self.prefix}/"):
            self.store.delete(key)
