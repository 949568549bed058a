"""infra/: the shipped configs validate and say what the deployments and the stack rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kdflow.config import DistillConfig, TeacherConfig, load_config
from tests.conftest import PG_HOST, PG_PORT, drop_database, free_port, postgres_answers
from tests.test_deployments import BIN, client_env, explained, prefect_server, start_process, wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def s3_uris(cfg: DistillConfig | TeacherConfig) -> list[str]:
    """Every ``s3://`` location a config names (data, logit store, inference logs)."""
    found = []
    for value in (*cfg.data.model_dump().values(), cfg.store.root, getattr(getattr(cfg, "logs", None), "root", None)):
        if isinstance(value, str) and value.startswith("s3://"):
            found.append(value)
    return found


@pytest.mark.parametrize(
    "name, model",
    [
        ("kdflow-production.yaml", DistillConfig),
        ("kdflow-production-teacher.yaml", TeacherConfig),
        ("kdflow-stack.yaml", DistillConfig),
        ("kdflow-stack-teacher.yaml", TeacherConfig),
    ],
)
def test_infra_configs_validate_against_the_tracking_server(name, model):
    """Each shipped config loads strictly and tracks to the MLflow server, artifacts through it (not SQLite)."""
    cfg = load_config(INFRA / name, model)
    assert cfg.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.mlflow.artifact_location is None  # the server's --artifacts-destination decides


def test_production_config_keeps_data_and_stores_on_s3():
    """Production: data, logit store and inference logs on S3 (any worker machine reaches them); the teacher it
    distils is the one the production teacher config registers, with checkpoints in the same bucket."""
    cfg = load_config(INFRA / "kdflow-production.yaml", DistillConfig)
    teacher = load_config(INFRA / "kdflow-production-teacher.yaml", TeacherConfig)
    assert cfg.store.root.startswith("s3://") and cfg.logs.root.startswith("s3://")
    assert all(v.startswith("s3://") for v in (cfg.data.train, cfg.data.val, cfg.data.test, cfg.data.transfer))
    assert cfg.store.endpoint_url is None and cfg.logs.endpoint_url is None  # AWS_ENDPOINT_URL_S3 or AWS itself
    assert cfg.teacher_uri == f"models:/{teacher.registry_name}@{teacher.alias}"
    assert teacher.store.root == cfg.store.root and teacher.data.train == cfg.data.train


def test_stack_config_keeps_everything_on_local_disk():
    """The single-machine stack config: no S3 anywhere, stores under .kdflow/stack/ (kept across restarts)."""
    cfg = load_config(INFRA / "kdflow-stack.yaml", DistillConfig)
    assert s3_uris(cfg) == [] and s3_uris(load_config(INFRA / "kdflow-stack-teacher.yaml", TeacherConfig)) == []
    assert cfg.store.root.startswith(".kdflow/stack/") and cfg.logs.root.startswith(".kdflow/stack/")


def test_the_demo_config_stays_embedded():
    """`make demo`, `kdflow distill` and `kdflow serve` examples keep the embedded SQLite default."""
    cfg = load_config(REPO / "kdflow" / "configs" / "mnist1d_distill.yaml", DistillConfig)
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and not s3_uris(cfg)


SLEEPY_FLOW = """
import time
from prefect import flow

@flow(name="sleepy")
def sleepy(seconds: int = 600) -> None:
    print("sleeping", flush=True)
    time.sleep(seconds)
"""

DEPLOY_AND_RUN = """
import sys
from prefect import flow
from prefect.deployments import run_deployment

flow.from_source(sys.argv[1], "sleepy.py:sleepy").deploy("sleepy", work_pool_name="kdflow-pool", build=False, push=False)
print(run_deployment("sleepy/sleepy", timeout=0).id)
"""


