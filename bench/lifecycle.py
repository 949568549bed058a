"""Lifecycle benchmark: 120 simulated days of MNIST-1D traffic through the real drift, teacher-refresh, retrain
and recalibration flows (a benchmark script, not a test).

What it does, everything on the embedded default inside one state directory (``--state``; default a fresh
temporary directory, kept and printed at the end): Prefect's ephemeral API (``PREFECT_HOME`` under the state
dir, set before Prefect is imported, as ``app.common.embedded_defaults`` does; ``PREFECT_API_URL`` and
``MLFLOW_TRACKING_URI`` are removed from the environment), MLflow on SQLite, artifacts, the logit store, the
inference logs and the reports all under the state dir.

1. Data: ``kdflow.generators.write_mnist1d(<state>/data/mnist1d, transfer_size=--transfer-size)``.
2. Configs: the packaged ``mnist1d_teacher.yaml`` and ``mnist1d_distill.yaml``, paths rewritten into the
   state dir and ``logs.root`` added; nothing else changed (the ``drift``, ``retrain`` and
   ``recalibration`` sections are the packaged defaults of :mod:`kdflow.config`) unless ``--drift KEY=VALUE``
   is given (a what-if; recorded as an override).
3. The teacher (``flows.teacher.teacher_flow``) and the first student (``flows.distill.distill_flow``) are
   trained through the real flows.
4. Calendar: day 0 = ``--start`` (2026-01-01). For each day d < ``--days``:

   - on the 1st of a month, ``recalibration_flow(config, as_of=<that day> 03:00 UTC)`` before the day's
     traffic;
   - ``kdflow.simulate.simulate_traffic`` for that one day, scored by the current champion (loaded from the
     registry), with the ``stable-gradual-sudden`` preset evaluated at day index d (``simulate_traffic``
     numbers the days of each call from 0, so the schedule is wrapped in an offset of d), shadow fraction
     0.1, label fraction 0.25, the registered teacher as shadow scorer, ``seed=d``; labels arrive
     ``label_delay_days`` (``simulate_traffic``'s default, 1) after each prediction;
   - the day's logs are read back with every label that will ever arrive: the champion's accuracy on the
     labeled rows (logged probabilities vs true labels), the teacher's on the same rows (the registered
     teacher run on the logged inputs), the champion's ECE (15 bins);
   - ``drift_check_flow(config, as_of=<day d+1> 00:00 UTC, retrain_via="subflow")``: its window is day d
     (``drift.window_days`` = 1). A retrain decision runs ``retrain_flow`` inside it, a recalibrate decision
     ``recalibration_flow``, a refresh_teacher decision ``teacher_refresh_flow`` (which, once it promotes a
     teacher, retrains the student from it); the next day's traffic is served by whatever is champion then,
     and after a refresh the teacher champion is reloaded (shadow scorer, the day's teacher accuracy). Each
     refresh is recorded with its outcome, the teacher version it promoted, the student retrain it ran (also
     counted in the retrain bar) and its wall time per phase.

Bars, computed from the daily record (accuracies on labeled rows; "window day" = the day a check looked at):

1. no retrain decision on window days 0-39 (the stable period);
2. per shift (gradual, onset day 40; sudden, onset day 80): the cost day is the first day >= the onset (and
   before the next onset) on which the champion's accuracy on all of the day's rows (the simulator knows every
   label) is >= 3 points below its mean over days 0-39; detected = the first check on a window day >= the onset
   whose decision triggered (a trigger signal on ``drift.consecutive_windows`` consecutive checks: a retrain,
   or a recalibration while the retrain cools down); PASS iff that day is <= cost day + 3 (a shift that never
   costs 3 points passes vacuously). Reported beside it: the cost day on the labeled rows alone and on their
   trailing 3-day mean, the first retrain decision, the lag from the nominal onset;
3. per retrain: the version it registered, scored on the labeled rows of the shifted days (>= 40) from the
   day after the retrain up to the next retrain (or the end), vs the teacher on the same rows; PASS iff
   teacher - student <= 2 points (nothing registered: FAIL);
4. per month whose 1st ran a recalibration that had enough labeled rows to decide: the ECE of that month's
   labeled traffic (the probabilities as served) <= 0.03;
5. ``no_teacher_refresh_stable``: no refresh_teacher decision on window days 0-39;
6. ``teacher_refresh_recovery``: per shift, from 10 days after its onset to the next onset (or the end), the
   champion student's accuracy (as served) pooled over the labeled rows is >= an oracle's minus 3 points; the
   oracle is a teacher of the registered teacher's architecture and ``train`` section trained from scratch (here,
   at analysis time) on 4,000 labeled rows of that regime drawn with the simulator's generator
   (``kdflow.simulate.day_traffic``, spread evenly over the judged days, seeds disjoint from the calendar's;
   best epoch on 500 more), scored on the same labeled rows. A shift whose judged days the run does not cover
   is n/a.

In bar 3 a student is compared with the teacher version it was distilled from (after a refresh, the new one).

Run (from the repository root)::

    .venv/bin/python bench/lifecycle.py --json bench/results/lifecycle.json   # full: 120 days, 23-30 min on 2 CPUs
    .venv/bin/python bench/lifecycle.py --days 3 --json /tmp/smoke.json         # smoke run, ~3-8 min

With ``--transfer-size 2000`` the first student fails its SLA gate (teacher gap 0.034 > 0.03) and the run
stops: there is nothing to serve. ``--first-day 86 --days 6`` (debugging) covers a retrain and the April 1st
recalibration in a few minutes; ``--reuse-teacher`` with ``--state`` of an earlier run skips the teacher.

The exit status is 0 whether or not the bars pass (it is a measurement, not a gate); a flow that raises is
recorded (type, message, last traceback lines) and the calendar goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # flows/ and tasks/ are top-level packages of the repository
    sys.path.insert(0, str(REPO))

from _common import cpu_model, load_avg, write_json  # noqa: E402  (bench/ is on sys.path as the script's folder)

PRESET = "stable-gradual-sudden"
SHIFTS = {"gradual": 40, "sudden": 80}  # onset days of the preset
STABLE_DAYS = range(0, 40)
COST_POINTS = 0.03
DETECT_WITHIN_DAYS = 3
TEACHER_GAP_POINTS = 0.02
MAX_ECE = 0.03
N_BINS = 15
RECOVERY_AFTER_DAYS = 10  # teacher_refresh_recovery: judged from onset + 10 days
ORACLE_POINTS = 0.03
ORACLE_ROWS = 4000  # the oracle teacher's training rows of the shifted regime
ORACLE_VAL_ROWS = 500  # its validation rows (best epoch), drawn alike
ORACLE_SEED = 7919  # its traffic seeds, disjoint from the calendar's (seed = day index < 120)


# --------------------------------------------------------------------------------------------- set-up
def set_embedded_env(state: Path, prefect_log_level: str) -> None:
    """Prefect's ephemeral API with its state under ``state`` (must precede any Prefect import)."""
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    os.environ["PREFECT_HOME"] = str(state / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = prefect_log_level
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps the log one line per day


def mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def git_state() -> dict[str, Any]:
    """HEAD and whether the working tree has uncommitted changes (None outside a git checkout)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        return {"head": head, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"head": None, "dirty": None}


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "mem_gib": mem_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def parse_drift_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for the ``drift`` section (values parsed as YAML: numbers, lists, ...)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--drift expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def write_configs(state: Path, drift_overrides: dict[str, Any]) -> tuple[Path, Path, dict[str, Any]]:
    """The packaged teacher and distill configs with every path under ``state``; returns both paths and the
    distill config as written."""
    import yaml

    from kdflow.config import packaged_config

    data = state / "data" / "mnist1d"
    mlflow_cfg = {"tracking_uri": f"sqlite:///{state / 'mlflow.db'}", "artifact_location": str(state / "mlartifacts")}
    splits = {k: str(data / f"{k}.parquet") for k in ("train", "val", "test", "transfer")}
    teacher = yaml.safe_load(packaged_config("mnist1d_teacher.yaml").read_text())
    teacher["data"].update({k: splits[k] for k in ("train", "val", "test")})
    teacher["mlflow"] = dict(mlflow_cfg)
    distill = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    distill["data"].update(splits)
    distill["mlflow"] = dict(mlflow_cfg)
    distill["store"]["root"] = str(state / "store")
    distill["output_dir"] = str(state / "reports")
    distill["logs"] = {"root": str(state / "logs")}
    if drift_overrides:
        distill["drift"] = {**distill.get("drift", {}), **drift_overrides}
    out = state / "configs"
    out.mkdir(parents=True, exist_ok=True)
    tpath, dpath = out / "teacher.yaml", out / "distill.yaml"
    tpath.write_text(yaml.safe_dump(teacher, sort_keys=False))
    dpath.write_text(yaml.safe_dump(distill, sort_keys=False))
    return tpath, dpath, distill


class Timer:
    """Accumulates named wall-clock phase durations (seconds) and counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            return fn(), time.perf_counter() - t0
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.counts[name] = self.counts.get(name, 0) + 1


def error_record(exc: BaseException) -> dict[str, Any]:
    """Type, message and the last traceback lines of a flow that raised."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return {"type": type(exc).__name__, "message": str(exc)[:4000], "traceback_tail": text[-6000:]}


def offset_schedule(d: int):
    """The preset as seen from day d: ``simulate_traffic`` numbers each call's days from 0."""
    from kdflow.simulate import DriftSchedule

    @dataclass(frozen=True)
    class OffsetSchedule(DriftSchedule):
        offset: int = 0

        def at(self, day: int):  # noqa: D401 - same contract as DriftSchedule.at
            return super().at(day + self.offset)

    base = DriftSchedule.preset(PRESET)
    return OffsetSchedule(base.segments, name=f"{PRESET}@day{d}", offset=d)


def phase_of(d: int) -> str:
    return "stable" if d < SHIFTS["gradual"] else ("gradual" if d < SHIFTS["sudden"] else "sudden")


def acc(pred: Any, y: Any) -> float | None:
    import numpy as np

    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else None


# --------------------------------------------------------------------------------------------- the calendar
class Lifecycle:
    """The simulated calendar and everything it records."""

    def __init__(self, args: argparse.Namespace, state: Path, dpath: Path, dcfg: dict[str, Any], timer: Timer):
        from kdflow import registry

        self.args, self.state, self.dpath, self.timer = args, state, str(dpath), timer
        self.name = dcfg["registry"]["student_name"]
        self.logs_root = dcfg["logs"]["root"]
        self.registry = registry
        registry.configure_tracking(dcfg["mlflow"]["tracking_uri"])
        self.teacher_uri = dcfg["teacher_uri"]
        self._teachers: dict[str, Any] = {}
        self.reload_teacher()
        self._models: dict[str, Any] = {}
        self.days: list[dict[str, Any]] = []
        self.labeled: dict[int, tuple[Any, Any, Any]] = {}  # day -> (x, y, served probs) of labeled rows
        self.recalibrations: list[dict[str, Any]] = []  # the monthly ones
        self.drift_recalibrations: list[dict[str, Any]] = []  # asked for by a drift check (retrain cooling down)
        self.retrains: list[dict[str, Any]] = []
        self.refreshes: list[dict[str, Any]] = []  # refresh_teacher decisions carried out as a sub-flow

    def reload_teacher(self) -> None:
        """The teacher champion now (after a refresh: the new version): shadow scorer and the teacher bars'."""
        ref = self.registry.resolve(self.teacher_uri)
        self.teacher_version = ref.version
        self.teacher = self.teacher_model(ref.version)

    def teacher_model(self, version: str):
        """A registered teacher version (loaded once)."""
        if version not in self._teachers:
            name = self.teacher_uri.removeprefix("models:/").split("@")[0]
            ref = self.registry.ModelRef(f"models:/{name}/{version}", name, str(version), None)
            self._teachers[version] = self.registry.load_torch_model(ref)
        return self._teachers[version]

    def model(self, version: str):
        if version not in self._models:
            ref = self.registry.ModelRef(f"models:/{self.name}/{version}", self.name, str(version), None)
            self._models[version] = self.registry.load_torch_model(ref)
        return self._models[version]

    def champion(self) -> str:
        return self.registry.champion_version(self.name)

    def predict(self, module, x):
        from kdflow.simulate import _predict

        return _predict(module, x)

    # ---- one recalibration
    def recalibrate(self, d: int, when: dt.datetime) -> dict[str, Any]:
        from flows.recalibrate import recalibration_flow

        before = self.champion()
        rec: dict[str, Any] = {"day": d, "as_of": when.isoformat(), "champion_before": before}
        try:
            outcome, secs = self.timer.run("recalibration", lambda: recalibration_flow(self.dpath, when.isoformat()))
            result = outcome.get("result") or {}
            rec.update(
                seconds=secs,
                reason=outcome.get("reason"),
                labeled_rows=outcome.get("labeled_rows"),
                version=outcome.get("version"),
                promoted=bool(outcome.get("promotion")),
                decided=outcome.get("result") is not None,
                **{
                    k: result.get(k)
                    for k in ("current_temperature", "new_temperature", "ece_before", "ece_after", "improved")
                },
            )
        except Exception as exc:  # recorded; the calendar goes on
            rec.update(error=error_record(exc), decided=False)
        rec["champion_after"] = self.champion()
        self.recalibrations.append(rec)
        return rec

    # ---- one day
    def day(self, d: int) -> dict[str, Any]:
        from flows.drift import drift_check_flow
        from kdflow.calibration import expected_calibration_error
        from kdflow.inference_logs import read_window
        from kdflow.simulate import simulate_traffic

        args = self.args
        today = args.start + dt.timedelta(days=d)
        rec: dict[str, Any] = {"day": d, "date": today.isoformat(), "phase": phase_of(d)}
        midnight = dt.datetime(today.year, today.month, today.day, tzinfo=dt.timezone.utc)
        if today.day == 1:
            rec["recalibration"] = self.recalibrate(d, midnight + dt.timedelta(hours=3))

        version = self.champion()
        rec["champion_version"] = version
        rec["teacher_version"] = self.teacher_version
        model = self.model(version)
        summary, rec["seconds_traffic"] = self.timer.run(
            "traffic",
            lambda: simulate_traffic(
                model,
                self.name,
                version,
                self.logs_root,
                today,
                days=1,
                rows_per_day=args.rows_per_day,
                schedule=offset_schedule(d),
                shadow_fraction=args.shadow_fraction,
                label_fraction=args.label_fraction,
                teacher=self.teacher,
                seed=d,
                label_delay_days=args.label_delay_days,
            ),
        )
        sim = summary["per_day"][0]
        rec.update(
            knobs=sim["knobs"],
            rows=sim["rows"],
            accuracy_all_rows=sim["accuracy"],
            teacher_agreement_shadow=sim["teacher_agreement"],
        )

        def score() -> None:
            w = read_window(self.logs_root, midnight, midnight + dt.timedelta(days=1))
            m = w.label_mask
            x, y, probs = w.x[m], w.labels[m], w.probs[m]
            self.labeled[d] = (x, y, probs)
            rec["labeled_rows"] = int(m.sum())
            rec["accuracy"] = acc(probs.argmax(1), y)
            rec["teacher_accuracy"] = acc(self.predict(self.teacher, x).argmax(1), y)
            rec["ece"] = expected_calibration_error(probs, y, N_BINS) if len(y) else None
            rec["mean_confidence"] = float(probs.max(1).mean()) if len(y) else None

        self.timer.run("score", score)

        as_of = midnight + dt.timedelta(days=1)
        check: dict[str, Any] = {"as_of": as_of.isoformat()}
        try:
            result, secs = self.timer.run(
                "drift_check", lambda: drift_check_flow(self.dpath, as_of.isoformat(), retrain_via="subflow")
            )
            dec = result["decision"]
            check.update(
                seconds=secs,
                version=result["version"],
                status=result["status"],
                action=dec["action"],
                triggered=dec["triggered"],
                reason=dec["reason"],
                cooldown_until=dec.get("cooldown_until"),
                exceeded=sorted(k for k, v in dec["consecutive"].items() if v > 0),
                consecutive={k: v for k, v in dec["consecutive"].items() if v > 0},
                signals=result["signals"],
                mlflow_run_id=result["mlflow_run_id"],
            )
            if result.get("retrain"):
                check["retrain"] = self.record_retrain(d, as_of, result["retrain"])
            if result.get("teacher_refresh"):
                check["teacher_refresh"] = self.record_refresh(d, as_of, result["teacher_refresh"])
            if result.get("recalibration"):
                check["recalibration"] = self.record_drift_recalibration(d, as_of, result["recalibration"])
        except Exception as exc:
            check["error"] = error_record(exc)
        rec["drift"] = check
        rec["champion_after"] = self.champion()
        return rec

    def record_drift_recalibration(self, d: int, as_of: dt.datetime, out: dict[str, Any]) -> dict[str, Any]:
        result = out.get("result") or {}
        rc = {
            "window_day": d,
            "as_of": as_of.isoformat(),
            "window": out.get("window"),
            "labeled_rows": out.get("labeled_rows"),
            "version": out.get("version"),
            "promoted": bool(out.get("promotion")),
            "reason": out.get("reason"),
            **{k: result.get(k) for k in ("current_temperature", "new_temperature", "ece_before", "ece_after")},
        }
        self.drift_recalibrations.append(rc)
        return rc

    def record_refresh(self, d: int, as_of: dt.datetime, out: dict[str, Any]) -> dict[str, Any]:
        """A teacher refresh run by the drift check: its outcome, the teacher version it promoted, the student
        retrain it ran (also counted in ``retrains``) and its wall time per phase; the teacher is reloaded."""
        rf = {
            "window_day": d,
            "as_of": as_of.isoformat(),
            "outcome": out.get("outcome"),
            "reason": out.get("outcome_reason"),
            "parent_version": out.get("parent_version"),
            "version": out.get("version"),
            "rows": out.get("rows"),
            "verdict": out.get("verdict"),
            "phases_seconds": out.get("phases"),
            "seconds": sum((out.get("phases") or {}).values()),
        }
        if out.get("recalibration"):  # skipped for too few labels: the student recalibrated instead
            rf["recalibration"] = self.record_drift_recalibration(d, as_of, out["recalibration"])
        if out.get("retrain"):
            rt = self.record_retrain(d, as_of, out["retrain"], via="refresh_teacher")
            rf["student"] = {k: rt[k] for k in ("version", "promoted", "gate_passed", "gate_reason", "teacher_version")}
        self.refreshes.append(rf)
        self.reload_teacher()
        rf["teacher_version_after"] = self.teacher_version
        return rf

    def record_retrain(self, d: int, as_of: dt.datetime, out: dict[str, Any], via: str = "retrain") -> dict[str, Any]:
        report = out.get("report") or {}
        reg = report.get("registration") or {}
        decision = report.get("decision") or {}
        rt = {
            "window_day": d,
            "as_of": as_of.isoformat(),
            "via": via,
            "teacher_version": str((report.get("teacher") or {}).get("version") or self.teacher_version),
            "version": reg.get("version"),
            "promoted": bool(report.get("promotion")),
            "gate_passed": report.get("gate_passed"),
            "gate_reason": decision.get("reason"),
            "recent_rows": (out.get("recent") or {}).get("recent_rows"),
            "recent_labeled_rows": (out.get("recent") or {}).get("labeled_rows"),
            "test_accuracy": (report.get("evaluation") or {}).get("student_accuracy"),
            "test_ece": (report.get("evaluation") or {}).get("student_ece"),
        }
        self.retrains.append(rt)
        return rt


# --------------------------------------------------------------------------------------------- analysis
def pooled_accuracy(
    lc: Lifecycle, days: Sequence[int], module=None, teacher=None
) -> tuple[float | None, float | None, int]:
    """(student, teacher) accuracy pooled over the labeled rows of ``days``; student = ``module`` re-scored,
    or the served probabilities when None; teacher = ``teacher``, or the teacher champion now when None."""
    import numpy as np

    xs = [lc.labeled[d] for d in days if d in lc.labeled and len(lc.labeled[d][1])]
    if not xs:
        return None, None, 0
    x = np.concatenate([a[0] for a in xs])
    y = np.concatenate([a[1] for a in xs])
    probs = np.concatenate([a[2] for a in xs]) if module is None else lc.predict(module, x)
    teacher = lc.teacher if teacher is None else teacher
    return acc(probs.argmax(1), y), acc(lc.predict(teacher, x).argmax(1), y), len(y)


def monthly_ece(lc: Lifecycle) -> list[dict[str, Any]]:
    """Per calendar month: ECE of the labeled traffic as served, overall and per serving version."""
    import numpy as np

    from kdflow.calibration import expected_calibration_error

    months: dict[str, list[dict[str, Any]]] = {}
    for rec in lc.days:
        months.setdefault(rec["date"][:7], []).append(rec)
    out = []
    for month, recs in months.items():
        days = [r["day"] for r in recs if r["day"] in lc.labeled and len(lc.labeled[r["day"]][1])]
        if not days:
            continue
        y = np.concatenate([lc.labeled[d][1] for d in days])
        p = np.concatenate([lc.labeled[d][2] for d in days])
        segments, cur = [], None
        for r in recs:
            if cur is None or r["champion_version"] != cur["version"]:
                cur = {"version": r["champion_version"], "days": []}
                segments.append(cur)
            cur["days"].append(r["day"])
        for seg in segments:
            sy = np.concatenate([lc.labeled[d][1] for d in seg["days"]])
            sp = np.concatenate([lc.labeled[d][2] for d in seg["days"]])
            seg.update(
                first_day=seg["days"][0],
                last_day=seg["days"][-1],
                labeled_rows=len(sy),
                ece=expected_calibration_error(sp, sy, N_BINS),
                accuracy=acc(sp.argmax(1), sy),
                mean_confidence=float(sp.max(1).mean()),
            )
            del seg["days"]
        recal = next((r for r in lc.recalibrations if r["as_of"][:7] == month), None)
        out.append(
            {
                "month": month,
                "days": [days[0], days[-1]],
                "labeled_rows": len(y),
                "ece": expected_calibration_error(p, y, N_BINS),
                "accuracy": acc(p.argmax(1), y),
                "mean_confidence": float(p.max(1).mean()),
                "after_recalibration": bool(recal and recal.get("decided")),
                "recalibration": None
                if recal is None
                else {
                    k: recal.get(k)
                    for k in (
                        "version",
                        "promoted",
                        "reason",
                        "ece_before",
                        "ece_after",
                        "new_temperature",
                        "current_temperature",
                        "labeled_rows",
                    )
                },
                "by_version": segments,
            }
        )
    return out


def compute_bars(lc: Lifecycle, n_days: int) -> dict[str, Any]:
    import numpy as np

    days = {r["day"]: r for r in lc.days}
    bars: dict[str, Any] = {}

    # 1. no retrain in the stable period
    stable = [days[d] for d in STABLE_DAYS if d in days]
    stable_retrains = [r["day"] for r in stable if r["drift"].get("action") == "retrain"]
    stable_refreshes = [r["day"] for r in stable if r["drift"].get("action") == "refresh_teacher"]
    stable_drift = [r["day"] for r in stable if r["drift"].get("status") == "drift"]
    bars["no_retrain_stable"] = {
        "bar": "no retrain decision on window days 0-39",
        "days_covered": len(stable),
        "retrain_days": stable_retrains,
        "drift_status_days": stable_drift,
        "pass": (not stable_retrains) if stable else None,
    }
    bars["no_teacher_refresh_stable"] = {
        "bar": "no refresh_teacher decision on window days 0-39",
        "days_covered": len(stable),
        "refresh_teacher_days": stable_refreshes,
        "pass": (not stable_refreshes) if stable else None,
    }

    # 2. detection per shift. The cost day is read on all of the day's rows (the simulator's ground truth): the
    # cost of a shift is a property of the traffic, and one day's ~500 labeled rows put a noise of about one
    # point on it. Detected = the first check whose decision triggered (a trigger signal on
    # ``consecutive_windows`` consecutive checks), whatever action the cool-down allowed.
    stable_acc = [r["accuracy"] for r in stable if r.get("accuracy") is not None]
    ref = float(np.mean(stable_acc)) if stable_acc else None
    ref_all = float(np.mean([r["accuracy_all_rows"] for r in stable])) if stable else None
    triggered_days = sorted(r["day"] for r in lc.days if r["drift"].get("triggered"))
    retrain_days = sorted(r["day"] for r in lc.days if r["drift"].get("action") == "retrain")
    onsets = sorted(SHIFTS.items(), key=lambda kv: kv[1])

    def lag(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else a - b

    for i, (shift, onset) in enumerate(onsets):
        end = onsets[i + 1][1] if i + 1 < len(onsets) else n_days
        span = [days[d] for d in range(onset, min(end, n_days)) if d in days]
        b: dict[str, Any] = {
            "bar": f"{shift} shift (onset day {onset}): drift decision within {DETECT_WITHIN_DAYS} "
            f"days of the first day the champion's accuracy on all rows is >= "
            f"{COST_POINTS * 100:.0f} points below its stable mean",
            "onset_day": onset,
            "stable_mean_accuracy_all_rows": ref_all,
            "stable_mean_accuracy": ref,
            "days_covered": len(span),
        }
        if not span or ref_all is None:
            b["pass"] = None
            bars[f"detect_{shift}"] = b
            continue
        cost = next((r["day"] for r in span if r["accuracy_all_rows"] <= ref_all - COST_POINTS), None)
        detect = next((d for d in triggered_days if onset <= d < end), None)
        first_retrain = next((d for d in retrain_days if onset <= d < end), None)
        b.update(
            cost_day=cost,
            cost_day_accuracy=None if cost is None else days[cost]["accuracy_all_rows"],
            first_triggered_window_day=detect,
            first_triggered_action=None if detect is None else days[detect]["drift"].get("action"),
            first_retrain_window_day=first_retrain,
            first_drift_status_day=next((r["day"] for r in span if r["drift"].get("status") == "drift"), None),
            lag_days=lag(detect, cost),
        )
        # Other readings, reported beside the bar: the cost day on the ~500 labeled rows alone and on their
        # trailing 3-day mean; lags of the first retrain decision and from the nominal onset.
        cost_lab = next(
            (r["day"] for r in span if r.get("accuracy") is not None and r["accuracy"] <= ref - COST_POINTS), None
        )
        cost_3d = next(
            (
                r["day"]
                for r in span
                if r["day"] - 2 >= onset
                and all(days.get(k, {}).get("accuracy") is not None for k in range(r["day"] - 2, r["day"] + 1))
                and np.mean([days[k]["accuracy"] for k in range(r["day"] - 2, r["day"] + 1)]) <= ref - COST_POINTS
            ),
            None,
        )
        b["other_readings"] = {
            "cost_day_labeled_rows": cost_lab,
            "lag_labeled_rows": lag(detect, cost_lab),
            "cost_day_3day_mean": cost_3d,
            "lag_3day_mean": lag(detect, cost_3d),
            "lag_first_retrain": lag(first_retrain, cost),
            "lag_from_onset": lag(detect, onset),
        }
        if cost is None:
            b["pass"] = True
            b["note"] = "never cost 3 points in the days covered (vacuous)"
        else:
            b["pass"] = detect is not None and detect - cost <= DETECT_WITHIN_DAYS
            if detect is None:
                b["note"] = "no drift decision after the onset in the days covered"
        bars[f"detect_{shift}"] = b

    # 3. retrained student vs teacher on shifted traffic
    per = []
    for i, rt in enumerate(lc.retrains):
        # served from window day + 1 until the next retrain takes effect (the day after its window day)
        nxt = lc.retrains[i + 1]["window_day"] + 1 if i + 1 < len(lc.retrains) else n_days
        follow = [d for d in range(rt["window_day"] + 1, nxt) if d >= SHIFTS["gradual"] and d in lc.labeled]
        item = {
            "window_day": rt["window_day"],
            "via": rt["via"],
            "teacher_version": rt["teacher_version"],
            "version": rt["version"],
            "promoted": rt["promoted"],
            "days": [follow[0], follow[-1]] if follow else None,
        }
        if rt["version"] is None:
            item.update(pass_=False, note="nothing registered")
        elif not follow:
            item.update(pass_=None, note="no later shifted day in the run")
        else:
            # vs the teacher version it was distilled from (after a refresh: the refreshed one)
            s, t, n = pooled_accuracy(lc, follow, lc.model(str(rt["version"])), lc.teacher_model(rt["teacher_version"]))
            served, _, _ = pooled_accuracy(lc, follow)
            item.update(
                student_accuracy=s,
                teacher_accuracy=t,
                served_accuracy=served,
                labeled_rows=n,
                gap_points=(t - s) * 100,
                pass_=(t - s) <= TEACHER_GAP_POINTS + 1e-12,
            )
        item["pass"] = item.pop("pass_")
        per.append(item)
    decided = [p["pass"] for p in per if p["pass"] is not None]
    bars["retrained_vs_teacher"] = {
        "bar": "each retrained student within 2 points of the teacher on the shifted "
        "traffic after it (teacher - student <= 0.02)",
        "per_retrain": per,
        "pass": all(decided) if decided else None,
    }

    # 4. ECE in each month after a recalibration
    months = monthly_ece(lc)
    judged = [m for m in months if m["after_recalibration"]]
    bars["ece_after_recalibration"] = {
        "bar": f"ECE ({N_BINS} bins) <= {MAX_ECE} in each month after a recalibration that decided",
        "per_month": [{"month": m["month"], "ece": m["ece"], "pass": m["ece"] <= MAX_ECE} for m in judged],
        "pass": all(m["ece"] <= MAX_ECE for m in judged) if judged else None,
    }
    bars["teacher_refresh_recovery"] = recovery_bar(lc, days, n_days)
    return {"stable_mean_accuracy": ref, "bars": bars, "monthly": months}


def oracle_teacher(lc: Lifecycle, days: Sequence[int]):
    """A teacher of the registered teacher's architecture and ``train`` section trained from scratch on
    ``ORACLE_ROWS`` labeled rows of the regime of ``days`` (the simulator's generator, ``day_traffic``, spread
    evenly over those days, seeds disjoint from the calendar's), best epoch on ``ORACLE_VAL_ROWS`` rows drawn
    alike. Returns (module, seconds)."""
    import numpy as np

    from kdflow.config import TeacherConfig, load_config
    from kdflow.models import build_model
    from kdflow.simulate import day_traffic
    from kdflow.stream import ArraySource
    from kdflow.train import fit

    def draw(rows: int, seed: int) -> tuple[Any, Any]:
        per = np.diff(np.linspace(0, rows, len(days) + 1).round().astype(int))
        parts = [day_traffic(int(n), d, offset_schedule(0), seed) for d, n in zip(days, per) if n]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    t0 = time.perf_counter()
    tcfg = load_config(lc.state / "configs" / "teacher.yaml", TeacherConfig)
    x, y = draw(ORACLE_ROWS, ORACLE_SEED)
    xv, yv = draw(ORACLE_VAL_ROWS, ORACLE_SEED + 1)
    model = build_model(tcfg.model.arch, tcfg.model.args, tuple(x.shape[1:]), 10)
    train = tcfg.train.model_copy(update={"checkpoint_every_epochs": None})
    fit(model, ArraySource(x, y), xv, yv, train, progress=False)
    return model, time.perf_counter() - t0


def recovery_bar(lc: Lifecycle, days: dict[int, dict[str, Any]], n_days: int) -> dict[str, Any]:
    """Per shift: from ``RECOVERY_AFTER_DAYS`` after the onset to the next onset (or the end), the champion
    student's accuracy (as served) pooled over the labeled rows vs the oracle teacher's on the same rows; PASS
    iff oracle - student <= ``ORACLE_POINTS``."""
    onsets = sorted(SHIFTS.items(), key=lambda kv: kv[1])
    per = []
    for i, (shift, onset) in enumerate(onsets):
        end = onsets[i + 1][1] if i + 1 < len(onsets) else n_days
        judged = [d for d in range(onset + RECOVERY_AFTER_DAYS, min(end, n_days)) if d in lc.labeled]
        item: dict[str, Any] = {"shift": shift, "onset_day": onset, "days": [judged[0], judged[-1]] if judged else None}
        if not judged:
            item.update(pass_=None, note="no judged day in the run")
        else:
            oracle, secs = oracle_teacher(lc, judged)
            student, oracle_acc, n = pooled_accuracy(lc, judged, teacher=oracle)
            item.update(
                student_accuracy=student,
                oracle_accuracy=oracle_acc,
                labeled_rows=n,
                gap_points=(oracle_acc - student) * 100,
                oracle_seconds=secs,
                teacher_versions=sorted({days[d]["teacher_version"] for d in judged if d in days}),
                champion_versions=sorted({days[d]["champion_version"] for d in judged if d in days}),
                pass_=(oracle_acc - student) <= ORACLE_POINTS + 1e-12,
            )
        item["pass"] = item.pop("pass_")
        per.append(item)
    decided = [p["pass"] for p in per if p["pass"] is not None]
    return {
        "bar": f"from {RECOVERY_AFTER_DAYS} days after each shift's onset, the champion student within "
        f"{ORACLE_POINTS * 100:.0f} points of an oracle teacher trained from scratch on {ORACLE_ROWS} labeled rows "
        "of that regime, on the same labeled traffic",
        "per_shift": per,
        "pass": all(decided) if decided else None,
    }


# --------------------------------------------------------------------------------------------- report
def fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def day_line(rec: dict[str, Any]) -> str:
    dr = rec["drift"]
    action = dr.get("action", "ERROR" if "error" in dr else "?")
    extra = ""
    if rec.get("recalibration"):
        rc = rec["recalibration"]
        extra += (
            f" | recal: {'ERROR ' + rc['error']['type'] if 'error' in rc else (rc.get('reason') or '')[:90]}"
            f" -> v{rc['champion_after']}"
        )
    if dr.get("recalibration"):
        rc = dr["recalibration"]
        extra += f" | drift-recal v{rc['version']} ({(rc.get('reason') or '')[:80]})"
    if dr.get("teacher_refresh"):
        rf = dr["teacher_refresh"]
        extra += (
            f" | REFRESH teacher {rf['outcome']} v{rf['parent_version']}->v{rf['teacher_version_after']} "
            f"{rf['seconds']:.0f}s student v{(rf.get('student') or {}).get('version')} "
            f"promoted={(rf.get('student') or {}).get('promoted')} ({(rf.get('reason') or '')[:80]})"
        )
        if rf.get("recalibration"):
            rc = rf["recalibration"]
            extra += f" | instead: recal v{rc['version']} ({(rc.get('reason') or '')[:70]})"
    if dr.get("retrain"):
        rt = dr["retrain"]
        extra += f" | RETRAIN v{rt['version']} promoted={rt['promoted']} ({(rt.get('gate_reason') or '')[:80]})"
    if "error" in dr:
        extra += f" | drift ERROR {dr['error']['type']}: {dr['error']['message'][:120]}"
    return (
        f"day {rec['day']:3d} {rec['date']} {rec['phase']:<7} v{rec['champion_version']:<3} "
        f"acc {fmt(rec.get('accuracy'))} teacher {fmt(rec.get('teacher_accuracy'))} ece {fmt(rec.get('ece'))} "
        f"| {dr.get('status', '-')}/{action} [{','.join(dr.get('exceeded', []))}] "
        f"{fmt(dr.get('seconds'), '.1f')}s -> v{rec.get('champion_after')}{extra}"
    )


def print_report(analysis: dict[str, Any], lc: Lifecycle) -> None:
    bars = analysis["bars"]
    print(f"\nStable-period mean champion accuracy (labeled rows, days 0-39): {fmt(analysis['stable_mean_accuracy'])}")
    print("\nMonthly ECE (labeled traffic as served):")
    for m in analysis["monthly"]:
        segs = "; ".join(
            f"v{s['version']} d{s['first_day']}-{s['last_day']} ECE {s['ece']:.4f} acc {s['accuracy']:.4f}"
            for s in m["by_version"]
        )
        print(
            f"  {m['month']}: ECE {m['ece']:.4f}, acc {m['accuracy']:.4f}, conf {m['mean_confidence']:.4f} "
            f"(after recalibration: {m['after_recalibration']}) [{segs}]"
        )
    print("\nRetrains:")
    for rt in lc.retrains:
        print(
            f"  window day {rt['window_day']} ({rt['via']}, teacher v{rt['teacher_version']}): v{rt['version']} "
            f"promoted={rt['promoted']} - {rt['gate_reason']}"
        )
    print("\nTeacher refreshes (cost: wall time per phase):")
    for rf in lc.refreshes:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in (rf.get("phases_seconds") or {}).items())
        print(
            f"  window day {rf['window_day']}: {rf['outcome']} v{rf['parent_version']} -> v{rf['version']} "
            f"(champion after: v{rf['teacher_version_after']}), {rf['seconds']:.1f} s [{phases}] - "
            f"{(rf.get('reason') or '')[:140]}"
        )
    print("\nRecalibrations asked for by a drift check (retrain cooling down):")
    for rc in lc.drift_recalibrations:
        print(
            f"  window day {rc['window_day']}: window {rc['window']}, {rc['labeled_rows']} labeled rows -> "
            f"v{rc['version']} promoted={rc['promoted']} - {(rc.get('reason') or '')[:140]}"
        )
    print("\nBars:")

    def verdict(p: Any) -> str:
        return "n/a " if p is None else ("PASS" if p else "FAIL")

    b = bars["no_retrain_stable"]
    print(
        f"  {verdict(b['pass'])}  no retrain days 0-39: retrain on {b['retrain_days'] or 'none'} "
        f"(drift status on {len(b['drift_status_days'])} of {b['days_covered']} days)"
    )
    for shift in SHIFTS:
        b = bars[f"detect_{shift}"]
        print(
            f"  {verdict(b['pass'])}  {shift} (onset {b['onset_day']}): cost day {b.get('cost_day')} (all-rows acc "
            f"{fmt(b.get('cost_day_accuracy'))} vs stable {fmt(b.get('stable_mean_accuracy_all_rows'))}), first drift "
            f"decision on window day {b.get('first_triggered_window_day')} ({b.get('first_triggered_action')}), "
            f"lag {b.get('lag_days')} {b.get('note', '')}"
        )
        other = b.get("other_readings")
        if other:
            print(
                f"        (other readings: cost day on labeled rows {other['cost_day_labeled_rows']}, lag "
                f"{other['lag_labeled_rows']}; on a trailing 3-day labeled mean {other['cost_day_3day_mean']}, lag "
                f"{other['lag_3day_mean']}; first retrain decision day {b.get('first_retrain_window_day')}, lag "
                f"{other['lag_first_retrain']}; {other['lag_from_onset']} days after the nominal onset)"
            )
    b = bars["no_teacher_refresh_stable"]
    print(f"  {verdict(b['pass'])}  no refresh_teacher days 0-39: on {b['refresh_teacher_days'] or 'none'}")
    b = bars["teacher_refresh_recovery"]
    print(f"  {verdict(b['pass'])}  champion student vs oracle teacher from onset + {RECOVERY_AFTER_DAYS} days:")
    for p in b["per_shift"]:
        print(
            f"        {p['shift']} days {p['days']}: student {fmt(p.get('student_accuracy'))} oracle "
            f"{fmt(p.get('oracle_accuracy'))} gap {fmt(p.get('gap_points'), '.2f')} pts (oracle trained in "
            f"{fmt(p.get('oracle_seconds'), '.0f')} s) -> {verdict(p['pass'])} {p.get('note', '')}"
        )
    b = bars["retrained_vs_teacher"]
    print(f"  {verdict(b['pass'])}  retrained student vs teacher:")
    for p in b["per_retrain"]:
        print(
            f"        retrain day {p['window_day']} ({p['via']}) v{p['version']} (promoted {p['promoted']}) "
            f"days {p['days']}: "
            f"student {fmt(p.get('student_accuracy'))} teacher {fmt(p.get('teacher_accuracy'))} "
            f"gap {fmt(p.get('gap_points'), '.2f')} pts -> {verdict(p['pass'])} {p.get('note', '')}"
        )
    b = bars["ece_after_recalibration"]
    print(
        f"  {verdict(b['pass'])}  ECE <= {MAX_ECE} after recalibration: "
        + ", ".join(f"{m['month']} {m['ece']:.4f} {verdict(m['pass'])}" for m in b["per_month"])
    )


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--days", type=int, default=120, help="simulated days (default 120)")
    p.add_argument(
        "--first-day",
        type=int,
        default=0,
        help="debugging only: begin the calendar at this day index (the bars need days 0-39)",
    )
    p.add_argument(
        "--start", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1), help="day 0 (default 2026-01-01)"
    )
    p.add_argument("--rows-per-day", type=int, default=2000, help="predictions per day (default 2000)")
    p.add_argument("--transfer-size", type=int, default=20_000, help="unlabeled transfer rows (default 20000)")
    p.add_argument("--shadow-fraction", type=float, default=0.1)
    p.add_argument("--label-fraction", type=float, default=0.25)
    p.add_argument("--label-delay-days", type=int, default=1, help="label arrival delay (simulate_traffic default 1)")
    p.add_argument(
        "--drift",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a drift-config key (a what-if; default: the packaged defaults)",
    )
    p.add_argument("--state", type=Path, default=None, help="state directory (default: a fresh temporary one)")
    p.add_argument(
        "--reuse-teacher",
        action="store_true",
        help="debugging: --state may hold an earlier run whose registered teacher is reused",
    )
    p.add_argument("--prefect-log-level", default="WARNING", help="PREFECT_LOGGING_LEVEL (default WARNING)")
    p.add_argument("--json", type=Path, default=None, help="write everything as JSON to this path")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.days < 1 or args.rows_per_day < 1 or args.transfer_size < 1 or args.first_day < 0:
        raise SystemExit("--days, --rows-per-day and --transfer-size must be positive, --first-day >= 0")
    state = (args.state or Path(tempfile.mkdtemp(prefix="kdflow-lifecycle-"))).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / "mlflow.db").exists() and not args.reuse_teacher:
        raise SystemExit(f"--state {state} already holds a run (mlflow.db); use a fresh directory")
    if (state / "logs").exists():
        raise SystemExit(f"--state {state} already holds inference logs; use a fresh directory")
    set_embedded_env(state, args.prefect_log_level)
    drift_overrides = parse_drift_overrides(args.drift)

    import torch  # noqa: F401  (after the environment)

    from kdflow.config import DistillConfig, load_config

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    load_start = load_avg()
    git = git_state()
    timer = Timer()
    tpath, dpath, dcfg_raw = write_configs(state, drift_overrides)
    dcfg = load_config(dpath, DistillConfig)
    print(
        f"kdflow lifecycle bench: {args.days} days from {args.start}, {args.rows_per_day} rows/day, transfer "
        f"{args.transfer_size}, state {state}; {os.cpu_count()} CPUs, load {load_start}",
        flush=True,
    )
    print(f"  drift config: {dcfg.drift.model_dump(mode='json')}", flush=True)
    if drift_overrides:
        print(f"  drift overrides (NOT the packaged defaults): {drift_overrides}", flush=True)

    from kdflow.generators import write_mnist1d

    timer.run("data", lambda: write_mnist1d(state / "data" / "mnist1d", transfer_size=args.transfer_size))
    print(f"  data written ({timer.seconds['data']:.1f} s)", flush=True)

    from flows.distill import distill_flow
    from flows.teacher import teacher_flow
    from kdflow import registry
    from tasks.logits import task_runner_for

    registry.configure_tracking(dcfg.mlflow.tracking_uri)
    existing = registry.alias_version(dcfg_raw["teacher_uri"].split("/")[-1].split("@")[0], "champion")
    if args.reuse_teacher and existing:
        teacher = {"version": existing, "test_accuracy": None, "reused": True}
        print(f"  teacher v{existing} reused from {state}", flush=True)
    else:
        teacher, _ = timer.run("teacher", lambda: teacher_flow(str(tpath)))
        print(
            f"  teacher v{teacher['version']} test accuracy {teacher['test_accuracy']:.4f} "
            f"({timer.seconds['teacher']:.1f} s)",
            flush=True,
        )
    first, _ = timer.run(
        "first_student", lambda: distill_flow.with_options(task_runner=task_runner_for(dcfg.store))(str(dpath))
    )
    reg = first.get("registration") or {}
    print(
        f"  first student v{reg.get('version')} test accuracy {first['evaluation']['student_accuracy']:.4f}, "
        f"gate {first['gate_passed']} ({timer.seconds['first_student']:.1f} s)",
        flush=True,
    )
    if not first.get("promotion"):
        raise SystemExit(
            f"the first student was not promoted ({first['decision']['reason']}); nothing to serve "
            f"(a larger --transfer-size helps)"
        )

    lc = Lifecycle(args, state, dpath, dcfg_raw, timer)
    completed, fatal = False, None
    try:
        for d in range(args.first_day, args.first_day + args.days):
            td = time.perf_counter()
            rec = lc.day(d)
            rec["seconds"] = time.perf_counter() - td
            lc.days.append(rec)
            print(day_line(rec) + f" ({rec['seconds']:.0f} s)", flush=True)
        completed = True
    except Exception as exc:  # outside the flows (they are caught per call): stop, keep what we have
        fatal = error_record(exc)
        print(
            f"FATAL on day {len(lc.days)}: {fatal['type']}: {fatal['message']}\n{fatal['traceback_tail']}", flush=True
        )
    analysis = compute_bars(lc, lc.days[-1]["day"] + 1 if lc.days else 0)
    total = time.perf_counter() - t0
    print_report(analysis, lc)
    print(
        f"\nWall time: {total:.1f} s; phases: "
        + ", ".join(f"{k} {v:.1f} s (x{timer.counts[k]})" for k, v in timer.seconds.items()),
        flush=True,
    )
    print(f"state kept in {state}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "kdflow lifecycle: drift checks, teacher refreshes, retrains and recalibrations over "
            "simulated days",
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "git": git,
            "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": load_avg()},
            "params": {
                "days": args.days,
                "first_day": args.first_day,
                "start": args.start.isoformat(),
                "rows_per_day": args.rows_per_day,
                "transfer_size": args.transfer_size,
                "shadow_fraction": args.shadow_fraction,
                "label_fraction": args.label_fraction,
                "label_delay_days": args.label_delay_days,
                "schedule": PRESET,
                "state": str(state),
            },
            "drift_overrides": drift_overrides,
            "config": {
                "drift": dcfg.drift.model_dump(mode="json"),
                "retrain": dcfg.retrain.model_dump(mode="json"),
                "recalibration": dcfg.recalibration.model_dump(mode="json"),
                "teacher_refresh": dcfg.teacher_refresh.model_dump(mode="json"),
                "sla": dcfg.sla.model_dump(mode="json"),
            },
            "teacher": {
                "version": teacher.get("version"),
                "test_accuracy": teacher.get("test_accuracy"),
                "reused": bool(teacher.get("reused")),
            },
            "first_student": {
                "version": reg.get("version"),
                "gate_passed": first.get("gate_passed"),
                "evaluation": first.get("evaluation"),
            },
            "completed": completed,
            "fatal": fatal,
            "days": lc.days,
            "recalibrations": lc.recalibrations,
            "drift_recalibrations": lc.drift_recalibrations,
            "retrains": lc.retrains,
            "teacher_refreshes": lc.refreshes,
            "stable_mean_accuracy": analysis["stable_mean_accuracy"],
            "monthly": analysis["monthly"],
            "bars": analysis["bars"],
            "all_bars_pass": all(b["pass"] is not False for b in analysis["bars"].values()),
            "seconds": {**timer.seconds, "total": total},
            "counts": timer.counts,
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
