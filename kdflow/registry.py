"""MLflow tracking and model registry: set-up, teacher resolution, logging, registration and read-only views.

Promotion uses aliases (``challenger``, ``champion``); stages are deprecated in MLflow 3. Moving an alias,
promotion, rollback and the alias history live in :mod:`kdflow.promotion`; their public names are re-exported
here (``registry.promote``, ``registry.history``, ...: see ``_PROMOTION_NAMES``), so callers may use either.
Promotion is serialized by the Prefect global concurrency limit ``kdflow-promote-<name>`` held in
``tasks/promotion.py`` and passed to :func:`kdflow.promotion.promote` as its ``lock``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from kdflow.redact import redact, redact_text

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "kdflow."
SLA_TAG = f"{TAG_PREFIX}sla_passed"
KEY_METRIC_TAGS = ("test_accuracy", "calibrated_temperature")  # version tags shown by versions() when present
MAX_REASON_CHARS = 2000  # MLflow caps tag values at a few thousand characters

log = logging.getLogger(__name__)

# Public names that moved to kdflow.promotion, still reachable as ``kdflow.registry.<name>`` (see __getattr__).
_PROMOTION_NAMES = frozenset(
    {"EVENT_TAG_PREFIX", "AliasEvent", "PromotionResult", "ensure_alias", "set_alias", "history", "promote", "rollback"}
)


def __getattr__(name: str) -> Any:
    """Re-export :mod:`kdflow.promotion`'s public names lazily (it imports this module: no import cycle)."""
    if name in _PROMOTION_NAMES:
        from kdflow import promotion

        return getattr(promotion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RegistryError(RuntimeError):
    """A model URI does not resolve, or the registry refused an operation."""


def _client():  # imported lazily: mlflow import costs ~1 s
    from mlflow import MlflowClient

    return MlflowClient()


def absolute_db_uri(uri: str) -> str:
    """Make a relative ``sqlite:///rel/path.db`` absolute (and create its folder), so cwd changes don't split state."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).resolve()
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
    """Load the PyTorch module of a registered version (pinned by version, not alias): a kdflow served artifact
    (every student) is rebuilt as a :class:`~kdflow.models.CalibratedClassifier` from its spec and weights
    (:func:`kdflow.artifact.load_calibrated`, no pickle); any other MLflow pytorch model (a user's teacher)
    loads with ``mlflow.pytorch``."""
    from kdflow import artifact

    try:
        return load_model_dir(artifact.model_dir(ref.version_uri))
    except Exception as exc:
        raise RegistryError(f"cannot load {ref.version_uri} (from {ref.uri}): {exc}") from exc


def load_model_dir(directory: Path) -> nn.Module:
    """The module of a downloaded MLflow model directory, in eval mode (see :func:`load_torch_model`)."""
    import mlflow.pytorch

    from kdflow import artifact

    if artifact.is_served_artifact(directory):
        return artifact.load_calibrated(directory)
    model = mlflow.pytorch.load_model(str(directory), map_location="cpu")
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
    """Log a teacher ``model`` (with signature and input example) to the active run; register it when a name is
    given. Students are logged as served artifacts instead (:func:`kdflow.artifact.log_served_model`).

    Returns ``(model_uri, version or None)``. Pip requirements are given explicitly so MLflow does not
    spawn a subprocess to infer them. The pickle format keeps the module's class, as for the pickled teachers
    users register themselves; loading needs the class importable.
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    import mlflow

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


def _quote(value: str) -> str:
    """``value`` as a single-quoted MLflow filter literal (one with a quote in it is refused)."""
    if "'" in str(value):
        raise RegistryError(f"cannot search the registry for {value!r}: it contains a single quote")
    return f"'{value}'"


def run_version(name: str, run_id: str) -> tuple[str, str] | None:
    """``(model_uri, version)`` of the version of ``name`` registered from MLflow run ``run_id``, or ``None``.

    With several (registered before registration was idempotent) the oldest is the run's version."""
    found = _client().search_model_versions(f"name={_quote(name)} and run_id={_quote(run_id)}")
    if not found:
        return None
    mv = min(found, key=lambda v: int(v.version))
    return str(mv.source), str(mv.version)


def logged_model_of_run(run_id: str, artifact_name: str = "model") -> str | None:
    """The URI of a complete (READY) logged model ``artifact_name`` of run ``run_id``, or ``None``."""
    client = _client()
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id={_quote(run_id)} and name={_quote(artifact_name)}"
    )
    # Filtered here: the SQL store matches no status in a filter string (MLflow 3.17).
    ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
    return ready[0].model_uri if ready else None


def register_logged_model(name: str, run_id: str, model_uri: str) -> tuple[str, str, bool]:
    """Register ``model_uri`` (a model logged in run ``run_id``, e.g. the served artifact the SLA gate evaluated)
    as a version of ``name`` exactly once: idempotent under retries.

    A repeat (a retried task whose first attempt registered, then failed) finds the version the run already
    registered and returns it. Returns ``(model_uri, version, reused)``; ``reused`` is true when no new version
    was created."""
    import mlflow

    existing = run_version(name, run_id)
    if existing is not None:
        log.info("%s: run %s already registered version %s; reusing it", name, run_id, existing[1])
        return existing[0], existing[1], True
    version = str(mlflow.register_model(model_uri, name).version)
    log.info("%s: registered run %s's logged model %s as version %s", name, run_id, model_uri, version)
    return model_uri, version, False


def register_run_model(
    model: nn.Module, input_example: np.ndarray, name: str, run_id: str, artifact_name: str = "model"
) -> tuple[str, str, bool]:
    """Register a teacher ``model`` as a version of ``name`` from run ``run_id`` exactly once: idempotent under
    retries (:func:`register_logged_model`). A run that registered it already returns that version; one that
    had logged the model but not registered it registers that logged model instead of logging another;
    otherwise it is logged with :func:`log_torch_model` first."""
    import mlflow

    existing = run_version(name, run_id)
    if existing is not None:
        return register_logged_model(name, run_id, existing[0])
    logged = logged_model_of_run(run_id, artifact_name)
    if logged is None:
        with mlflow.start_run(run_id=run_id):
            logged, _ = log_torch_model(model, input_example, None, artifact_name)
    return register_logged_model(name, run_id, logged)


RUN_KEY_TAG = f"{TAG_PREFIX}run_key"


def open_run(
    experiment_id: str,
    run_key: str | None,
    run_name: str | None,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
) -> tuple[str, bool]:
    """The MLflow run tagged ``kdflow.run_key=run_key`` in ``experiment_id`` — created (with ``tags`` and
    ``params``) if there is none. Returns ``(run_id, reused)``.

    ``run_key`` is the caller's identity for "this one logical run" (e.g. the id of the Prefect task run that
    opens it, which stays the same across its retries), so a repeat returns the run the first attempt created
    instead of a second one. Tags and params are (re)written on a reused run too: MLflow accepts a param logged
    again with the same value, so a first attempt that failed half-way through them is completed. Without a
    ``run_key`` every call creates a run."""
    from mlflow.entities import Param

    client = _client()
    tags, params = redact(tags), redact(params or {})  # a URI's password never becomes a param or tag
    run_id, reused = None, False
    if run_key:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = {_quote(run_key)}",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            run_id, reused = found[0].info.run_id, True
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
    if run_id is None:
        run_id = client.create_run(
            experiment_id, run_name=run_name, tags={**tags, **({RUN_KEY_TAG: run_key} if run_key else {})}
        ).info.run_id
    items = [Param(key[:250], redact_text(str(value))[:6000]) for key, value in params.items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    return run_id, reused


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    """Set ``kdflow.*`` tags on a model version (values stringified; dicts as JSON)."""
    client = _client()
    for key, value in tags.items():
        text = redact_text(json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value))
        client.set_model_version_tag(name, version, key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key, text)


@dataclass(frozen=True)
class ModelSummary:
    """One registered model: its champion, challenger and latest version (``None`` when absent)."""

    name: str
    champion: str | None
    challenger: str | None
    latest: str | None


@dataclass(frozen=True)
class VersionInfo:
    """One model version: its aliases, creation time, SLA verdict and key metrics from its tags."""

    version: str
    aliases: list[str]
    created: datetime | None
    sla_passed: bool | None  # None: no SLA record
    metrics: dict[str, float] = field(default_factory=dict)


def _registered_model(client, name: str):
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        raise RegistryError(f"registered model {name!r} does not exist or cannot be read: {exc}") from exc


def champion_version(name: str) -> str:
    """The version behind ``name@champion``; :class:`RegistryError` if the model does not exist or has no champion."""
    version = (_registered_model(_client(), name).aliases or {}).get(CHAMPION)
    if version is None:
        raise RegistryError(f"registered model {name!r} has no champion (promote a version first)")
    return str(version)


def list_models() -> list[ModelSummary]:
    """Every registered model with its champion, challenger and latest version, sorted by name."""
    client = _client()
    out, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        for rm in page:
            aliases = rm.aliases or {}
            # Every version sits in exactly one (deprecated) stage, so the max of the per-stage latest is the latest.
            latest = max((int(v.version) for v in rm.latest_versions or []), default=None)
            out.append(
                ModelSummary(
                    name=rm.name,
                    champion=_str_or_none(aliases.get(CHAMPION)),
                    challenger=_str_or_none(aliases.get(CHALLENGER)),
                    latest=_str_or_none(latest),
                )
            )
        token = page.token
        if not token:
            return sorted(out, key=lambda m: m.name)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _key_metrics(tags: dict[str, str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    try:
        for check in json.loads(tags.get(f"{TAG_PREFIX}sla_checks", "[]")):
            metrics[str(check["metric"])] = float(check["value"])
    except (ValueError, KeyError, TypeError):
        pass
    for name in KEY_METRIC_TAGS:
        try:
            metrics[name] = float(tags[TAG_PREFIX + name])
        except (KeyError, ValueError):
            pass
    return metrics


def versions(name: str) -> list[VersionInfo]:
    """Every version of ``name`` (ascending): aliases, creation time, SLA verdict and key metrics from its tags."""
    client = _client()
    model = _registered_model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        verdict = tags.get(SLA_TAG)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc) if mv.creation_timestamp else None
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                created=created,
                sla_passed=None if verdict is None else verdict == "True",
                metrics=_key_metrics(tags),
            )
        )
    return sorted(out, key=lambda v: int(v.version))


