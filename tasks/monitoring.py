"""Tasks shared by the lifecycle flows: the champion with its reference profile, a validated window of production
logs, and the recent traffic a retrain adds to the transfer set (:mod:`kdflow.monitor`)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger

from kdflow import monitor, registry, served
from kdflow.config import LogsConfig, RecentTraffic, RetrainConfig, ValidationConfig
from kdflow.inference_logs import LogWindow
from kdflow.monitor import Champion
from kdflow.served import VersionReference
from tasks import kdflow_task


def _is_registry_error(state) -> bool:
    """A missing champion or profile will not appear on retry."""
    try:
        state.result()
    except registry.RegistryError:
        return True
    except Exception:
        return False
    return False


@kdflow_task(
    name="load-champion",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=lambda task, run, state: not _is_registry_error(state),
)
def load_champion(tracking_uri: str, name: str) -> Champion:
    """``name@champion`` with its reference profile (:func:`kdflow.monitor.load_champion`); a missing champion
    or profile is not retried."""
    champion = monitor.load_champion(tracking_uri, name)
    get_run_logger().info(
        "champion %s version %s (T=%.4f)", name, champion.ref.version, float(champion.model.temperature)
    )
    return champion


@kdflow_task(
    name="load-reference",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=lambda task, run, state: not _is_registry_error(state),
)
def load_reference(tracking_uri: str, champion: Champion, version: str | None) -> VersionReference:
    """What ``version``'s rows are checked against: the champion's reference when ``version`` is the champion
    or None, else that version's own (:func:`kdflow.served.load_reference`); a missing one is not retried."""
    if version in (None, champion.ref.version):
        return monitor.champion_reference(champion)
    get_run_logger().info("loading the reference profile of v%s, which served the window", version)
    return served.load_reference(tracking_uri, champion.ref.name, version)


@kdflow_task(name="read-logs", retries=1, retry_delay_seconds=2)
def read_logs(
    logs: LogsConfig, validation: ValidationConfig, num_classes: int, start: datetime, end: datetime
) -> LogWindow:
    """The validated inference logs of ``[start, end)`` (:func:`kdflow.monitor.read_logs`): bad logs stop the
    flow with one error naming the problem; missing date partitions are listed on the window."""
    window = monitor.read_logs(logs, validation, num_classes, start, end)
    get_run_logger().info(
        "logs %s [%s, %s): %d rows, %d labeled, %d shadow-scored, missing dates %s",
        window.root,
        start.date(),
        end.date(),
        len(window),
        int(window.label_mask.sum()),
        int(window.shadow_mask.sum()),
        [d.isoformat() for d in window.missing_dates],
    )
    return window


@kdflow_task(name="collect-recent-traffic", retries=1, retry_delay_seconds=2)
def collect_recent_traffic(
    logs: LogsConfig,
    validation: ValidationConfig,
    num_classes: int,
    cfg: RetrainConfig,
    as_of: datetime,
    output_dir: str,
) -> RecentTraffic:
    """Recent production inputs as an extra transfer split and the recent labeled rows for the gate, written as
    Parquet (:func:`kdflow.monitor.collect_recent_traffic`; a retry overwrites the same files)."""
    traffic = monitor.collect_recent_traffic(logs, validation, num_classes, cfg, as_of, output_dir)
    get_run_logger().info(
        "recent traffic: %d inputs added to the transfer set; %d labeled rows %s",
        traffic.recent_rows,
        traffic.labeled_rows,
        "for the gate" if traffic.recent_labeled else "(too few: gate on test only)",
    )
    return traffic
