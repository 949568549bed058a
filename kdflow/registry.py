"""MLflow tracking and model registry: set-up, teacher resolution, logging, registration and aliases.

Promotion uses aliases (``challenger``, ``champion``); stages are deprecated in MLflow 3. Every alias
move is recorded twice: as version tags (``kdflow.alias.<alias>.event`` / ``.set_at``, the latest move
onto that version) and, append-only, as one registered-model tag per move
(``kdflow.alias_event.<UTC yyyymmddTHHMMSS.ffffff>-<8 hex>``, JSON) — a fresh key each time, never a
read-modify-write of one tag, so concurrent writers cannot lose history. :func:`history` reads it back.

MLflow gives no atomicity for "read the champion, then move it": :func:`promote` and :func:`rollback`
take a ``lock`` (:class:`kdflow.locks.FileLock` on one machine, a Prefect global concurrency limit in
``tasks/promotion.py``) and do the whole read-check-move-record inside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from kdflow.redact import actor as audit_actor
from kdflow.redact import redact, redact_text

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "kdflow."
EVENT_TAG_PREFIX = f"{TAG_PREFIX}alias_event."
SLA_TAG = f"{TAG_PREFIX}sla_passed"
KEY_METRIC_TAGS = ("test_accuracy", "calibrated_temperature")  # version tags shown by versions() when present
MAX_REASON_CHARS = 2000  # MLflow caps tag values at a few thousand characters

log = logging.getLogger(__name__)


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


def _logged_model_of_run(run_id: str, artifact_name: str) -> str | None:
    """The URI of a complete (READY) logged model ``artifact_name`` of run ``run_id``, or ``None``."""
    client = _client()
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id={_quote(run_id)} and name={_quote(artifact_name)}")
    # Filtered here: the SQL store matches no status in a filter string (MLflow 3.17).
    ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
    return ready[0].model_uri if ready else None


def register_run_model(model: nn.Module, input_example: np.ndarray, name: str, run_id: str,
                       artifact_name: str = "model") -> tuple[str, str, bool]:
    """Register ``model`` as a version of ``name`` from run ``run_id`` exactly once: idempotent under retries.

    A repeat (a retried task whose first attempt registered, then failed) finds the version the run already
    registered and returns it; one that had logged the model but not registered it registers that logged model
    instead of logging another. Returns ``(model_uri, version, reused)``; ``reused`` is true when no new version
    was created."""
    import mlflow

    existing = run_version(name, run_id)
    if existing is not None:
        log.info("%s: run %s already registered version %s; reusing it", name, run_id, existing[1])
        return existing[0], existing[1], True
    logged = _logged_model_of_run(run_id, artifact_name)
    if logged is not None:
        version = str(mlflow.register_model(logged, name).version)
        log.info("%s: registered run %s's logged model %s as version %s", name, run_id, logged, version)
        return logged, version, False
    with mlflow.start_run(run_id=run_id):
        model_uri, version = log_torch_model(model, input_example, name, artifact_name)
    assert version is not None  # a registered name always yields a version
    return model_uri, version, False


RUN_KEY_TAG = f"{TAG_PREFIX}run_key"


def open_run(experiment_id: str, run_key: str | None, run_name: str | None, tags: dict[str, str],
             params: dict[str, Any] | None = None) -> tuple[str, bool]:
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
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = {_quote(run_key)}",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            run_id, reused = found[0].info.run_id, True
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=run_name,
                                   tags={**tags, **({RUN_KEY_TAG: run_key} if run_key else {})}).info.run_id
    items = [Param(key[:250], redact_text(str(value))[:6000]) for key, value in params.items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    return run_id, reused


def ensure_alias(name: str, alias: str, version: str, reason: str, actor: str | None = None) -> bool:
    """:func:`set_alias` unless ``name@alias`` already is ``version`` (then nothing is recorded): what a retried
    registration calls, so a repeat adds no second history event. Returns whether the alias moved."""
    if alias_version(name, alias) == str(version):
        return False
    set_alias(name, alias, version, reason=reason, actor=actor)
    return True


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    """Set ``kdflow.*`` tags on a model version (values stringified; dicts as JSON)."""
    client = _client()
    for key, value in tags.items():
        text = redact_text(json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value))
        client.set_model_version_tag(name, version, key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key, text)


def set_alias(name: str, alias: str, version: str, reason: str, actor: str | None = None, *,
              flow_run: str | None = None) -> str | None:
    """Move ``name@alias`` to ``version``; record who, when, from which version and why. Returns the previous version.

    No lock and no checks: use :func:`promote` to move ``champion`` safely under concurrency."""
    previous = alias_version(name, alias)
    _move_alias(_client(), name, alias, version, previous, reason, actor, flow_run, action="set")
    return previous


@dataclass(frozen=True)
class AliasEvent:
    """One recorded alias move (``previous`` == ``version`` for a recorded no-op)."""

    key: str
    alias: str
    version: str
    previous: str | None
    reason: str
    actor: str
    at: str  # ISO 8601 UTC with microseconds
    action: str = "set"  # "set" (set_alias), "promote", "rollback"
    flow_run: str | None = None
    request: str | None = None  # the caller's id for this promotion (a Prefect task run): a retry reuses the event

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored in the tag (without the key)."""
        out = {"alias": self.alias, "version": self.version, "previous": self.previous, "reason": self.reason,
               "actor": self.actor, "at": self.at, "action": self.action}
        if self.flow_run:
            out["flow_run"] = self.flow_run
        if self.request:
            out["request"] = self.request
        return out


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote` / :func:`rollback`: the champion now, the one before, and the recorded event."""

    name: str
    version: str
    previous: str | None
    changed: bool
    event: AliasEvent


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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _latest_event_time(tags: dict[str, str]) -> datetime | None:
    """The time in the newest history key among ``tags`` (keys start with a fixed-width UTC timestamp)."""
    keys = [k for k in tags if k.startswith(EVENT_TAG_PREFIX)]
    if not keys:
        return None
    stamp = max(keys)[len(EVENT_TAG_PREFIX):len(EVENT_TAG_PREFIX) + 22]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%f").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _move_alias(client, name: str, alias: str, version: str, previous: str | None, reason: str,
                actor: str | None, flow_run: str | None, action: str, move: bool = True,
                after: datetime | None = None, request: str | None = None) -> AliasEvent:
    """Record the event in history, then point the alias (unless ``move`` is false: a recorded no-op) and record
    it on the version.

    ``after``: the newest recorded event's time; the new event is stamped later even if this machine's
    clock is behind the writer before it, so history order stays the order of the (locked) moves. History is
    written first so that a move interrupted after it can be completed by a retry carrying the same ``request``
    (see :func:`promote`); written last, the retry would find the alias moved and no record of what it replaced."""
    now = _now()
    if after is not None and now <= after:
        now = after + timedelta(microseconds=1)
    event = AliasEvent(
        key=f"{EVENT_TAG_PREFIX}{now:%Y%m%dT%H%M%S.%f}-{secrets.token_hex(4)}",
        alias=alias, version=str(version), previous=previous, reason=str(reason)[:MAX_REASON_CHARS],
        actor=actor or audit_actor("kdflow"), at=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), action=action,
        flow_run=flow_run, request=request,
    )
    client.set_registered_model_tag(name, event.key, json.dumps(event.as_dict(), sort_keys=True))
    if move:
        _apply_move(client, name, event)
    return event


def _apply_move(client, name: str, event: AliasEvent) -> None:
    """Point ``event.alias`` at ``event.version`` and record the event on that version (idempotent)."""
    payload = json.dumps(event.as_dict(), sort_keys=True)
    client.set_registered_model_alias(name, event.alias, event.version)
    client.set_model_version_tag(name, event.version, f"{TAG_PREFIX}alias.{event.alias}.set_at", event.at)
    client.set_model_version_tag(name, event.version, f"{TAG_PREFIX}alias.{event.alias}.event", payload)


def _registered_model(client, name: str):
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        raise RegistryError(f"registered model {name!r} does not exist or cannot be read: {exc}") from exc


def _parse_events(tags: dict[str, str]) -> list[AliasEvent]:
    events = []
    for key, value in tags.items():
        if not key.startswith(EVENT_TAG_PREFIX):
            continue
        try:
            d = json.loads(value)
            events.append(AliasEvent(
                key=key, alias=d["alias"], version=str(d["version"]),
                previous=None if d.get("previous") is None else str(d["previous"]), reason=d.get("reason", ""),
                actor=d.get("actor", ""), at=d.get("at", ""), action=d.get("action", "set"),
                flow_run=d.get("flow_run"), request=d.get("request")))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed alias event tag %s: %s", key, exc)
    # The key starts with a fixed-width UTC timestamp: sorting by key is sorting by time.
    return sorted(events, key=lambda e: e.key)


def history(name: str, alias: str | None = None) -> list[AliasEvent]:
    """Every recorded alias move of ``name`` (only ``alias``'s when given), oldest first."""
    events = _parse_events(_registered_model(_client(), name).tags or {})
    return [e for e in events if alias is None or e.alias == alias]


def _version_tags(client, name: str, version: str) -> dict[str, str]:
    try:
        return client.get_model_version(name, str(version)).tags or {}
    except Exception as exc:
        raise RegistryError(f"{name} version {version} does not exist or cannot be read: {exc}") from exc


def _check_sla(client, name: str, version: str) -> None:
    verdict = _version_tags(client, name, version).get(SLA_TAG)
    if verdict is None:
        raise RegistryError(f"refusing to promote {name} version {version}: it has no SLA record ({SLA_TAG} tag)")
    if verdict != "True":
        raise RegistryError(f"refusing to promote {name} version {version}: it failed its SLA gate ({SLA_TAG}={verdict})")


def promote(name: str, version: str | int, reason: str, actor: str, *,
            lock: contextlib.AbstractContextManager | None = None, require_sla: bool = True,
            flow_run: str | None = None, request: str | None = None) -> PromotionResult:
    """Make ``version`` the ``champion`` of ``name``, inside ``lock``: re-check its SLA record, move, record.

    Raises :class:`RegistryError` (champion unchanged) when the model or version does not exist or, with
    ``require_sla``, the version's ``kdflow.sla_passed`` tag is missing or not ``True``. Promoting the
    current champion records a no-op event (``previous == version``, ``changed`` false).

    ``request``: the caller's id for this one promotion (a Prefect task run id, the same across its retries).
    When history already holds an event with it, nothing new is recorded: the recorded result is returned, and
    if that event is the latest champion move but the alias does not point at it yet (the first attempt failed
    between recording and moving), the move is completed."""
    version = str(version)
    with lock if lock is not None else contextlib.nullcontext():
        client = _client()
        model = _registered_model(client, name)
        current = _str_or_none((model.aliases or {}).get(CHAMPION))
        if request:
            moves = [e for e in _parse_events(model.tags or {}) if e.alias == CHAMPION]
            prior = next((e for e in moves if e.request == request), None)
            if prior is not None:
                if prior is moves[-1] and current != prior.version:
                    _apply_move(client, name, prior)
                log.info("%s: promotion %s already recorded (%s); not repeated", name, request, prior.key)
                return PromotionResult(name=name, version=prior.version, previous=prior.previous,
                                       changed=prior.previous != prior.version, event=prior)
        if require_sla:
            _check_sla(client, name, version)
        else:
            _version_tags(client, name, version)  # must exist
        event = _move_alias(client, name, CHAMPION, version, current, reason, actor, flow_run,
                            action="promote", move=current != version, after=_latest_event_time(model.tags or {}),
                            request=request)
    log.info("%s: champion %s -> %s (%s, by %s)", name, current, version, reason, actor)
    return PromotionResult(name=name, version=version, previous=current, changed=current != version, event=event)


def _rollback_target(events: list[AliasEvent], current: str, existing: set[str]) -> str | None:
    """The champion before ``current``: walk back through the (non-rollback) moves that made each champion.

    Take the latest promotion/set that made ``current`` champion and its ``previous``; if that version has
    been deleted, continue from the move that made *it* champion, and so on. Rollback events are skipped
    in the walk, so two rollbacks in a row go two promotions back (v1->v2->v3, rollback: v2, rollback: v1)
    instead of toggling between the last two."""
    moves = [e for e in events if e.alias == CHAMPION and e.action != "rollback" and e.previous != e.version]
    target, end = current, len(moves)
    while True:
        i = next((i for i in range(end - 1, -1, -1) if moves[i].version == target), None)
        if i is None or moves[i].previous is None:
            return None
        candidate = moves[i].previous
        if candidate in existing:
            return candidate
        target, end = candidate, i  # deleted since: look further back


def rollback(name: str, reason: str, actor: str, *, lock: contextlib.AbstractContextManager | None = None,
             flow_run: str | None = None) -> PromotionResult:
    """Move ``champion`` back to the champion before the current one (see :func:`_rollback_target`), inside ``lock``.

    Raises :class:`RegistryError` when ``name`` has no champion, or "no previous champion" when the
    history holds no earlier champion that still exists. No SLA re-check: it was champion before."""
    with lock if lock is not None else contextlib.nullcontext():
        client = _client()
        model = _registered_model(client, name)
        current = (model.aliases or {}).get(CHAMPION)
        if current is None:
            raise RegistryError(f"cannot roll back {name}: it has no champion")
        current = str(current)
        existing = {str(v.version) for v in client.search_model_versions(f"name='{name}'")}
        target = _rollback_target(_parse_events(model.tags or {}), current, existing)
        if target is None:
            raise RegistryError(f"cannot roll back {name}: no previous champion in its history "
                                f"(champion is version {current})")
        event = _move_alias(client, name, CHAMPION, target, current, reason, actor, flow_run, action="rollback",
                            after=_latest_event_time(model.tags or {}))
    log.info("%s: champion rolled back %s -> %s (%s, by %s)", name, current, target, reason, actor)
    return PromotionResult(name=name, version=target, previous=current, changed=True, event=event)


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
            out.append(ModelSummary(
                name=rm.name, champion=_str_or_none(aliases.get(CHAMPION)),
                challenger=_str_or_none(aliases.get(CHALLENGER)), latest=_str_or_none(latest)))
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
        created = (datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                   if mv.creation_timestamp else None)
        out.append(VersionInfo(
            version=str(mv.version), aliases=sorted(by_version.get(str(mv.version), [])), created=created,
            sla_passed=None if verdict is None else verdict == "True", metrics=_key_metrics(tags)))
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
        out: dict[str, object] = {"sla_passed": self.passed, "gate_promote": self.promote,
                                  "gate_reason": self.reason[:MAX_REASON_CHARS]}
        if self.champion_version is not None:
            out["gate_champion_version"] = self.champion_version
        if self.champion_accuracy is not None:
            out["gate_champion_accuracy"] = self.champion_accuracy
        return out


def judge_teacher(test_accuracy: float, min_accuracy: float, champion_tolerance: float,
                  champion_version: str | None = None, champion_accuracy: float | None = None,
                  champion_error: str | None = None) -> TeacherVerdict:
    """Gate a trained teacher: ``test_accuracy >= min_accuracy`` and, when a champion exists, not more than
    ``champion_tolerance`` below ``champion_accuracy`` (the champion scored on the same test set). A champion
    that could not be scored (``champion_error``) blocks promotion: nothing says the new one is not worse."""
    def verdict(passed: bool, promote: bool, reason: str) -> TeacherVerdict:
        return TeacherVerdict(passed, promote, reason, test_accuracy, champion_version, champion_accuracy)

    if test_accuracy < min_accuracy:
        return verdict(False, False, f"not promoted: test accuracy {test_accuracy:.4f} < gate.min_accuracy "
                                     f"{min_accuracy}")
    if champion_version is None:
        return verdict(True, True, f"promoted: test accuracy {test_accuracy:.4f} >= gate.min_accuracy "
                                   f"{min_accuracy}; no champion yet")
    if champion_error is not None or champion_accuracy is None:
        return verdict(True, False, f"not promoted: champion version {champion_version} could not be scored on "
                                    f"this test set ({champion_error})")
    if test_accuracy < champion_accuracy - champion_tolerance:
        return verdict(True, False, f"not promoted: test accuracy {test_accuracy:.4f} is below champion version "
                                    f"{champion_version}'s {champion_accuracy:.4f} by more than "
                                    f"gate.champion_tolerance {champion_tolerance}")
    return verdict(True, True, f"promoted: test accuracy {test_accuracy:.4f} >= gate.min_accuracy {min_accuracy} "
                               f"and within {champion_tolerance} of champion version {champion_version}'s "
                               f"{champion_accuracy:.4f}")
