"""``kdflow models compare``: two versions on the same window of logged traffic. Exact figures on constructed logs
(known accuracies, ECE, flip rates, latencies, deferral), then the command on versions registered in MLflow."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import norm

from kdflow.compare import Figure, accuracy_difference, compare_versions, version_figures
from kdflow.inference_logs import InferenceLogWriter, read_window, write_labels
from tests.test_drift_versions import C, drift_config, register_versions, world

DAY = datetime(2026, 2, 1, tzinfo=timezone.utc)


def confident(y: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Probabilities with top-label confidence 0.9 on ``y`` where ``correct``, else on ``(y + 1) % C``."""
    pred = np.where(correct, y, (y + 1) % C)
    probs = np.full((len(y), C), 0.1 / (C - 1))
    probs[np.arange(len(y)), pred] = 0.9
    return probs


def write_logs(root) -> None:
    """v1 (champion): 300 rows, 200 labeled inline of which 180 right (0.9), 60 shadow rows where the teacher
    disagrees on 6, latency 1..100 ms on 100 rows, 30 answered by the teacher. v2 (challenger): 250 rows, 200
    labeled late (written as label files) of which 150 right (0.75), 60 shadow rows with 30 flips, latency
    2..200 ms on 100 rows, answered_by never recorded. Every confidence is 0.9."""
    rng = np.random.default_rng(0)
    writer = InferenceLogWriter(str(root), "s", "1")
    for version, n, right, flips, scale in (("1", 300, 180, 6, 1.0), ("2", 250, 150, 30, 2.0)):
        y = rng.integers(0, C, size=n)
        correct = np.arange(n) < right
        probs = confident(y, correct)
        teacher = np.full((n, C), np.nan)
        pred = probs.argmax(1)
        teacher[:60] = np.eye(C)[pred[:60]] * 5.0
        teacher[:flips] = np.eye(C)[(pred[:flips] + 1) % C] * 5.0
        latency = np.full(n, np.nan)
        latency[:100] = scale * np.arange(1, 101)
        labels = np.where(np.arange(n) < 200, y, -1)
        ids = [f"{version}-{i}" for i in range(n)]
        writer.log(
            world(n, seed=int(version))[0],
            probs,
            [DAY + timedelta(seconds=60 * i) for i in range(n)],
            request_ids=ids,
            teacher_logits=teacher,
            labels=labels if version == "1" else None,
            answered_by=(["teacher"] * 30 + ["student"] * (n - 30)) if version == "1" else None,
            latency_ms=latency,
            model_version=version,
        )
        if version == "2":
            write_labels(str(root), ids[:200], y[:200], DAY + timedelta(hours=20))
    writer.flush()


# ------------------------------------------------------------------------------- exact figures
def test_version_figures_and_the_verdict_on_constructed_logs(tmp_path):
    write_logs(tmp_path)
    window = read_window(str(tmp_path), DAY, DAY + timedelta(days=1))
    v1 = version_figures(window, "1", min_rows=50, role="champion", reference_deferral_rate=0.08)
    v2 = version_figures(window, "2", min_rows=50, role="challenger")
    assert (v1.rows, v2.rows) == (300, 250)
    assert (v1.accuracy, v2.accuracy) == (Figure(0.9, 200), Figure(0.75, 200))  # v2's labels arrived late
    # One confidence bin at 0.9 (float32 in the logs): ECE = |accuracy - 0.9|.
    assert v1.ece.value == pytest.approx(0.0, abs=1e-6) and v2.ece.value == pytest.approx(0.15, abs=1e-6)
    assert (v1.flip_rate, v2.flip_rate) == (Figure(0.1, 60), Figure(0.5, 60))
    # numpy's linear interpolation: p50 of 1..100 = 50.5, p95 = 95 + 0.05 * (96 - 95) = 95.05.
    assert (v1.latency_p50_ms.value, v1.latency_p50_ms.n) == (50.5, 100)
    assert v1.latency_p95_ms.value == pytest.approx(95.05) and v2.latency_p95_ms.value == pytest.approx(190.1)
    assert v1.deferral_rate == Figure(0.1, 300) and v1.reference_deferral_rate == 0.08
    assert v2.deferral_rate == Figure(None, 0, "no row records answered_by")
    assert v2.deferral_rate.text() == "n/a (no row records answered_by)" and v1.accuracy.text() == "0.9000 (n=200)"

    few = version_figures(window, "2", min_rows=101)
    assert few.latency_p50_ms == Figure(None, 100, "100 timed rows, fewer than 101")
    assert few.flip_rate.text() == "n/a (60 shadow rows, fewer than 101)" and few.accuracy.value == 0.75

    comparison = compare_versions(window, v1, v2)
    diff = comparison.accuracy_difference
    # Agresti-Caffo: p~ = (x + 1) / (n + 2) per version, Wald interval of their difference.
    pa, pb = 181 / 202, 151 / 202
    half = norm.ppf(0.975) * math.sqrt(pa * (1 - pa) / 202 + pb * (1 - pb) / 202)
    assert diff.difference == pytest.approx(-0.15)
    assert (diff.low, diff.high) == pytest.approx((pb - pa - half, pb - pa + half))
    assert diff.high < 0
    assert comparison.verdict == (
        "v1 (champion) is more accurate than v2 (challenger): 15.00 points (v2 (challenger) minus v1 (champion) "
        f"-15.00; 95% interval {100 * diff.low:+.2f} to {100 * diff.high:+.2f} points; 200 and 200 labeled rows)"
    )
    table = comparison.table().splitlines()
    assert table[0] == f"logs {window.root} [2026-02-01T00:00:00+00:00, 2026-02-02T00:00:00+00:00)"
    assert table[1].split() == ["v1", "(champion)", "v2", "(challenger)"]
    assert table[3].split() == ["accuracy", "0.9000", "(n=200)", "0.7500", "(n=200)"]
    assert table[-1] == f"verdict: {comparison.verdict}"
    assert json.loads(json.dumps(comparison.as_dict()))["b"]["accuracy"] == {"value": 0.75, "n": 200, "reason": ""}


