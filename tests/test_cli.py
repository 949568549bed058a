"""The command line: generators, exit codes and messages."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from app.cli import GATE_FAILED_EXIT, app
from tests.conftest import write_yaml

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_prefect_home(monkeypatch, tmp_path):
    """The CLI sets Prefect's home only if unset: keep it off the working tree in tests."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))


def test_data_mnist1d_writes_the_four_splits(tmp_path):
    result = runner.invoke(app, ["data", "mnist1d", "--out", str(tmp_path), "--transfer-size", "100"])
    assert result.exit_code == 0, result.output
    sizes = {p: len(pd.read_parquet(tmp_path / f"{p}.parquet")) for p in ("train", "val", "test", "transfer")}
    assert sizes == {"train": 4000, "val": 1000, "test": 1000, "transfer": 100}
    assert "label" not in pd.read_parquet(tmp_path / "transfer.parquet").columns


@pytest.mark.slow
def test_unknown_config_key_exits_2_with_one_line(distill_config, tmp_path):
    distill_config["sla"]["max_eec"] = 0.1
    path = write_yaml(tmp_path / "bad.yaml", distill_config)
    result = runner.invoke(app, ["distill", "--config", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "sla.max_eec: Extra inputs are not permitted" in result.output


@pytest.mark.slow
def test_failed_gate_exits_3_and_prints_the_failing_check(distill_config, tmp_path):
    distill_config["sla"]["min_accuracy"] = 0.9999
    path = write_yaml(tmp_path / "strict.yaml", distill_config)
    result = runner.invoke(app, ["distill", "--config", str(path)])
    assert result.exit_code == GATE_FAILED_EXIT, result.output
    assert "[FAIL] min_accuracy" in result.output and "gate FAILED" in result.output
    assert "registered: nothing" in result.output


def _store_with_logits(tmp_path):
    import numpy as np

    from kdflow.logits import LogitStore, store_key
    from kdflow.store import LocalStore

    ls = LogitStore(LocalStore(tmp_path / "store"), store_key("t", "2", "b" * 64))
    ls.precompute(
        np.arange(300),
        lambda rows: np.ones((rows.stop - rows.start, 3), np.float32),
        teacher_uri="models:/t/2",
        teacher_name="t",
        teacher_version="2",
        data_fingerprint="b" * 64,
        dataset="val",
        rows_per_shard=100,
    )
    return ls


def test_logits_inspect_and_verify(tmp_path):
    ls = _store_with_logits(tmp_path)
    out = runner.invoke(app, ["logits", "inspect", "--store", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    assert "300 rows x 3 classes, float16 dense, 3 shards" in out.output and "version 2" in out.output
    ok = runner.invoke(app, ["logits", "verify", "--store", str(tmp_path / "store")])
    assert ok.exit_code == 0 and f"OK   {ls.key}" in ok.output
    shard = tmp_path / "store" / ls.key / "shard-00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    bad = runner.invoke(app, ["logits", "verify", "--store", str(tmp_path / "store")])
    assert bad.exit_code == 1 and "shard-00001.npz: SHA-256 mismatch" in bad.output
    empty = runner.invoke(app, ["logits", "inspect", "--store", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no complete logit store" in empty.output


def test_servers_that_do_not_answer_exit_4_before_anything_runs(monkeypatch, tmp_path):
    """A Prefect API or an MLflow tracking server on a port nobody listens on: one line, exit 4."""
    from app.cli import SERVER_DOWN_EXIT
    from kdflow.config import packaged_config
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PREFECT_API_URL", f"{dead}/api")
    result = runner.invoke(app, ["drift", "check", "--config", str(packaged_config("mnist1d_distill.yaml"))])
    assert result.exit_code == SERVER_DOWN_EXIT
    assert f"the Prefect server at {dead}/api does not answer" in result.output
    monkeypatch.delenv("PREFECT_API_URL")
    result = runner.invoke(app, ["models", "list", "--tracking-uri", dead])
    assert result.exit_code == SERVER_DOWN_EXIT and f"the MLflow tracking server at {dead}" in result.output
    cfg = (
        packaged_config("mnist1d_distill.yaml")
        .read_text()
        .replace("tracking_uri: sqlite:///.kdflow/mlflow.db", f"tracking_uri: {dead}")
    )
    assert dead in cfg
    (tmp_path / "d.yaml").write_text(cfg)
    result = runner.invoke(app, ["recalibrate", "--config", str(tmp_path / "d.yaml")])
    assert result.exit_code == SERVER_DOWN_EXIT and "MLflow tracking server" in result.output


def test_a_date_that_is_not_iso_8601_exits_2_before_anything_runs():
    from kdflow.config import packaged_config

    cfg = str(packaged_config("mnist1d_distill.yaml"))
    result = runner.invoke(app, ["recalibrate", "--config", cfg, "--since", "last tuesday"])
    assert result.exit_code == 2 and "not an ISO 8601 date or date-time: 'last tuesday'" in result.output
    result = runner.invoke(app, ["drift", "check", "--config", cfg, "--as-of", "2026-13-01"])
    assert result.exit_code == 2 and "'2026-13-01'" in result.output
