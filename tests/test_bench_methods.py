"""bench/methods.py: its options, step budget and moonshot verdict (exact), and one tiny end-to-end smoke run; its
figures are measured by the script, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kdflow.config import TrainConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def methods():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_methods", BENCH / "methods.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_methods", None)
        sys.path.remove(str(BENCH))


def test_quick_sets_tiny_sizes_and_explicit_values_win(methods):
    full = methods.parse_args([])
    assert (full.seeds, full.transfer_size, full.epochs_cap, full.tune_trials) == ([0, 1, 2], 20_000, None, 8)
    assert full.hard_lrs == [0.001, 0.003, 0.01] and full.tune_subset is None
    quick = methods.parse_args(["--quick", "--tune-trials", "3"])
    assert (quick.seeds, quick.transfer_size, quick.train_size, quick.epochs_cap) == ([0], 300, 300, 2)
    assert quick.tune_trials == 3
    for bad in (["--transfer-size", "0"], ["--epochs-cap", "0"], ["--tune-subset", "1.5"]):
        with pytest.raises(SystemExit):
            methods.parse_args(bad)


def test_kd_step_budget_is_epochs_times_batches_or_max_steps(methods):
    assert methods.kd_step_budget(TrainConfig(epochs=15, batch_size=256), 24_000) == 15 * 94
    assert methods.kd_step_budget(TrainConfig(epochs=15, batch_size=256, max_steps=7), 24_000) == 7


def _row(seed, teacher, students, params=3000, teacher_params=60_000):
    """One seed's figures as run_seed returns them: the given test accuracies, 0.5 for every other metric."""
    figures = dict.fromkeys(("ece_calibrated", "ece_t1", "temperature", "best_val_accuracy"), 0.5)
    ms = {
        name: {**figures, "test_accuracy": acc, "steps": 10, "seconds": 1.0, "params": params}
        for name, acc in students.items()
    }
    ms["online"]["co_teacher"] = {"test_accuracy": teacher}
    return {
        "seed": seed,
        "teacher": {"test_accuracy": teacher, "ece_calibrated": 0.01, "params": teacher_params},
        "methods": ms,
        "seconds": {"total": 5.0},
    }


def test_moonshot_needs_mean_accuracy_and_size(methods):
    names = methods.STUDENTS
    rows = [
        _row(0, 0.98, {n: (0.99 if n == "kd" else 0.90) for n in names}),
        _row(1, 0.96, {n: (0.95 if n == "kd" else 0.90) for n in names}),
    ]
    tables = [{"teacher_test_accuracy": 0.9, "baseline_test_accuracy": 0.95}] * 2
    moon = methods.summarize(rows, tables)["moonshot"]
    assert moon["teacher_mean"] == pytest.approx(0.97) and moon["methods_meeting"] == ["kd"] and moon["pass"]
    assert moon["per_method"]["kd"]["gap_to_teacher"] == pytest.approx(0.0)
    assert moon["per_method"]["kd"]["param_ratio"] == pytest.approx(0.05)
    too_big = [_row(0, 0.9, {n: 0.95 for n in names}, params=7000)]  # accurate enough but 11.7% of the teacher
    assert methods.summarize(too_big, tables[:1])["moonshot"]["pass"] is False


def test_a_method_skipped_on_a_seed_has_no_mean(methods):
    rows = [_row(0, 0.9, {n: 0.8 for n in methods.STUDENTS}), _row(1, 0.9, {n: 0.8 for n in methods.STUDENTS})]
    rows[1]["methods"]["tuned"] = {"skipped": "no feasible trial"}
    summary = methods.summarize(rows, [{"teacher_test_accuracy": 0.9, "baseline_test_accuracy": 0.9}] * 2)
    assert summary["methods"]["tuned"] == {"skipped_seeds": 1} and "tuned" not in summary["moonshot"]["per_method"]


@pytest.mark.slow
def test_smoke_run_writes_every_method(methods, tmp_path):
    out = tmp_path / "methods.json"
    assert methods.main(["--quick", "--epochs-cap", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (seed,) = data["per_seed"]
    assert seed["rows"] == {"train": 300, "transfer": 300, "val": 200, "test": 200}
    assert seed["kd_step_budget"] == 3  # 1 epoch of ceil(600 / 256) steps
    for name in set(methods.STUDENTS) - {"tuned"}:  # tuned may find no feasible trial in 2 tiny ones
        m = seed["methods"][name]
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["steps"] > 0 and m["params"] == seed["methods"]["kd"]["params"]
    assert seed["methods"]["hard_budget"]["steps"] == 3 and seed["methods"]["hard_tuned"]["lr"] == 0.003
    assert seed["methods"]["hard_examples"]["selection"]["selected_rows"] > 0
    assert len(seed["methods"]["tuned"]["trials"]) == 2
    assert set(data["summary"]["moonshot"]["per_method"]) <= set(methods.STUDENTS)
    (table,) = data["tabular"]
    assert 0.0 <= table["teacher_test_accuracy"] <= 1.0 and table["rows"]["test"] == 114