@pytest.mark.slow
def test_worker_stops_within_seconds_of_sigterm(prefect_server, tmp_path):  # noqa: F811 (the imported fixture)
    """infra/worker.sh's worker, running a flow on a real server, exits within seconds of one SIGTERM to the pid
    worker.sh exec'd (`prefect worker start` polled on until killed), and the run it was executing ends Crashed
    (its process got SIGTERM and reported it) instead of staying Running with nobody behind it."""
    from prefect.client.orchestration import SyncPrefectClient

    env = client_env(prefect_server.api_url, tmp_path / "prefect-home")
    env.update(KDFLOW_DEPLOY="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    worker = start_process("worker.sh", ["bash", str(INFRA / "worker.sh")], tmp_path / "worker.log", env, REPO)
    try:
        with explained(worker, prefect_server.process):
            wait_for("the worker to start", lambda: "started!" in worker.log.read_text(), 120, worker)
            source = tmp_path / "flow-source"
            source.mkdir()
            (source / "sleepy.py").write_text(SLEEPY_FLOW)
            deployed = subprocess.run(
                [str(BIN / "python"), "-c", DEPLOY_AND_RUN, str(source)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert deployed.returncode == 0, deployed.stderr[-3000:]
            run_id = deployed.stdout.strip().splitlines()[-1]
            wait_for("the flow run to start", lambda: "sleeping" in worker.log.read_text(), 180, worker)
            sent = time.monotonic()
            os.kill(worker.popen.pid, signal.SIGTERM)  # the pid itself, as a supervisor would: not the group
            code = worker.popen.wait(timeout=10)
            waited = time.monotonic() - sent
            with SyncPrefectClient(prefect_server.api_url) as client:
                run = client.read_flow_run(run_id)
        assert "stopped on a signal" in worker.log.read_text(), worker.tail()
        assert run.state.is_crashed() and "termination signal" in (run.state.message or ""), run.state
        print(f"worker exited {code} {waited:.1f} s after SIGTERM; its run: {run.state.name}")
    finally:
        worker.stop(grace_s=1)


def stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of infra/start-stack.sh / stop-stack.sh for a private stack: its own directory, free ports,
    Prefect on SQLite, no S3 unless ``extra`` says so."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_", "MLFLOW_", "KDFLOW_")) and k != "AWS_ENDPOINT_URL_S3"
    }
    env.update(
        KDFLOW_PREFECT_DB="sqlite",
        PREFECT_PORT=str(free_port()),
        KDFLOW_MLFLOW_PORT=str(free_port()),
        KDFLOW_MLFLOW_WORKERS="1",
        KDFLOW_STACK_DIR=str(tmp_path / "stack"),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )
    return env