GATE_REASON_TAG = f"{TAG_PREFIX}gate_reason"


@dataclass(frozen=True)
class TeacherVerdict:
    """The teacher gate's decision: ``passed`` is the absolute floor (the version's ``kdflow.sla_passed``),
    ``promote`` also requires not being worse than the current champion."""

    passed: bool
    promote: bool
    reason: str
    test_accuracy: float
    champion_version: str | None = None
    champion_accuracy: float | None = None

    def tags(self) -> dict[str, object]:
        """The version tags that record this verdict."""
        out: dict[str, object] = {
            "sla_passed": self.passed,
            "gate_promote": self.promote,
            "gate_reason": self.reason[:MAX_REASON_CHARS],
        }
        if self.champion_version is not None:
            out["gate_champion_version"] = self.champion_version
        if self.champion_accuracy is not None:
            out["gate_champion_accuracy"] = self.champion_accuracy
        return out


def judge_teacher(
    test_accuracy: float,
    min_accuracy: float,
    champion_tolerance: float,
    champion_version: str | None = None,
    champion_accuracy: float | None = None,
    champion_error: str | None = None,
) -> TeacherVerdict:
    """Gate a trained teacher: ``test_accuracy >= min_accuracy`` and, when a champion exists, not more than
    ``champion_tolerance`` below ``champion_accuracy`` (the champion scored on the same test set). A champion
    that could not be scored (``champion_error``) blocks promotion: nothing says the new one is not worse."""

    def verdict(passed: bool, promote: bool, reason: str) -> TeacherVerdict:
        return TeacherVerdict(passed, promote, reason, test_accuracy, champion_version, champion_accuracy)

    if test_accuracy < min_accuracy:
        return verdict(
            False, False, f"not promoted: test accuracy {test_accuracy:.4f} < gate.min_accuracy {min_accuracy}"
        )
    if champion_version is None:
        return verdict(
            True,
            True,
            f"promoted: test accuracy {test_accuracy:.4f} >= gate.min_accuracy {min_accuracy}; no champion yet",
        )
    if champion_error is not None or champion_accuracy is None:
        return verdict(
            True,
            False,
            f"not promoted: champion version {champion_version} could not be scored on "
            f"this test set ({champion_error})",
        )
    if test_accuracy < champion_accuracy - champion_tolerance:
        return verdict(
            True,
            False,
            f"not promoted: test accuracy {test_accuracy:.4f} is below champion version "
            f"{champion_version}'s {champion_accuracy:.4f} by more than "
            f"gate.champion_tolerance {champion_tolerance}",
        )
    return verdict(
        True,
        True,
        f"promoted: test accuracy {test_accuracy:.4f} >= gate.min_accuracy {min_accuracy} "
        f"and within {champion_tolerance} of champion version {champion_version}'s "
        f"{champion_accuracy:.4f}",
    )
