"""Serving benchmark: `kdflow serve-model` on loopback against the bare forward pass and MLflow's own scoring
server (a benchmark script, not a test).

What it measures, on one registered champion student (`models:/<registry.student_name>@champion`):

1. Set-up. ``--state DIR``: a finished ``kdflow demo`` state (the folder holding ``mlflow.db``, ``data/``, ...,
   or the folder the demo ran in, with its ``.kdflow/``), or an empty folder: then it is built with the demo's
   own code path (MNIST-1D, ``teacher_flow``, ``distill_flow`` on the packaged configs with every path under
   DIR; ``--transfer-size`` rows). The champion must be a served artifact (:mod:`kdflow.artifact`, what the
   distill flow registers, with its ``kdflow.cascade_threshold`` fitted at registration); the registry is only
   read, never changed.
2. The limit: the bare forward pass of that artifact at batch 1, one test row per call (cycling), after a
   warm-up: ONNX Runtime (1 intra-op thread) on ``extra_files/model.onnx``, the ``pt2`` program
   (:func:`kdflow.artifact.load_served` ``torch``), and torch eager on the rebuilt ``CalibratedClassifier``
   (:func:`kdflow.artifact.load_calibrated`); torch with 1 thread, and the pt2 program again with torch's
   default thread count (what a server process inherits). Microseconds per call, p50/p95.
3. INT8: ONNX Runtime static quantization (``quant_pre_process``, then ``quantize_static``, QDQ, int8 weights
   and activations, MinMax calibration over ``--calibration-rows`` validation rows) of the ONNX copy: batch-1
   latency as in 2, test accuracy, ECE (15 bins), flip rate vs the teacher and the SLA gate
   (:func:`kdflow.sla.check_slas` with INT8's figures; size ratio as registered). Decision: ship INT8 only if
   its p50 is below FP32's AND it passes the gate. Not wired into serving.
4. The server: ``kdflow serve-model --config C --port P`` as a subprocess per configuration (student-only
   ONNX, student-only torch, cascade ONNX with the teacher and ``shadow_fraction`` 0.1 at the registered
   threshold, and the same with a threshold that defers ``--cascade-deferral`` of the validation rows to the
   teacher, given to that server as ``serving.cascade.threshold``), logs under a fresh ``logs.root`` each.
   For concurrency 1, 8 and 32: that many client threads, each with one persistent httpx connection, each sending ``--requests`` single-row ``POST /invocations`` (``{"inputs": [[...]]}``, rows of
   the test split), stopped at ``--time-budget`` seconds per level; client-side latency p50/p95/p99 and
   requests/s; beside them, the server's own latency (``latency_ms``) and teacher answers logged during the
   level. Then SIGTERM; the rows in the log partitions (:func:`kdflow.inference_logs.read_window`) must
   equal the accepted (HTTP 200) requests, warm-up included: the exit status is 1 if they differ.
5. Head to head: ``mlflow models serve -m models:/<student>@champion --env-manager local -w 1``
   (MLFLOW_TRACKING_URI = the state's SQLite) and ``kdflow serve-model`` (student ONNX) on the same champion,
   both up at once; ``--mlflow-requests`` rounds of one sequential request to each, alternating (the order
   flips every round), so both see the same machine load; p50/p95/p99 of each, and kdflow's log counted.

Goals (issue 12): our p50 at concurrency 1 <= 2 ms, and below MLflow's own server's (judged head to head).

Run (from the repository root)::

    .venv/bin/python bench/serving.py --state /tmp/kdflow-serving --out bench/results/serving.json
    .venv/bin/python bench/serving.py --state /tmp/kdflow-serving --quick --out /tmp/serving-smoke.json

The client, the server and the model share the CPU: on a 2-core machine the client's own time is part of
every latency, more so at concurrency 32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # flows/ and tasks/ are top-level packages of the repository
    sys.path.insert(0, str(REPO))

from _common import cpu_model, load_avg, write_json  # noqa: E402  (bench/ is on sys.path as the script's folder)

CONCURRENCY = (1, 8, 32)
GOAL_P50_MS = 2.0
N_BINS = 15
SHADOW_FRACTION = 0.1
ACTOR = "bench/serving.py"
JSON = "application/json"


# --------------------------------------------------------------------------------------------- pure helpers
def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., ...}`` of ``values`` (numpy's linear interpolation); None for an empty sample."""
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": (float(np.percentile(arr, q)) if arr.size else None) for q in qs}


@dataclass(frozen=True)
class LoadResult:
    """What the clients of one concurrency level saw: per-request latencies (ms) of accepted requests, the
    HTTP status counts (``"error"``: no response), and the wall time from the first send to the last answer."""

    concurrency: int
    latencies_ms: list[float]
    statuses: dict[str, int]
    wall_s: float
    budget_hit: bool

    def summary(self) -> dict[str, Any]:
        """Counts, requests/s (accepted requests over the wall time) and latency percentiles."""
        ok = self.statuses.get("200", 0)
        return {
            "concurrency": self.concurrency,
            "requests": sum(self.statuses.values()),
            "accepted": ok,
            "statuses": dict(sorted(self.statuses.items())),
            "wall_s": self.wall_s,
            "requests_per_s": ok / self.wall_s if self.wall_s > 0 else None,
            "budget_hit": self.budget_hit,
            **{f"{k}_ms": v for k, v in percentiles(self.latencies_ms).items()},
        }


