"""Which registered versions served a window of inference logs, and what each version is checked against.

Every logged row carries the student version that answered it (``model_version``): after a champion switch, or
under a champion/challenger split, one window holds several versions' rows. A drift check reads the champion's
rows when there are enough of them, otherwise those of the version that served the window, each against its
own reference (:class:`VersionReference`: the profile stored at its registration and its version tags).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from kdflow import registry
from kdflow.config import DriftConfig
from kdflow.inference_logs import LogWindow
from kdflow.profile import ReferenceProfile

PROFILE_ARTIFACT = "reference/profile.json"  # a registered student's reference profile, in its run's artifacts
_P = registry.TAG_PREFIX


def recent_days(window: LogWindow, cfg: DriftConfig) -> tuple[datetime, list[date]]:
    """Where the checked days (the last ``window_days``) of ``window`` begin, and their missing partitions."""
    start = window.end - timedelta(days=cfg.window_days)
    return start, [d for d in window.missing_dates if d >= start.date()]


DEFERRAL_RATE_TAG = f"{_P}cascade_deferral_rate"  # a version's validation deferral rate, tagged at registration


@dataclass(frozen=True)
class VersionReference:
    """What one registered version's rows are checked against: its reference profile and its version tags."""

    version: str
    profile: ReferenceProfile
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def deferral_rate(self) -> float | None:
        """The share of validation rows the version's confidence fallback sent to the teacher (tag
        ``kdflow.cascade_deferral_rate``); None without the tag."""
        try:
            return float(self.tags[DEFERRAL_RATE_TAG])
        except (KeyError, ValueError):
            return None


def load_reference(tracking_uri: str, name: str, version: str) -> VersionReference:
    """Version ``version`` of ``name``: the reference profile stored at its registration, and its tags (a
    :class:`~kdflow.registry.RegistryError` naming the version when either is missing)."""
    import mlflow.artifacts

    from mlflow import MlflowClient

    registry.configure_tracking(tracking_uri)
    try:
        mv = MlflowClient().get_model_version(name, str(version))
    except Exception as exc:
        raise registry.RegistryError(f"models:/{name}/{version} does not exist in the registry: {exc}") from exc
    tags = dict(mv.tags or {})
    artifact = tags.get(f"{_P}reference_profile", PROFILE_ARTIFACT)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=artifact)
    except Exception as exc:
        raise registry.RegistryError(
            f"models:/{name}/{version} has no reference profile ({artifact} of run {mv.run_id}): {exc}"
        ) from exc
    return VersionReference(str(version), ReferenceProfile.from_dict(json.loads(Path(path).read_text())), tags)


def served_text(counts: dict[str, int], champion: str) -> str:
    """Rows per serving version as text, e.g. ``v1 2000 rows, v2 (champion) 30 rows``."""
    return ", ".join(f"v{v}{' (champion)' if v == champion else ''} {n} rows" for v, n in counts.items())


@dataclass(frozen=True)
class ServedRows:
    """Who served the checked days of a window: rows per serving version (most first), the champion, the
    version whose rows a drift check reads (None: no version served ``min_rows``) and a sentence saying why."""

    counts: dict[str, int]
    champion: str
    checked: str | None
    scope: str


def served_rows(window: LogWindow, champion: str, cfg: DriftConfig) -> ServedRows:
    """Which version's rows of the last ``window_days`` a drift check reads: the champion's when they reach
    ``min_rows``; otherwise those of the version that served the most rows (after a champion switch, the
    previous champion), checked against that version's own reference; none when no version reaches
    ``min_rows``. Ties go to the higher version number."""
    recent_start, _ = recent_days(window, cfg)
    recent = window.model_versions[(window.frame["timestamp"] >= recent_start).to_numpy()]
    names, sizes = np.unique(recent, return_counts=True)
    order = sorted(zip(names.tolist(), sizes.tolist()), key=lambda vn: (-vn[1], -_number(vn[0]), vn[0]))
    counts = {str(v): int(n) for v, n in order}
    days = f"[{recent_start.isoformat()}, {window.end.isoformat()})"
    mine = counts.get(champion, 0)
    if mine >= cfg.min_rows:
        others = {v: n for v, n in counts.items() if v != champion}
        also = f" (also served: {served_text(others, champion)})" if others else ""
        return ServedRows(counts, champion, champion, f"checked the champion v{champion}'s {mine} rows in {days}{also}")
    if counts and order[0][1] >= cfg.min_rows:
        top, n = order[0]
        return ServedRows(
            counts,
            champion,
            str(top),
            f"checked v{top}'s {n} rows in {days} against v{top}'s own reference profile: the champion v{champion} "
            f"served {mine} rows, fewer than min_rows={cfg.min_rows}",
        )
    served = served_text(counts, champion) if counts else f"no rows at all (the champion is v{champion})"
    return ServedRows(
        counts,
        champion,
        None,
        f"cannot decide: every serving version has fewer than min_rows={cfg.min_rows} rows in {days}: {served}",
    )


def _number(version: str) -> float:
    """A version's number for ordering (non-numeric versions sort last)."""
    return float(version) if version.isdigit() else -1.0
