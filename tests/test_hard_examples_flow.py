"""The distill flow with hard examples and the per-class SLA, end to end on tiny MNIST-1D (Prefect test harness,
MLflow on SQLite in a tmp directory, the local logit store)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mlflow import MlflowClient
from tests.conftest import TINY_SIZES, TINY_TRANSFER, write_yaml

pytestmark = pytest.mark.slow


def test_distill_with_hard_examples_records_the_selection_and_the_per_class_table(distill_config, tmp_path):
    from flows.distill import distill_flow

    distill_config["hard_examples"] = {"enabled": True, "fraction": 0.1, "mode": "oversample", "factor": 3}
    distill_config["sla"]["min_class_accuracy"] = 1.0  # a 4-epoch student misses some class: the gate names them
    report = distill_flow(str(write_yaml(tmp_path / "distill.yaml", distill_config)))

    # The selection: ceil(0.1 * 1,200 transfer rows) = 120 rows, each seen 3 times per epoch.
    run = MlflowClient().get_run(report["run_id"])
    metrics, params = run.data.metrics, run.data.params
    assert metrics["hard_examples_selected_rows"] == 120 and metrics["hard_examples_extra_rows_per_epoch"] == 240
    assert params["hard_examples.mode"] == "oversample" and params["hard_examples.enabled"] == "True"
    assert metrics["hard_examples_mean_entropy"] > metrics["hard_examples_candidate_mean_entropy"] > 0
    local = MlflowClient().download_artifacts(report["run_id"], "hard_examples/selection.json", str(tmp_path))
    selection = json.loads(Path(local).read_text())
    assert report["training"]["hard_examples"] == selection
    assert selection["by_split"] == {"transfer": 120} and selection["mode"] == "oversample"
    assert selection["mean_entropy"] == pytest.approx(metrics["hard_examples_mean_entropy"])
    rows_per_epoch = TINY_SIZES["train"] + TINY_TRANSFER + 240
    assert report["training"]["steps"] == distill_config["train"]["epochs"] * math.ceil(rows_per_epoch / 128)

    # The per-class table: every test row in one class; the accuracies add up to the overall ones.
    per_class = report["per_class"]
    assert [r["class"] for r in per_class] == [str(c) for c in range(10)]
    assert sum(r["rows"] for r in per_class) == TINY_SIZES["test"]
    ev = report["evaluation"]
    for who in ("student", "teacher"):
        weighted = sum(r["rows"] * r[f"{who}_accuracy"] for r in per_class) / TINY_SIZES["test"]
        assert weighted == pytest.approx(ev[f"{who}_accuracy"], abs=1e-9)
    markdown = Path(report["paths"]["markdown"]).read_text()
    assert "## Per-class accuracy (test set)" in markdown and "## Hard examples" in markdown
    assert "Per-class accuracy (test set)</h2>" in Path(report["paths"]["html"]).read_text()

    # The per-class SLA: the gate fails and its reason names every class below 1.0 with its accuracy.
    check = next(c for c in report["sla_checks"] if c["name"] == "min_class_accuracy")
    below = [r for r in per_class if r["student_accuracy"] < 1.0]
    assert not check["passed"] and check["value"] == min(r["student_accuracy"] for r in per_class)
    assert not report["gate_passed"] and report["registration"]["version"] is None
    reason = report["decision"]["reason"]
    assert reason.startswith(f"SLA gate failed: min_class_accuracy ({len(below)} class(es) below 1:")
    assert all(f"class {r['class']} {r['student_accuracy']:.4f}" in reason for r in below)


def test_distill_with_weighted_rare_class_hard_examples_passes_a_met_per_class_sla(distill_config, tmp_path):
    from flows.distill import distill_flow

    # rare_share 0.2: every class of the balanced tiny train split (about 10% each) is rare
    distill_config["hard_examples"] = {
        "enabled": True, "fraction": 0.5, "mode": "weight", "factor": 2.5, "classes": "rare", "rare_share": 0.2,
        "splits": ["train", "transfer"],
    }  # fmt: skip
    distill_config["sla"]["min_class_accuracy"] = 0.0
    report = distill_flow(str(write_yaml(tmp_path / "distill.yaml", distill_config)))

    selection = report["training"]["hard_examples"]
    candidates = TINY_SIZES["train"] + TINY_TRANSFER
    assert selection["mode"] == "weight" and selection["rare_classes"] == list(range(10))
    assert selection["candidate_rows"] == selection["eligible_rows"] == candidates
    assert selection["selected_rows"] == candidates // 2 and selection["extra_rows_per_epoch"] == 0
    assert set(selection["by_split"]) == {"train", "transfer"}
    assert report["training"]["steps"] == distill_config["train"]["epochs"] * math.ceil(candidates / 128)
    check = next(c for c in report["sla_checks"] if c["name"] == "min_class_accuracy")
    assert check["passed"] and check["detail"].startswith("lowest: class ")
    assert report["gate_passed"] and report["registration"]["aliases"][-1] == "champion"