def test_no_verdict_without_enough_labels_or_a_clear_difference():
    assert accuracy_difference(Figure(None, 10, "10 labeled rows, fewer than 50"), Figure(0.8, 100)) is None
    close = accuracy_difference(Figure(0.80, 100), Figure(0.82, 100))
    assert close.low < 0 < close.high and close.difference == pytest.approx(0.02)
    from kdflow.compare import VersionFigures, verdict

    na = Figure(None, 0, "")

    def figures(version: str, accuracy: Figure) -> VersionFigures:
        return VersionFigures(version, "", 100, accuracy, na, na, na, na, na)

    a, b = figures("1", Figure(0.80, 100)), figures("2", Figure(0.82, 100))
    assert verdict(a, b, close) == (
        f"no verdict: accuracy v2 minus v1 +2.00 points (95% interval {100 * close.low:+.2f} to "
        f"{100 * close.high:+.2f} points; 100 and 100 labeled rows)"
    )
    small = figures("2", Figure(None, 10, "10 labeled rows, fewer than 50"))
    assert verdict(a, small, None) == "no verdict: v2: accuracy n/a (10 labeled rows, fewer than 50)"


# ------------------------------------------------------------------------------- the command
@pytest.mark.slow
def test_models_compare_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app
    from kdflow.profile import build_profile
    from mlflow import MlflowClient
    from tests.conftest import write_yaml

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    cfg = drift_config(tmp_path, "s")
    cfg["drift"]["min_labeled_rows"] = 50
    x, y, p = world(500, seed=5)
    register_versions(
        cfg["mlflow"]["tracking_uri"],
        cfg["mlflow"]["artifact_location"],
        "s",
        {"1": build_profile(p, x, y), "2": build_profile(p, x, y), "3": build_profile(p, x, y)},
        {"cascade_deferral_rate": 0.08},
    )
    MlflowClient().set_registered_model_alias("s", "champion", "1")
    write_logs(tmp_path / "logs")
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))
    runner = CliRunner()
    window = ["--start", "2026-02-01", "--end", "2026-02-02"]

    no_challenger = runner.invoke(app, ["models", "compare", "s", "--config", path, *window])
    assert no_challenger.exit_code == 2
    assert "registered model 's' has no challenger; name two versions with --versions A B" in no_challenger.output
    MlflowClient().set_registered_model_alias("s", "challenger", "2")

    out = runner.invoke(app, ["models", "compare", "s", "--config", path, *window])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()  # (MLflow's download progress goes to stderr)
    assert lines[0].startswith("s: logs ") and "[2026-02-01T00:00:00+00:00, 2026-02-02T00:00:00+00:00)" in lines[0]
    assert lines[1].split() == ["v1", "(champion)", "v2", "(challenger)"]
    rows = {line[:27].strip(): line[27:].split() for line in lines[2:-1]}
    assert rows["rows served"] == ["300", "250"]
    assert rows["flip rate vs teacher"] == ["0.1000", "(n=60)", "0.5000", "(n=60)"]
    assert rows["latency p95 (ms)"] == ["95.05", "(n=100)", "190.10", "(n=100)"]
    assert rows["deferral rate"] == ["0.1000", "(n=300)", "n/a", "(no", "row", "records", "answered_by)"]
    assert rows["validation deferral rate"] == ["0.0800", "0.0800"]
    assert lines[-1].startswith("verdict: v1 (champion) is more accurate than v2 (challenger): 15.00 points")

    as_json = runner.invoke(app, ["models", "compare", "s", "--config", path, *window, "--json", "--min-rows", "101"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["a"]["version"] == "1" and data["b"]["accuracy"] == {"value": 0.75, "n": 200, "reason": ""}
    assert data["b"]["latency_p50_ms"] == {"value": None, "n": 100, "reason": "100 timed rows, fewer than 101"}

    def fails(*args: str) -> str:
        result = runner.invoke(app, ["models", "compare", "s", "--config", path, *args])
        assert result.exit_code == 2, result.output
        return result.output

    assert "models:/s/9 does not exist in the registry" in fails(*window, "--versions", "1", "9")
    assert "v3 served no rows in" in fails(*window, "--versions", "1", "3")
    assert "versions that did: v1 300 rows, v2 250 rows" in fails(*window, "--versions", "3", "1")
    assert "give either --days or --start and --end, not both" in fails(*window, "--days", "3")
    assert "--start and --end go together" in fails("--start", "2026-02-01")
    assert "not an ISO 8601 date" in fails("--start", "yesterday", "--end", "2026-02-02")
    assert "v1 served no rows" in fails("--start", "2026-02-03", "--end", "2026-02-04")
