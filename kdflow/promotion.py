"""Promotion, rollback and the alias history of registered models (MLflow aliases ``champion``, ``challenger``).

Every alias move is recorded twice: as version tags (``kdflow.alias.<alias>.event`` / ``.set_at``, the latest move
onto that version) and, append-only, as one registered-model tag per move
(``kdflow.alias_event.<UTC yyyymmddTHHMMSS.ffffff>-<8 hex>``, JSON) — a fresh key each time, never a
read-modify-write of one tag, so concurrent writers cannot lose history. :func:`history` reads it back.

MLflow gives no atomicity for "read the champion, then move it": :func:`promote` and :func:`rollback` do the whole
read-check-move-record inside the ``lock`` their caller passes. What serializes promotion in kdflow is the Prefect
global concurrency limit ``kdflow-promote-<name>`` (one slot), held by ``tasks/promotion.py`` (the ``kdflow models
promote`` / ``rollback`` commands and every flow go through it); this module stays Prefect-free and takes any
context manager. Without a lock, concurrent promotions can break the recorded ``previous`` chain.

Model logging, loading, registration and the read-only views (:func:`kdflow.registry.versions`, ...) stay in
:mod:`kdflow.registry`, which also re-exports this module's public names (``registry.promote`` etc.).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kdflow.redact import actor as audit_actor
from kdflow.registry import (
    CHAMPION,
    MAX_REASON_CHARS,
    SLA_TAG,
    TAG_PREFIX,
    RegistryError,
    _client,
    _registered_model,
    _str_or_none,
    alias_version,
)

EVENT_TAG_PREFIX = f"{TAG_PREFIX}alias_event."

log = logging.getLogger(__name__)


def ensure_alias(name: str, alias: str, version: str, reason: str, actor: str | None = None) -> bool:
    """:func:`set_alias` unless ``name@alias`` already is ``version`` (then nothing is recorded): what a retried
    registration calls, so a repeat adds no second history event. Returns whether the alias moved."""
    if alias_version(name, alias) == str(version):
        return False
    set_alias(name, alias, version, reason=reason, actor=actor)
    return True


def set_alias(
    name: str, alias: str, version: str, reason: str, actor: str | None = None, *, flow_run: str | None = None
) -> str | None:
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
        out = {
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "reason": self.reason,
            "actor": self.actor,
            "at": self.at,
            "action": self.action,
        }
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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _latest_event_time(tags: dict[str, str]) -> datetime | None:
    """The time in the newest history key among ``tags`` (keys start with a fixed-width UTC timestamp)."""
    keys = [k for k in tags if k.startswith(EVENT_TAG_PREFIX)]
    if not keys:
        return None
    stamp = max(keys)[len(EVENT_TAG_PREFIX) : len(EVENT_TAG_PREFIX) + 22]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%f").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _move_alias(
    client,
    name: str,
    alias: str,
    version: str,
    previous: str | None,
    reason: str,
    actor: str | None,
    flow_run: str | None,
    action: str,
    move: bool = True,
    after: datetime | None = None,
    request: str | None = None,
) -> AliasEvent:
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
        alias=alias,
        version=str(version),
        previous=previous,
        reason=str(reason)[:MAX_REASON_CHARS],
        actor=actor or audit_actor("kdflow"),
        at=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        action=action,
        flow_run=flow_run,
        request=request,
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


def _parse_events(tags: dict[str, str]) -> list[AliasEvent]:
    events = []
    for key, value in tags.items():
        if not key.startswith(EVENT_TAG_PREFIX):
            continue
        try:
            d = json.loads(value)
            events.append(
                AliasEvent(
                    key=key,
                    alias=d["alias"],
                    version=str(d["version"]),
                    previous=None if d.get("previous") is None else str(d["previous"]),
                    reason=d.get("reason", ""),
                    actor=d.get("actor", ""),
                    at=d.get("at", ""),
                    action=d.get("action", "set"),
                    flow_run=d.get("flow_run"),
                    request=d.get("request"),
                )
            )
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
    tags = _version_tags(client, name, version)
    verdict = tags.get(SLA_TAG)
    if verdict is None:
        raise RegistryError(f"refusing to promote {name} version {version}: it has no SLA record ({SLA_TAG} tag)")
    # A version that misses an SLA its champion missed worse was admitted by the gate with an alert
    # (kdflow.sla.sla_exception, tag kdflow.sla_alert): it may replace that champion.
    if verdict != "True" and not tags.get(f"{TAG_PREFIX}sla_alert"):
        raise RegistryError(
            f"refusing to promote {name} version {version}: it failed its SLA gate ({SLA_TAG}={verdict})"
        )


def promote(
    name: str,
    version: str | int,
    reason: str,
    actor: str,
    *,
    lock: contextlib.AbstractContextManager | None = None,
    require_sla: bool = True,
    flow_run: str | None = None,
    request: str | None = None,
) -> PromotionResult:
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
                return PromotionResult(
                    name=name,
                    version=prior.version,
                    previous=prior.previous,
                    changed=prior.previous != prior.version,
                    event=prior,
                )
        if require_sla:
            _check_sla(client, name, version)
        else:
            _version_tags(client, name, version)  # must exist
        event = _move_alias(
            client,
            name,
            CHAMPION,
            version,
            current,
            reason,
            actor,
            flow_run,
            action="promote",
            move=current != version,
            after=_latest_event_time(model.tags or {}),
            request=request,
        )
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


def rollback(
    name: str,
    reason: str,
    actor: str,
    *,
    lock: contextlib.AbstractContextManager | None = None,
    flow_run: str | None = None,
) -> PromotionResult:
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
            raise RegistryError(
                f"cannot roll back {name}: no previous champion in its history (champion is version {current})"
            )
        event = _move_alias(
            client,
            name,
            CHAMPION,
            target,
            current,
            reason,
            actor,
            flow_run,
            action="rollback",
            after=_latest_event_time(model.tags or {}),
        )
    log.info("%s: champion rolled back %s -> %s (%s, by %s)", name, current, target, reason, actor)
    return PromotionResult(name=name, version=target, previous=current, changed=True, event=event)