def stack(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run infra/<script> (start-stack.sh or stop-stack.sh) to completion; fail with its output if it fails."""
    done = subprocess.run(["bash", str(INFRA / script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    logs = "".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in Path(env["KDFLOW_STACK_DIR"]).glob("*.log"))
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}\n{logs}"
    return done


def exported(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines start-stack.sh prints, as a dict."""
    lines = [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("export ")]
    return dict(item.split("=", 1) for line in lines for item in line.split())


@pytest.mark.slow
def test_local_stack_keeps_models_and_artifacts_across_a_restart(tmp_path):
    """start-stack.sh without S3: a model logged and registered through the MLflow server is still there, files
    and all, after stop-stack.sh and a second start (artifacts on disk under the stack directory, not in moto)."""
    import numpy as np
    import torch
    from torch import nn

    from kdflow import registry

    if not postgres_answers():
        reason = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}: stack restart test skipped"
        print(reason)
        pytest.skip(reason)
    db = f"kdflow_stack_{uuid.uuid4().hex[:10]}"
    env = stack_env(tmp_path, MLFLOW_BACKEND_STORE_URI=f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{db}")
    try:
        started = stack("start-stack.sh", env)
        url = exported(started.stdout)["MLFLOW_TRACKING_URI"]
        assert url == f"http://127.0.0.1:{env['KDFLOW_MLFLOW_PORT']}" and "AWS_ENDPOINT_URL_S3" not in started.stdout
        registry.configure(url, "kdflow-stack-restart", None)
        model = nn.Linear(4, 2)
        import mlflow

        with mlflow.start_run():
            registry.log_torch_model(model, np.zeros((2, 4), np.float32), "stack-student")
        artifacts = Path(env["KDFLOW_STACK_DIR"]) / "mlartifacts"
        assert any(p.name == "MLmodel" for p in artifacts.rglob("*")), "no model files under the stack directory"

        stack("stop-stack.sh", env)
        assert not list(Path(env["KDFLOW_STACK_DIR"]).glob("*.pid"))
        stack("start-stack.sh", env)
        loaded = registry.load_torch_model(registry.resolve("models:/stack-student/1"))
        x = torch.randn(3, 4)
        torch.testing.assert_close(loaded(x), model(x))
    finally:
        subprocess.run(["bash", str(INFRA / "stop-stack.sh")], env=env, capture_output=True, timeout=120)
        drop_database(db)


@pytest.mark.slow
def test_stack_creates_every_bucket_the_configs_name(tmp_path, s3_endpoint):
    """start-stack.sh with KDFLOW_S3_ENDPOINT_URL: MLflow's bucket and the production configs' data, store and
    logs buckets exist afterwards; it prints the endpoint for the flows and never the secret key."""
    import boto3

    secret = "kdflow-stack-secret-" + uuid.uuid4().hex[:8]
    env = stack_env(
        tmp_path,
        KDFLOW_S3_ENDPOINT_URL=s3_endpoint,
        KDFLOW_START_MLFLOW="0",
        AWS_ACCESS_KEY_ID="kdflow-test",
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        started = stack("start-stack.sh", env)
    finally:
        subprocess.run(["bash", str(INFRA / "stop-stack.sh")], env=env, capture_output=True, timeout=120)
    buckets = {b["Name"] for b in boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]}
    assert {"kdflow-mlflow", "kdflow-data", "kdflow-store", "kdflow-logs"} <= buckets
    assert exported(started.stdout)["AWS_ENDPOINT_URL_S3"] == s3_endpoint
    printed = started.stdout + started.stderr + "".join(p.read_text() for p in (tmp_path / "stack").glob("*.log"))
    assert secret not in printed


def test_stack_refuses_the_in_memory_s3(tmp_path):
    """KDFLOW_LOCAL_S3=1 (moto, lost on restart) is refused with one message and exit 2, before anything starts."""
    done = subprocess.run(
        ["bash", str(INFRA / "start-stack.sh")],
        cwd=REPO,
        env=stack_env(tmp_path, KDFLOW_LOCAL_S3="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "KDFLOW_LOCAL_S3 is gone" in done.stderr
    assert not list((tmp_path / "stack").glob("*.pid"))


PROBE_FLOW = """
from prefect import flow, task

@task
def add(a: int, b: int) -> int:
    return a + b

@flow(name="auth-probe")
def probe(x: int) -> int:
    return add(x, 1)

print("result", probe(41))
"""


def api_post(url: str, body: dict, auth: str | None = None) -> tuple[int, object]:
    """POST JSON to a Prefect API route, with HTTP basic auth when ``auth`` is given: (status, parsed body)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.slow
def test_stack_prefect_api_refuses_requests_without_the_auth_string(tmp_path):
    """PREFECT_SERVER_API_AUTH_STRING on the stack: an unauthenticated API request gets 401 and a flow without
    credentials fails; with PREFECT_API_AUTH_STRING the flow runs to COMPLETED on the server. Nothing prints it."""
    auth = "kdflow:" + uuid.uuid4().hex
    env = stack_env(tmp_path, KDFLOW_START_MLFLOW="0", PREFECT_SERVER_API_AUTH_STRING=auth)
    try:
        started = stack("start-stack.sh", env)
        api = exported(started.stdout)["PREFECT_API_URL"]
        assert api_post(f"{api}/flows/filter", {})[0] == 401
        assert api_post(f"{api}/flows/filter", {}, "kdflow:wrong")[0] == 401
        client = {k: v for k, v in env.items() if not k.startswith("PREFECT_SERVER_")}
        client.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client-home"))
        script = tmp_path / "probe.py"
        script.write_text(PROBE_FLOW)

        def run_probe(extra: dict[str, str]) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(BIN / "python"), str(script)], env={**client, **extra}, capture_output=True, text=True, timeout=300
            )

        refused = run_probe({})
        assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
        ran = run_probe({"PREFECT_API_AUTH_STRING": auth})
        assert ran.returncode == 0 and "result 42" in ran.stdout, ran.stderr[-3000:]
        status, runs = api_post(f"{api}/flow_runs/filter", {}, auth)
        assert status == 200 and [r["state_type"] for r in runs] == ["COMPLETED"]
        printed = started.stdout + started.stderr + "".join(p.read_text() for p in (tmp_path / "stack").glob("*.log"))
        assert auth not in printed and "PREFECT_API_AUTH_STRING" in started.stderr
    finally:
        subprocess.run(["bash", str(INFRA / "stop-stack.sh")], env=env, capture_output=True, timeout=120)


def test_worker_command_needs_a_server(monkeypatch):
    """`kdflow worker` without PREFECT_API_URL: one line saying so, exit 2 (the embedded API has no work pools)."""
    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2 and "PREFECT_API_URL is not set" in result.output


@pytest.mark.slow
def test_kubernetes_base_job_template_is_accepted_by_the_server(prefect_server, tmp_path):  # noqa: F811
    """infra/k8s-base-job-template.json creates a kubernetes work pool on a real server (prefect-kubernetes is not
    installed: the server validates the template itself); a copy using an undeclared variable is refused."""
    import json

    from prefect.client.orchestration import SyncPrefectClient

    env = client_env(prefect_server.api_url, tmp_path / "prefect-home")
    template = INFRA / "k8s-base-job-template.json"

    def create(name: str, path: Path) -> subprocess.CompletedProcess:
        args = ["work-pool", "create", name, "--type", "kubernetes", "--base-job-template", str(path), "--overwrite"]
        return subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120)

    created = create("kdflow-k8s-test", template)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    with SyncPrefectClient(prefect_server.api_url) as client:
        pool = client.read_work_pool("kdflow-k8s-test")
    assert pool.type == "kubernetes" and pool.base_job_template == json.loads(template.read_text())
    defaults = {k: v.get("default") for k, v in pool.base_job_template["variables"]["properties"].items()}
    assert (defaults["image"], defaults["gpu_count"], defaults["namespace"]) == ("kdflow:cpu", 0, "kdflow")
    [container] = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"

    broken = json.loads(template.read_text())
    broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ nope }}"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    refused = create("kdflow-k8s-broken", tmp_path / "broken.json")
    assert refused.returncode != 0 and "undeclared variable(s): nope" in refused.stdout + refused.stderr
