"""MLflow tracking and model registry: set-up, teacher resolution, logging, registration and aliases.

Promotion uses aliases (``challenger``, ``champion``); stages are deprecated in MLflow 3. Every alias
move is also recorded as a version tag so the history survives later moves.
"""

from __future__ import annotations

import getpass
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "kdflow."


class RegistryError(RuntimeError):
    """A model URI does not resolve, or the registry refused an operation."""


def _client():  # imported lazily: mlflow import costs ~1 s
    from mlflow import MlflowClient

    return MlflowClient()


def absolute_db_uri(uri: str) -> str:
    """Make a relative ``sqlite:///rel/path.db`` absolute (and create its folder), so cwd changes don't split state."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def artifact_root_uri(location: str | None) -> str | None:
    """Turn a relative artifact folder into a ``file://`` URI; URIs with a scheme pass through."""
    if location is None or urlparse(location).scheme:
        return location
    path = Path(location).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def configure_tracking(tracking_uri: str) -> str:
    """Point MLflow's tracking and registry at ``tracking_uri`` (relative SQLite paths made absolute)."""
    import mlflow

    uri = absolute_db_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def configure(tracking_uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (tracking and registry), create ``experiment`` if needed, return its id."""
    import mlflow

    configure_tracking(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        try:
            exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_root_uri(artifact_location))
        except Exception:  # created concurrently by another process
            existing = mlflow.get_experiment_by_name(experiment)
            if existing is None:
                raise
            exp_id = existing.experiment_id
    else:
        exp_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@dataclass(frozen=True)
class ModelRef:
    """A registered model version resolved from a ``models:/`` URI."""

    uri: str
    name: str
    version: str
    run_id: str | None

    @property
    def version_uri(self) -> str:
        """``models:/<name>/<version>``: pinned, unlike an alias URI."""
        return f"models:/{self.name}/{self.version}"


_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve(uri: str) -> ModelRef:
    """Resolve ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` to a concrete version."""
    m = _URI.match(uri)
    if not m:
        raise RegistryError(f"model URI {uri!r} is not of the form models:/<name>@<alias> or models:/<name>/<version>")
    client = _client()
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
        else:
            mv = client.get_model_version(m["name"], m["version"])
    except Exception as exc:
        raise RegistryError(f"model URI {uri} does not resolve in the registry: {exc}") from exc
    return ModelRef(uri=uri, name=mv.name, version=str(mv.version), run_id=mv.run_id)


def load_torch_model(ref: ModelRef) -> nn.Module:
    """Load the PyTorch module of a registered version (pinned by version, not alias)."""
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(ref.version_uri, map_location="cpu")
    except Exception as exc:
        raise RegistryError(f"cannot load {ref.version_uri} (from {ref.uri}): {exc}") from exc
    model.eval()
    return model


def alias_version(name: str, alias: str) -> str | None:
    """The version behind ``name@alias``, or ``None`` if the model or alias does not exist."""
    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def log_torch_model(
    model: nn.Module, input_example: np.ndarray, registered_name: str | None, artifact_name: str = "model"
) -> tuple[str, str | None]:
    """Log ``model`` (with signature and input example) to the active run; register it when a name is given.

    Returns ``(model_uri, version or None)``. Pip requirements are given explicitly so MLflow does not
    spawn a subprocess to infer them. The pickle format (not MLflow 3's default ``pt2`` export) keeps the
    module's class, so a loaded student is still a :class:`~kdflow.models.CalibratedClassifier` with
    ``.logits`` and its ``temperature``; loading needs ``kdflow`` importable.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model.eval()
    example = np.asarray(input_example, dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name=artifact_name,
        signature=infer_signature(example, output),
        input_example=example,
        registered_model_name=registered_name,
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    """Set ``kdflow.*`` tags on a model version (values stringified; dicts as JSON)."""
    client = _client()
    for key, value in tags.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        client.set_model_version_tag(name, version, key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key, text)


def set_alias(name: str, alias: str, version: str, reason: str, actor: str | None = None) -> str | None:
    """Move ``name@alias`` to ``version``; record who, when, from which version and why. Returns the previous version."""
    client = _client()
    previous = alias_version(name, alias)
    client.set_registered_model_alias(name, alias, version)
    event = {
        "alias": alias, "version": version, "previous": previous, "reason": reason,
        "actor": actor or getpass.getuser(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}alias.{alias}.set_at", event["at"])
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}alias.{alias}.event", json.dumps(event, sort_keys=True))
    return previous