def merge_counts(parts: Sequence[dict[str, int]]) -> dict[str, int]:
    """The sum of several status-count dictionaries."""
    out: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


def time_calls(fn: Callable[[np.ndarray], Any], rows: np.ndarray, calls: int, warmup: int) -> dict[str, Any]:
    """Microseconds per ``fn(row)`` call at batch 1 (rows cycled, each ``(1, d...)``), after ``warmup`` calls."""
    n = len(rows)
    for i in range(warmup):
        fn(rows[i % n : i % n + 1])
    times = np.empty(calls, dtype=np.float64)
    for i in range(calls):
        x = rows[i % n : i % n + 1]
        t0 = time.perf_counter_ns()
        fn(x)
        times[i] = (time.perf_counter_ns() - t0) / 1e3
    return {"calls": calls, **{f"{k}_us": v for k, v in percentiles(times, (50, 95)).items()}}


def log_check(accepted: int, logged: int) -> dict[str, Any]:
    """The logging invariant: every accepted request is one logged row, no more, no fewer."""
    return {"accepted": accepted, "logged": logged, "ok": accepted == logged}


# --------------------------------------------------------------------------------------------- set-up
def set_env(state: Path) -> None:
    """Prefect's ephemeral API and MLflow on the state's SQLite (before Prefect or MLflow is imported)."""
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    os.environ["PREFECT_HOME"] = str(state / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_state(arg: Path | None) -> Path:
    """The state folder: ``arg/.kdflow`` when ``arg`` is where ``kdflow demo`` ran, else ``arg`` (default: a
    new temporary folder)."""
    if arg is None:
        return Path(tempfile.mkdtemp(prefix="kdflow-serving-")).resolve()
    arg = arg.resolve()
    return arg / ".kdflow" if (arg / ".kdflow" / "mlflow.db").is_file() else arg


def write_configs(state: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The packaged demo configs with every path under ``state`` (the demo's layout: mlflow.db, mlartifacts,
    data/mnist1d, store, reports); returns both paths and the distill config as written."""
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
    out = state / "bench-serving"
    out.mkdir(parents=True, exist_ok=True)
    tpath, dpath = out / "teacher.yaml", out / "distill.yaml"
    tpath.write_text(yaml.safe_dump(teacher, sort_keys=False))
    dpath.write_text(yaml.safe_dump(distill, sort_keys=False))
    return tpath, dpath, distill


def build_champion(state: Path, tpath: Path, dpath: Path, transfer_size: int) -> dict[str, Any]:
    """What ``kdflow demo`` does, under ``state``: data (unless present), the teacher (unless one is champion),
    the student; returns what was done."""
    from flows.distill import distill_flow
    from flows.teacher import teacher_flow
    from kdflow import registry
    from kdflow.config import DistillConfig, TeacherConfig, load_config
    from kdflow.generators import write_mnist1d
    from tasks.logits import task_runner_for

    tcfg, dcfg = load_config(tpath, TeacherConfig), load_config(dpath, DistillConfig)
    done: dict[str, Any] = {}
    t0 = time.perf_counter()
    if not Path(dcfg.data.transfer).is_file():
        write_mnist1d(Path(dcfg.data.train).parent, transfer_size=transfer_size)
        done["data_s"] = time.perf_counter() - t0
    registry.configure(tcfg.mlflow.tracking_uri, tcfg.experiment, tcfg.mlflow.artifact_location)
    if registry.alias_version(tcfg.registry_name, tcfg.alias) is None:
        t0 = time.perf_counter()
        teacher = teacher_flow(str(tpath))
        done["teacher"] = {"version": teacher["version"], "test_accuracy": teacher["test_accuracy"]}
        done["teacher_s"] = time.perf_counter() - t0
        if not teacher["promoted"]:
            raise SystemExit(f"the teacher failed its gate ({teacher['reason']}); nothing to distil from")
    t0 = time.perf_counter()
    report = distill_flow.with_options(task_runner=task_runner_for(dcfg.store))(str(dpath))
    done["student_s"] = time.perf_counter() - t0
    done["student_gate_passed"] = report["gate_passed"]
    if not report.get("promotion"):
        raise SystemExit(f"the student was not promoted ({report['decision']['reason']}); nothing to serve")
    return done


@dataclass(frozen=True)
class Data:
    """The MNIST-1D splits the bench reads (features float32, labels int64)."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def read_split(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, d) float32 and labels of one labeled Parquet split in kdflow's layout (``x``, ``label``)."""
    import pandas as pd

    frame = pd.read_parquet(path)
    return np.stack(frame["x"].to_numpy()).astype(np.float32), frame["label"].to_numpy(dtype=np.int64)


def teacher_probs(teacher_uri: str, x: np.ndarray) -> np.ndarray:
    """The registered teacher's softmax probabilities on ``x``."""
    import torch

    from kdflow import registry

    model = registry.load_torch_model(registry.resolve(teacher_uri))
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=-1).numpy()


def served_champion(dcfg: Any) -> dict[str, Any]:
    """The champion student's name, version and model directory; it must be a served artifact (what the distill
    flow registers), with the cascade threshold fitted at registration (``kdflow.cascade_threshold``)."""
    from kdflow import registry
    from kdflow.artifact import is_served_artifact, model_dir

    name = dcfg.registry.student_name
    version = registry.champion_version(name)
    directory = model_dir(f"models:/{name}/{version}")
    if not is_served_artifact(directory):
        raise SystemExit(
            f"models:/{name}/{version} is not a served artifact (registered by an older kdflow): run `make demo` "
            "with this checkout, or pass --state of a state built by it"
        )
    tags = registry._client().get_model_version(name, version).tags
    return {"name": name, "version": version, "dir": str(directory),
            "cascade_threshold": tags.get("kdflow.cascade_threshold")}  # fmt: skip


def size_ratio(served_dir: Path, teacher_uri: str) -> float:
    """Student parameters / teacher parameters (the SLA's ``max_size_ratio`` figure)."""
    from kdflow import registry
    from kdflow.artifact import load_calibrated
    from kdflow.models import count_parameters

    student = load_calibrated(served_dir).model
    return count_parameters(student) / count_parameters(registry.load_torch_model(registry.resolve(teacher_uri)))


# --------------------------------------------------------------------------------------------- the limit
def ort_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_predict(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> probabilities`` through an ONNX Runtime session of a served artifact's graph."""
    from kdflow.artifact import INPUT_NAME, OUTPUT_NAME

    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def bare_forward(served_dir: Path, rows: np.ndarray, calls: int, warmup: int) -> dict[str, Any]:
    """Batch-1 µs per call of the ONNX copy (onnxruntime, 1 thread), the pt2 program and torch eager (torch with
    1 thread, and the pt2 program again with torch's default thread count, which a server inherits)."""
    import torch

    from kdflow.artifact import EXTRA_DIR, ONNX_FILE, load_calibrated, load_served

    default_threads = torch.get_num_threads()
    eager = load_calibrated(served_dir)
    pt2 = load_served(str(served_dir), "torch").predict

    def eager_fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return eager(torch.from_numpy(x)).numpy()

    runtimes = [
        ("onnxruntime", ort_predict(ort_session(served_dir / EXTRA_DIR / ONNX_FILE)), 1),
        ("pt2", pt2, 1),
        ("torch_eager", eager_fn, 1),
        (f"pt2 ({default_threads} torch threads)", pt2, default_threads),
    ]
    out = {}
    for name, fn, threads in runtimes:
        torch.set_num_threads(threads)
        out[name] = {**time_calls(fn, rows, calls, warmup), "threads": threads}
        print(f"  bare {name:24s} p50 {out[name]['p50_us']:8.1f} µs  p95 {out[name]['p95_us']:8.1f} µs", flush=True)
    torch.set_num_threads(default_threads)
    return out


# --------------------------------------------------------------------------------------------- INT8
class _Rows:
    """onnxruntime's ``CalibrationDataReader`` protocol over validation rows, in batches."""

    def __init__(self, x: np.ndarray, batch: int = 32):
        from kdflow.artifact import INPUT_NAME

        self._batches = iter([{INPUT_NAME: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out_dir: Path, calib: np.ndarray, activation: str) -> Path:
    """Static QDQ quantization of ``fp32`` (int8 weights per channel; ``activation`` "int8" or "uint8"),
    MinMax-calibrated on ``calib``, after ONNX Runtime's pre-processing (ONNX shape inference and graph
    optimisation; its symbolic shape pass is skipped: it fails on the exporter's Concat of the batch dimension)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_dir / "model.pre.onnx"
    if not pre.is_file():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # its symbolic pass fails on Concat
    reader = type("Reader", (_Rows, CalibrationDataReader), {})(calib)
    out = out_dir / f"model.int8-{activation}.onnx"
    quantize_static(
        str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
    )  # fmt: skip
    return out


def quality(probs: np.ndarray, y: np.ndarray, teacher: np.ndarray, p95_ms: float, ratio: float) -> dict[str, float]:
    """The SLA gate's figures of a set of test probabilities (names as in :class:`kdflow.evaluation.Evaluation`)."""
    from kdflow.calibration import expected_calibration_error
    from kdflow.metrics import flip_rate

    acc = float((probs.argmax(1) == y).mean())
    return {
        "student_accuracy": acc,
        "teacher_gap": float((teacher.argmax(1) == y).mean()) - acc,
        "student_ece": float(expected_calibration_error(probs, y, N_BINS)),
        "flip_rate": flip_rate(probs, teacher),
        "student_latency_p95_ms": p95_ms,
        "size_ratio": ratio,
    }


def int8_study(
    served_dir: Path, work: Path, data: Data, teacher_test: np.ndarray, sla: Any, ratio: float, args: Any
) -> dict[str, Any]:
    """FP32 vs INT8 (two activation types): batch-1 latency, test figures, SLA gate; the shipping decision."""
    from kdflow.artifact import EXTRA_DIR, ONNX_FILE
    from kdflow.sla import check_slas

    fp32 = served_dir / EXTRA_DIR / ONNX_FILE
    work.mkdir(parents=True, exist_ok=True)
    models = {"fp32": fp32}
    for act in ("int8", "uint8"):
        models[f"int8 (activations {act})"] = quantize(fp32, work, data.x_val[: args.calibration_rows], act)
    rows: dict[str, Any] = {}
    for name, path in models.items():
        predict = ort_predict(ort_session(path))
        timing = time_calls(predict, data.x_test, args.bare_calls, args.warmup)
        figures = quality(predict(data.x_test), data.y_test, teacher_test, timing["p95_us"] / 1e3, ratio)
        checks = check_slas(figures, sla)
        rows[name] = {
            **timing,
            **figures,
            "bytes": path.stat().st_size,
            "gate_passed": all(c.passed for c in checks),
            "gate_failures": [f"{c.name}: {c.value:.4g} {c.op} {c.threshold:g} fails" for c in checks if not c.passed],
        }
        r = rows[name]
        print(
            f"  {name:24s} p50 {r['p50_us']:7.1f} µs p95 {r['p95_us']:7.1f} µs  acc {r['student_accuracy']:.4f} "
            f"ECE {r['student_ece']:.4f} flip {r['flip_rate']:.4f}  gate {'PASS' if r['gate_passed'] else 'FAIL'}",
            flush=True,
        )
    base = rows["fp32"]["p50_us"]
    for name, r in rows.items():
        r["faster_than_fp32"] = name != "fp32" and r["p50_us"] < base
        r["ship"] = r["faster_than_fp32"] and r["gate_passed"]
    shipped = [n for n, r in rows.items() if r["ship"]]
    if shipped:
        verdict = f"ship {min(shipped, key=lambda n: rows[n]['p50_us'])}: faster than FP32 and passes the SLA gate"
    else:
        reasons = [f"{n}: {'faster' if r['faster_than_fp32'] else 'not faster'}, gate "
                   f"{'passed' if r['gate_passed'] else 'failed'}" for n, r in rows.items() if n != "fp32"]  # fmt: skip
        verdict = "keep FP32 (" + "; ".join(reasons) + ")"
    return {"calibration_rows": min(args.calibration_rows, len(data.x_val)), "models": rows, "decision": verdict}


# --------------------------------------------------------------------------------------------- the servers
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bodies(x: np.ndarray) -> list[bytes]:
    """One MLflow-protocol request body per row: ``{"inputs": [[...]]}`` (serialised once, outside the timing)."""
    return [json.dumps({"inputs": [row.tolist()]}).encode() for row in x]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Poll ``GET url`` until it answers 200; returns the seconds it took. Raises if the process exits first."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"no 200 from {url} within {timeout:.0f} s")


def load(url: str, payloads: list[bytes], concurrency: int, per_client: int, budget_s: float) -> LoadResult:
    """``concurrency`` threads, each with one persistent connection, each posting up to ``per_client`` bodies
    (client ``i`` starts at row ``i * per_client``) until ``budget_s`` seconds have passed."""
    import httpx

    lat: list[list[float]] = [[] for _ in range(concurrency)]
    counts: list[dict[str, int]] = [{} for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]
    hit = [False]

    def client(i: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"Content-Type": JSON}
        with httpx.Client(limits=limits, timeout=30.0) as http:
            start.wait()
            for k in range(per_client):
                if time.perf_counter() >= stop_at[0]:
                    hit[0] = True
                    break
                body = payloads[(i * per_client + k) % len(payloads)]
                t0 = time.perf_counter()
                try:
                    status = str(http.post(url, content=body, headers=headers).status_code)
                except httpx.HTTPError:
                    status = "error"
                if status == "200":
                    lat[i].append((time.perf_counter() - t0) * 1e3)
                counts[i][status] = counts[i].get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + budget_s
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return LoadResult(concurrency, [v for part in lat for v in part], merge_counts(counts), wall, hit[0])


def stop(proc: subprocess.Popen, group: bool, timeout: float = 60.0) -> int | None:
    """SIGTERM the process (its whole process group when ``group``); SIGKILL after ``timeout``. Its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()
        return None


def log_summary(frame: Any) -> dict[str, Any]:
    """Of logged rows (a :class:`~kdflow.inference_logs.LogWindow` frame): count, who answered, how many were
    shadow-scored, and the server-side latency the server recorded (``latency_ms``)."""
    if not len(frame):
        return {"rows": 0, "answered_by": {}, "shadow_scored": 0, "server_latency": percentiles([])}
    answered = frame["answered_by"].fillna("null").value_counts().to_dict()
    return {
        "rows": len(frame),
        "answered_by": {str(k): int(v) for k, v in answered.items()},
        "shadow_scored": int(frame["teacher_logits"].notna().sum()),
        "server_latency": {f"{k}_ms": v for k, v in percentiles(frame["latency_ms"].dropna().to_numpy()).items()},
    }


def read_logged(root: Path, since: dt.datetime) -> Any:
    """The rows logged under ``root`` since ``since`` (every date partition up to now), as a frame."""
    from kdflow.inference_logs import read_window

    now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    return read_window(str(root), since - dt.timedelta(minutes=1), now, require_all_partitions=False).frame


def between(frame: Any, start: dt.datetime, end: dt.datetime) -> Any:
    """The logged rows accepted in ``[start, end]`` (one concurrency level)."""
    if not len(frame):
        return frame
    return frame[(frame["timestamp"] >= start) & (frame["timestamp"] <= end)]


def answer_matches(response: dict[str, Any], expected: np.ndarray, atol: float = 1e-4) -> bool | None:
    """Whether a single-row answer's probabilities equal ``expected`` (the bare ONNX output); None when the
    teacher answered. ``predictions[0]`` is kdflow's ``{"probabilities": ..., "answered_by": ...}`` or MLflow's
    bare list."""
    first = response["predictions"][0]
    if isinstance(first, dict):
        if first.get("answered_by") == "teacher":
            return None
        first = first["probabilities"]
    return bool(np.allclose(np.asarray(first, dtype=np.float64), expected, atol=atol))


@dataclass(frozen=True)
class ServerCase:
    """One ``kdflow serve-model`` configuration."""

    label: str
    runtime: str
    cascade: bool
    threshold: float | None = None  # serving.cascade.threshold for this run (None: the version's registered one)


CASES = (
    ServerCase("student ONNX", "onnx", False),
    ServerCase("student torch", "torch", False),
    ServerCase("cascade ONNX (teacher, shadow 0.1)", "onnx", True),
)


def deferral_threshold(val_probs: np.ndarray, deferral: float) -> float:
    """The confidence threshold below which a share ``deferral`` of the validation rows falls (the teacher's
    share under :func:`kdflow.selective.route`: the student answers when ``max p >= threshold``)."""
    return float(np.quantile(val_probs.max(axis=1), deferral))


def server_config(distill: dict[str, Any], case: ServerCase, work: Path, port: int) -> Path:
    """The distill config with ``logs.root`` and a ``serving`` section for ``case`` under ``work``."""
    import yaml

    cfg = dict(distill)
    cfg["logs"] = {"root": str(work / "logs")}
    serving = {"port": port, "runtime": case.runtime, "spill_dir": str(work / "spill"), "poll_seconds": 3600.0}
    if case.cascade:
        cascade = {"enabled": True} | ({} if case.threshold is None else {"threshold": case.threshold})
        serving |= {"teacher": distill["teacher_uri"], "shadow_fraction": SHADOW_FRACTION, "cascade": cascade}
    else:
        serving |= {"shadow_fraction": 0.0, "cascade": {"enabled": False}}
    cfg["serving"] = serving
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (the server runs this checkout's code) and this
    interpreter's bin/ first on PATH (``mlflow models serve`` starts ``uvicorn`` by name)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *filter(None, [env.get("PATH")])])
    return env | (extra or {})


def start_kdflow(case: ServerCase, distill: dict[str, Any], work: Path) -> tuple[subprocess.Popen, str]:
    """``kdflow serve-model`` for ``case`` (this checkout's code) on a free port; the process and its base URL."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = server_config(distill, case, work, port)
    with open(work / "server.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve-model", "--config", str(config), "--port", str(port)],
            cwd=work, env=child_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def start_mlflow(name: str, tracking_uri: str, work: Path) -> tuple[subprocess.Popen, str, str]:
    """``mlflow models serve`` (local environment, one uvicorn worker) of ``name@champion`` in its own process
    group on a free port; the process, its base URL and the command."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    with open(work / "server.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=child_env({"MLFLOW_TRACKING_URI": tracking_uri}), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", " ".join(["mlflow", *cmd[1:]])


def first_answer(base: str, payload: bytes, expected: np.ndarray) -> tuple[bool, bool | None]:
    """One request: whether it was accepted, and whether its answer equals the bare ONNX output."""
    import httpx

    first = httpx.post(f"{base}/invocations", content=payload, headers={"Content-Type": JSON}, timeout=30.0)
    return first.status_code == 200, first.status_code == 200 and answer_matches(first.json(), expected)


def logged_vs_accepted(work: Path, since: dt.datetime, accepted: int, result: dict[str, Any]) -> None:
    """Read the server's log and record it, the per-level server view and the invariant on ``result``."""
    frame = read_logged(work / "logs", since)
    logged = log_summary(frame)
    result["log"] = {**log_check(accepted, logged["rows"]), **logged}
    for level in result.get("levels", []):  # what the server itself saw during each level
        level["server_log"] = log_summary(between(frame, level.pop("utc_start"), level.pop("utc_end")))


def run_server(case: ServerCase, distill: dict[str, Any], work: Path, payloads: list[bytes], args: Any,
               expected: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Start ``kdflow serve-model`` for ``case``, warm it up, load it at each concurrency, SIGTERM it and count
    its logged rows against the accepted requests."""
    since = dt.datetime.now(dt.timezone.utc)
    proc, base = start_kdflow(case, distill, work)
    result: dict[str, Any] = {"runtime": case.runtime, "cascade": case.cascade, "threshold": case.threshold}
    accepted = 0
    try:
        result["ready_s"] = wait_ready(f"{base}/ping", proc, args.ready_timeout)
        ok, result["matches_bare_onnx"] = first_answer(base, payloads[0], expected[0])
        warm = load(f"{base}/invocations", payloads, 1, args.warmup, args.time_budget)
        accepted = warm.statuses.get("200", 0) + ok
        levels = []
        for c in CONCURRENCY:
            t0 = dt.datetime.now(dt.timezone.utc)
            res = load(f"{base}/invocations", payloads, c, args.requests, args.time_budget)
            levels.append({**res.summary(), "utc_start": t0, "utc_end": dt.datetime.now(dt.timezone.utc)})
            accepted += res.statuses.get("200", 0)
            s = levels[-1]
            print(
                f"  {case.label:36s} c={c:2d}: {s['accepted']:5d} ok, {s['requests_per_s']:7.1f} req/s, p50 "
                f"{s['p50_ms']:6.2f} p95 {s['p95_ms']:6.2f} p99 {s['p99_ms']:6.2f} ms",
                flush=True,
            )
        result["levels"] = levels
    finally:
        result["exit_status"] = stop(proc, group=False)
    logged_vs_accepted(work, since, accepted, result)
    print(f"  {case.label:36s} accepted {accepted}, logged {result['log']['logged']}, exit {result['exit_status']}")
    return result


def alternate(urls: Sequence[str], payloads: list[bytes], n: int, budget_s: float) -> list[LoadResult]:
    """``n`` rounds of one request to each URL in turn (the order flips every round), one persistent connection
    each, until ``budget_s``: both servers see the same machine load. One :class:`LoadResult` per URL."""
    import httpx

    lat: list[list[float]] = [[] for _ in urls]
    counts: list[dict[str, int]] = [{} for _ in urls]
    clients = [httpx.Client(limits=httpx.Limits(max_connections=1), timeout=30.0) for _ in urls]
    t_start = time.perf_counter()
    rounds = 0
    try:
        for i in range(n):
            if time.perf_counter() - t_start >= budget_s:
                break
            rounds += 1
            for j in range(len(urls)) if i % 2 == 0 else reversed(range(len(urls))):
                t0 = time.perf_counter()
                try:
                    status = str(clients[j].post(urls[j], content=payloads[i % len(payloads)],
                                                 headers={"Content-Type": JSON}).status_code)  # fmt: skip
                except httpx.HTTPError:
                    status = "error"
                if status == "200":
                    lat[j].append((time.perf_counter() - t0) * 1e3)
                counts[j][status] = counts[j].get(status, 0) + 1
    finally:
        for c in clients:
            c.close()
    wall = time.perf_counter() - t_start
    return [LoadResult(1, lat[j], counts[j], wall, rounds < n) for j in range(len(urls))]


def head_to_head(name: str, tracking_uri: str, distill: dict[str, Any], work: Path, payloads: list[bytes],
                 args: Any, expected: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """MLflow's own scoring server and ``kdflow serve-model`` (student ONNX) on the same champion, up side by
    side, ``--mlflow-requests`` alternating sequential requests; then both SIGTERMed and kdflow's log counted."""
    since = dt.datetime.now(dt.timezone.utc)
    ml_proc, ml_base, cmd = start_mlflow(name, tracking_uri, work / "mlflow")
    kd_proc, kd_base = start_kdflow(CASES[0], distill, work / "kdflow")
    result: dict[str, Any] = {"mlflow_command": cmd}
    accepted = 0
    try:
        result["mlflow_ready_s"] = wait_ready(f"{ml_base}/ping", ml_proc, args.ready_timeout)
        result["kdflow_ready_s"] = wait_ready(f"{kd_base}/ping", kd_proc, args.ready_timeout)
        _, result["mlflow_matches_bare_onnx"] = first_answer(ml_base, payloads[0], expected[0])
        ok, result["kdflow_matches_bare_onnx"] = first_answer(kd_base, payloads[0], expected[0])
        urls = [f"{ml_base}/invocations", f"{kd_base}/invocations"]
        warm = alternate(urls, payloads, args.warmup, args.time_budget)
        ml, kd = alternate(urls, payloads, args.mlflow_requests, args.time_budget * 2)
        accepted = ok + warm[1].statuses.get("200", 0) + kd.statuses.get("200", 0)
        for key, res in (("mlflow", ml), ("kdflow", kd)):
            result[key] = {k: v for k, v in res.summary().items() if k not in ("requests_per_s", "wall_s")}
    finally:
        result["kdflow_exit_status"] = stop(kd_proc, group=False)
        result["mlflow_exit_status"] = stop(ml_proc, group=True)
    logged_vs_accepted(work / "kdflow", since, accepted, result)
    ml, kd = result["mlflow"], result["kdflow"]
    print(f"  head to head, alternating, c=1: mlflow p50 {ml['p50_ms']:.2f} p95 {ml['p95_ms']:.2f} ms; kdflow "
          f"p50 {kd['p50_ms']:.2f} p95 {kd['p95_ms']:.2f} ms; kdflow accepted {accepted}, logged "
          f"{result['log']['logged']}", flush=True)  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------- report
def verdicts(servers: dict[str, Any], h2h: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's goals: p50 at concurrency 1 <= 2 ms (each configuration, and kdflow in the head-to-head),
    below MLflow's own server's (head-to-head: the same load on both); and logged rows == accepted requests."""
    goal = f"p50_c1_le_{GOAL_P50_MS:g}ms"
    out: dict[str, Any] = {}
    for label, res in servers.items():
        c1 = next((lv for lv in res.get("levels", []) if lv["concurrency"] == 1), None)
        p50 = c1["p50_ms"] if c1 else None
        out[label] = {"p50_c1_ms": p50, goal: p50 is not None and p50 <= GOAL_P50_MS,
                      "logged_equals_accepted": bool(res.get("log", {}).get("ok"))}  # fmt: skip
    if h2h is None or "error" in h2h:
        out["head to head"] = {"p50_c1_ms": None, goal: False, "below_mlflow": False, "logged_equals_accepted": False}
    else:
        p50, ml = h2h["kdflow"]["p50_ms"], h2h["mlflow"]["p50_ms"]
        out["head to head"] = {"p50_c1_ms": p50, "mlflow_p50_c1_ms": ml, goal: p50 <= GOAL_P50_MS,
                               "below_mlflow": p50 < ml, "logged_equals_accepted": bool(h2h["log"]["ok"])}  # fmt: skip
    return out


def print_tables(bare: dict[str, Any], int8: dict[str, Any], servers: dict[str, Any], h2h: Any) -> None:
    """The figures as Markdown tables (as BENCHMARKS.md records them)."""
    print("\n| bare forward, batch 1 | p50 µs | p95 µs |\n|---|---:|---:|")
    for name, r in bare.items():
        print(f"| {name} | {r['p50_us']:.1f} | {r['p95_us']:.1f} |")
    print(
        "\n| ONNX model | p50 µs | p95 µs | test acc | ECE | flip rate | SLA gate | ship |\n|---|---:|---:|---:|---:|---:|---|---|"
    )
    for name, r in int8["models"].items():
        print(f"| {name} | {r['p50_us']:.1f} | {r['p95_us']:.1f} | {r['student_accuracy']:.4f} | {r['student_ece']:.4f} "
              f"| {r['flip_rate']:.4f} | {'PASS' if r['gate_passed'] else 'FAIL'} | {'yes' if r['ship'] else 'no'} |")  # fmt: skip
    print(f"\nINT8 decision: {int8['decision']}")
    print("\n| server | clients | accepted | req/s | p50 ms | p95 ms | p99 ms | server p50 / p95 ms | teacher answers |"
          "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for label, res in servers.items():
        for lv in res.get("levels", []):
            sv = lv.get("server_log", {})
            lat, teacher = sv.get("server_latency", {}), sv.get("answered_by", {}).get("teacher", 0)
            server = f"{lat['p50_ms']:.2f} / {lat['p95_ms']:.2f}" if lat.get("p50_ms") is not None else "-"
            print(f"| {label} | {lv['concurrency']} | {lv['accepted']} | {lv['requests_per_s']:.0f} | {lv['p50_ms']:.2f} "
                  f"| {lv['p95_ms']:.2f} | {lv['p99_ms']:.2f} | {server} | {teacher} |")  # fmt: skip
    if h2h and "error" not in h2h:
        print("\n| head to head, alternating requests, 1 client each | requests | p50 ms | p95 ms | p99 ms |"
              "\n|---|---:|---:|---:|---:|")  # fmt: skip
        for key, label in (("mlflow", "mlflow models serve (pt2)"), ("kdflow", "kdflow serve-model (student ONNX)")):
            r = h2h[key]
            print(f"| {label} | {r['accepted']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} |")
    print("\n| server | accepted (200) | logged rows | equal |\n|---|---:|---:|---|")
    for label, res in [*servers.items(), *([("head to head (kdflow)", h2h)] if h2h and "log" in h2h else [])]:
        lg = res.get("log", {})
        print(f"| {label} | {lg.get('accepted')} | {lg.get('logged')} | {'yes' if lg.get('ok') else 'NO'} |")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--state", type=Path, default=None, help="demo state folder (built there when empty; default: "
                   "a new temporary folder)")  # fmt: skip
    p.add_argument("--requests", type=int, default=None, help="requests per client per level (default 400; quick 40)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per level (default 30; quick 5)")
    p.add_argument("--mlflow-requests", type=int, default=None, help="MLflow server requests (default 200; quick 40)")
    p.add_argument("--bare-calls", type=int, default=None, help="timed calls per runtime (default 3000; quick 300)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls/requests first (default 50; quick 10)")
    p.add_argument("--calibration-rows", type=int, default=500, help="validation rows for INT8 calibration")
    p.add_argument("--transfer-size", type=int, default=20_000, help="transfer rows when building a state")
    p.add_argument("--ready-timeout", type=float, default=240.0, help="seconds a server may take to answer /ping")
    p.add_argument("--cascade-deferral", type=float, default=0.1, help="also run the cascade with a threshold that "
                   "defers this share of the validation rows to the teacher (default 0.1; 0: skip)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON to this path")
    args = p.parse_args(argv)
    defaults = {"requests": (400, 40), "time_budget": (30.0, 5.0), "mlflow_requests": (200, 40),
                "bare_calls": (3000, 300), "warmup": (50, 10)}  # fmt: skip
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if min(args.requests, args.mlflow_requests, args.bare_calls, args.warmup, args.calibration_rows) < 1:
        raise SystemExit("--requests, --mlflow-requests, --bare-calls, --warmup, --calibration-rows must be >= 1")
    if args.time_budget <= 0 or not 0 <= args.cascade_deferral < 1:
        raise SystemExit("--time-budget must be positive and --cascade-deferral in [0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    load_start = load_avg()
    state = resolve_state(args.state)
    state.mkdir(parents=True, exist_ok=True)
    set_env(state)
    from kdflow import registry
    from kdflow.config import DistillConfig, load_config

    tpath, dpath, distill = write_configs(state)
    dcfg = load_config(dpath, DistillConfig)
    registry.configure_tracking(dcfg.mlflow.tracking_uri)
    print(f"kdflow serving bench: state {state}; {os.cpu_count()} CPUs, load {load_start}", flush=True)
    built = None
    if registry.alias_version(dcfg.registry.student_name, "champion") is None:
        print("  no champion student: building one with the demo's code path", flush=True)
        built = build_champion(state, tpath, dpath, args.transfer_size)
    x_val, y_val = read_split(dcfg.data.val)
    x_test, y_test = read_split(dcfg.data.test)
    data = Data(x_val, y_val, x_test, y_test)
    champion = served_champion(dcfg)
    served_dir = Path(champion["dir"])
    print(f"  champion models:/{champion['name']}/{champion['version']} ({served_dir})", flush=True)
    teacher_test = teacher_probs(dcfg.teacher_uri, x_test)
    ratio = size_ratio(served_dir, dcfg.teacher_uri)

    bare = bare_forward(served_dir, x_test, args.bare_calls, args.warmup)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=state / "bench-serving"))
    int8 = int8_study(served_dir, work / "int8", data, teacher_test, dcfg.sla, ratio, args)

    from kdflow.artifact import EXTRA_DIR, ONNX_FILE

    expected = ort_predict(ort_session(served_dir / EXTRA_DIR / ONNX_FILE))(x_test[:1])
    payloads = bodies(x_test)
    servers: dict[str, Any] = {}
    cases = list(CASES)
    if args.cascade_deferral > 0:
        val_probs = ort_predict(ort_session(served_dir / EXTRA_DIR / ONNX_FILE))(x_val)
        threshold = deferral_threshold(val_probs, args.cascade_deferral)
        label = f"cascade ONNX, threshold {threshold:.3f} ({args.cascade_deferral:.0%} of val deferred)"
        cases.append(ServerCase(label, "onnx", True, threshold))
    for i, case in enumerate(cases):
        try:
            servers[case.label] = run_server(case, distill, work / f"server-{i}", payloads, args, expected)
        except Exception as exc:  # recorded; the log check below then fails the run
            servers[case.label] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {case.label}: FAILED {type(exc).__name__}: {exc} (see {work / f'server-{i}' / 'server.log'})")
    try:
        h2h = head_to_head(champion["name"], registry.absolute_db_uri(dcfg.mlflow.tracking_uri), distill,
                           work / "head-to-head", payloads, args, expected)  # fmt: skip
    except Exception as exc:
        h2h = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  head to head: FAILED {exc} (see {work / 'head-to-head'}/*/server.log)")
    judged = verdicts(servers, h2h)
    print_tables(bare, int8, {k: v for k, v in servers.items() if "error" not in v}, h2h)
    print("\nGoals (concurrency 1):")
    for label, v in judged.items():
        print(f"  {label}: " + ", ".join(f"{k} {v[k]}" for k in v))
    logs_ok = all(v["logged_equals_accepted"] for v in judged.values())
    if args.out:
        import onnxruntime
        import torch

        write_json(args.out, {
            "benchmark": "kdflow serve-model vs the bare forward pass and mlflow models serve (loopback)",
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "load_average_start": load_start, "load_average_end": load_avg()},
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "state": str(state), "work": str(work), "built": built, "champion": champion,
            "bare_forward": bare, "int8": int8, "servers": servers, "head_to_head": h2h, "verdicts": judged,
            "logged_equals_accepted": logs_ok,
        })  # fmt: skip
    if not logs_ok:
        print("FAIL: a server's logged rows differ from its accepted requests (or a server failed)", flush=True)
    return 0 if logs_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
