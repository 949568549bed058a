"""MLflow's basic-auth app through mlflow/start-server.sh (KDFLOW_MLFLOW_AUTH=1): a real server on a free loopback
port, SQLite backend, artifacts on local disk, stopped with a signal. Anonymous and wrong-password requests are
refused; the admin's credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, from the environment) let
kdflow.registry log, register and load a model; the admin's password can be changed through the API. No secret
appears in what the server prints."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdflow import registry
from tests.conftest import free_port, stop_group
from tests.test_registry_server import wait_healthy

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "mlflow" / "start-server.sh"
BIN = Path(sys.executable).parent


def auth_ini(tmp_path: Path) -> Path:
    """The shipped mlflow/basic_auth.ini with its user store moved to a private SQLite file under ``tmp_path``."""
    text = (REPO / "mlflow" / "basic_auth.ini").read_text()
    assert not [line for line in text.splitlines() if line.startswith("admin_password")]  # no password shipped
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        text.replace("sqlite:////var/lib/kdflow/mlflow-auth.db", f"sqlite:///{tmp_path / 'auth.db'}"), encoding="utf-8"
    )
    return ini


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """start-server.sh's environment: SQLite backend, local artifacts, a free port, no inherited MLflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KDFLOW_"))}
    env.update(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        KDFLOW_MLFLOW_HOST="127.0.0.1",
        KDFLOW_MLFLOW_PORT=str(free_port()),
        KDFLOW_MLFLOW_WORKERS="1",
        KDFLOW_MLFLOW_BIN=str(BIN / "mlflow"),
        KDFLOW_MLFLOW_AUTH="1",
        **extra,
    )
    return env


def refused(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run start-server.sh expecting it to refuse before starting anything."""
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_basic_auth_needs_its_settings_file_and_secret_key(tmp_path):
    """KDFLOW_MLFLOW_AUTH=1 without MLFLOW_AUTH_CONFIG_PATH (MLflow would put users in ./basic_auth.db) or without
    MLFLOW_FLASK_SERVER_SECRET_KEY: one line naming the missing setting, exit 2."""
    import importlib.util

    assert importlib.util.find_spec("flask_wtf") is not None, "Flask-WTF (mlflow[auth]) is in the lock: make install"
    no_ini = refused(server_env(tmp_path, MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32))
    assert no_ini.returncode == 2 and "MLFLOW_AUTH_CONFIG_PATH" in no_ini.stderr, no_ini.stderr
    missing = refused(server_env(tmp_path, MLFLOW_FLASK_SERVER_SECRET_KEY="k", MLFLOW_AUTH_CONFIG_PATH="/nonexistent"))
    assert missing.returncode == 2 and "/nonexistent" in missing.stderr, missing.stderr
    no_key = refused(server_env(tmp_path, MLFLOW_AUTH_CONFIG_PATH=str(auth_ini(tmp_path))))
    assert no_key.returncode == 2 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in no_key.stderr, no_key.stderr


def get_status(url: str, user: str | None = None, password: str | None = None) -> int:
    """HTTP status of a GET, with basic auth when a user is given."""
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_basic_auth_refuses_anonymous_requests_and_kdflow_registers_with_credentials(tmp_path, monkeypatch):
    password, secret_key = secrets.token_urlsafe(18), secrets.token_hex(32)
    env = server_env(
        tmp_path,
        MLFLOW_AUTH_CONFIG_PATH=str(auth_ini(tmp_path)),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secret_key,
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
    )
    url = f"http://127.0.0.1:{env['KDFLOW_MLFLOW_PORT']}"
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(url, proc, log)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert get_status(search) == 401
        assert get_status(search, "admin", "wrong-password-123") == 401
        assert get_status(search, "nobody", password) == 401
        assert get_status(search, "admin", password) == 200

        # kdflow's registry with the credentials from the environment: log + register, resolve, load.
        import mlflow

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        registry.configure(url, "kdflow-auth", None)
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        with mlflow.start_run():
            _, version = registry.log_torch_model(model, np.zeros((2, 4), np.float32), "auth-teacher")
        assert version == "1"
        ref = registry.resolve("models:/auth-teacher/1")
        loaded = registry.load_torch_model(ref)
        x = torch.randn(3, 4)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x))
        assert list((tmp_path / "artifacts").rglob("MLmodel")), "the model's files were not stored by the server"

        # The admin changes its password (the documented rotation): the old one is refused from then on.
        from mlflow.server.auth.client import AuthServiceClient

        new_password = secrets.token_urlsafe(18)
        AuthServiceClient(url).update_user_password("admin", new_password, current_password=password)
        assert get_status(search, "admin", password) == 401
        assert get_status(search, "admin", new_password) == 200
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", new_password)
        assert registry.resolve("models:/auth-teacher/1").version == "1"

        # The same call without credentials is refused by the server.
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(registry.RegistryError, match="401|[Uu]nauthori[sz]ed|credentials"):
            registry.resolve("models:/auth-teacher/1")
    finally:
        stop_group(proc)
    printed = log.read_text()
    assert password not in printed and new_password not in printed and secret_key not in printed
    assert "basic-auth users from" in printed
