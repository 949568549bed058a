"""The HTML reports a person reads (validation, distillation, tuning): parsed with the standard library's
html.parser, they have headings and tables, no Markdown left raw, the checks said in words and the plots shown."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import optuna

from kdflow import html
from kdflow.plots import training_curves
from kdflow.report import to_html as distill_html
from kdflow.report import write_report
from kdflow.tune import summary
from kdflow.tune_report import write_report_html
from tests.test_validation import frame, train_only


class Page(HTMLParser):
    """What a reader sees: headings, tables (rows of cell texts), images, visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.texts: list[str] = []
        self._open: list[str] = []
        self._heading: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self._open.append(tag)
        if tag in {"h1", "h2", "h3"}:
            self._heading = ""
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in {"td", "th"}:
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in {"h1", "h2", "h3"}:
            self.headings.append((tag, self._heading.strip()))
            self._heading = None
        elif tag in {"td", "th"}:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        if self._open and self._open[-1] in {"style", "title"}:
            return
        self.texts.append(data)
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell.append(data)

    def h(self, level: str) -> list[str]:
        return [t for tag, t in self.headings if tag == level]

    def assert_no_raw_markdown(self) -> None:
        for text in self.texts:
            assert not text.lstrip().startswith("#"), text
            assert "|---" not in text and "**" not in text and "`" not in text, text


def test_markdown_subset_renders_and_escapes():
    page = Page(
        html.render(
            "# Title <b>\n\nSome **bold** and `code <x>` [a link](http://h/x).\n\n"
            "- one\n- two\n\n| a | n |\n|---|---:|\n| <script> | 1,234 |\n| y \\| z | 0.5 |\n## Next"
        )
    )
    assert page.h("h1") == ["Title <b>"] and page.h("h2") == ["Next"]
    assert page.tables == [[["a", "n"], ["<script>", "1,234"], ["y | z", "0.5"]]]
    page.assert_no_raw_markdown()
    rendered = html.render("| a |\n|---|\n| <script>alert(1)</script> |")
    assert "<script>" not in rendered and "&lt;script&gt;" in rendered


def test_validation_report_says_each_check_in_words_beside_its_gx_name(tmp_path):
    df = frame(30, 0)
    x = df["x"].tolist()
    x[3] = np.full(len(x[3]), np.nan, dtype=np.asarray(x[0]).dtype)
    df["x"] = x
    report = train_only(tmp_path, df)
    page = Page(report.to_html())
    assert page.h("h1") == ["Data validation: FAILED"]
    assert {"Failures", "train: FAIL"} <= set(page.h("h2"))
    summary_table, checks = page.tables[0], page.tables[-1]
    assert summary_table[0] == ["dataset", "file(s)", "rows", "checks", "failed", "status"]
    assert summary_table[1][0] == "train" and summary_table[1][-1] == "FAIL"
    assert checks[0] == ["what is checked", "result", "offending rows", "details", "GX expectation"]
    by_words = {row[0]: row for row in checks[1:]}
    assert by_words["x: every row's array has length 8"][4] == "expect_column_values_to_be_in_set on x__length"
    finite = by_words["x: no NaN or infinite value in any row"]
    assert finite[1:3] == ["FAIL", "1"] and finite[4].endswith("on x__finite") and "NaN" in finite[3]
    assert by_words["label: every label is a class index from 0 to 2"][1] == "pass"
    assert "every required column is present: id, label, x" in by_words
    page.assert_no_raw_markdown()


def _distill_report() -> dict:
    metrics = {"ece": 0.1, "mce": 0.2, "nll": 0.3, "brier": 0.4}
    ev = {
        f"{who}_{m}": 1.0
        for who in ("student", "teacher")
        for m in ("accuracy", "ece", "latency_p50_ms", "latency_p95_ms", "throughput", "params")
    }
    history = [
        {"epoch": e, "loss": 1.0 / e, "soft_loss": 0.9 / e, "hard_loss": 1.1 / e, "val_accuracy": 0.5 + e / 10}
        for e in (1, 2, 3)
    ]
    return {
        "student_name": "s",
        "run_id": "r",
        "teacher": {"uri": "models:/t@champion", "version": "1"},
        "evaluation": {
            **ev,
            "flip_rate": 0.02,
            "teacher_gap": 0.01,
            "size_ratio": 0.1,
            "per_class_accuracy": {"0": 0.9, "1": 0.8},
        },  # fmt: skip
        "calibration": {"temperature": 1.5, "before": metrics, "after": metrics},
        "training": {"best_epoch": 3, "best_val_accuracy": 0.8, "steps": 120, "history": history},
        "sla_checks": [{"name": "min_accuracy", "value": 0.9, "op": ">=", "threshold": 0.85, "passed": True}],
        "registration": {"version": "2", "aliases": ["challenger", "champion"]},
        "gate_passed": True,
        "decision": {"reason": "better than champion version 1"},
        "provenance": {"config_hash": "abc", "training_temperature": 4.0},
    }


def test_distillation_report_html_shows_decision_tables_and_plots(tmp_path):
    report = _distill_report()
    training_curves(report["training"]["history"], tmp_path / "plots" / "student_training_curves.png")
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    page = Page(paths[2].read_text())
    assert page.h("h1") == ["kdflow distillation report: s"]
    assert {"SLA gate", "Training", "Plots", "Provenance"} <= set(page.h("h2"))
    assert any("Gate PASSED." in t for t in page.texts) and any("better than champion" in t for t in page.texts)
    assert page.tables[0][0] == ["metric", "student", "teacher"]
    assert ["min_accuracy", "0.9000", ">= 0.85", "PASS"] in next(t for t in page.tables if t[0][0] == "check")
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,iVBOR")
    page.assert_no_raw_markdown()
    assert Page(distill_html(report)).images == []  # no plots directory: no figure, the rest unchanged


def test_tuning_report_html_has_best_trial_counts_and_every_trial(tmp_path):
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.set_user_attr("val_ece", 0.05)
        trial.set_user_attr("feasible", True)
        if trial.number == 2:
            raise optuna.TrialPruned()
        return 0.9 - lr

    study = optuna.create_study(study_name="html", direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=4)
    result = summary(study, 0.1)
    page = Page(write_report_html(tmp_path, result).read_text())
    assert page.h("h1") == ["kdflow tuning report: study html"]
    assert page.h("h2") == ["Best settings", "Trials", "Every trial"]
    text = " ".join(page.texts)
    assert f"Best feasible trial {result['best']['number']}" in text and "3 complete, 1 pruned" in text
    best, trials = page.tables
    assert best[1][0] == "train.lr"
    assert trials[0][:5] == ["trial", "state", "val accuracy", "val ECE", "feasible"] and len(trials) == 5
    assert trials[3][1] == "PRUNED" and trials[3][2] == ""
    page.assert_no_raw_markdown()
    assert "<svg" in (tmp_path / "report.html").read_text()


def test_distillation_report_has_the_per_class_table_and_the_hard_examples(tmp_path):
    report = _distill_report()
    report["evaluation"].update(
        per_class_accuracy={"0": 0.9, "1": 0.8, "2": float("nan")},
        teacher_per_class_accuracy={"0": 0.95, "1": 0.85, "2": float("nan")},
        per_class_rows={"0": 40, "1": 60, "2": 0},
    )
    report["sla_checks"].append(
        {"name": "min_class_accuracy", "value": 0.8, "op": ">=", "threshold": 0.85, "passed": False,
         "detail": "1 class(es) below 0.85: class 1 0.8000"}
    )  # fmt: skip
    report["training"]["hard_examples"] = {
        "mode": "oversample", "factor": 3.0, "classes": "all", "fraction": 0.1, "rare_classes": None,
        "selected_rows": 120, "eligible_rows": 1200, "candidate_rows": 1200, "mean_entropy": 1.2345,
        "candidate_mean_entropy": 0.5, "by_split": {"transfer": 120},
    }  # fmt: skip
    paths = write_report(report, tmp_path)
    markdown = paths[1].read_text()
    assert "| class | test rows | student accuracy | teacher accuracy | SLA |" in markdown
    assert "| 1 | 60 | 0.8000 | 0.8500 | FAIL |" in markdown and "| 2 | 0 | n/a | n/a | n/a |" in markdown
    assert "120 of 1,200 eligible training rows" in markdown and "repeated 3 times per epoch" in markdown
    page = Page(paths[2].read_text())
    assert {"Per-class accuracy (test set)", "Hard examples"} <= set(page.h("h2"))
    table = next(t for t in page.tables if t[0][0] == "class")
    assert table[1:] == [
        ["0", "40", "0.9000", "0.9500", "PASS"],
        ["1", "60", "0.8000", "0.8500", "FAIL"],
        ["2", "0", "n/a", "n/a", "n/a"],
    ]
    assert sum(1 for t in page.tables if t[0][0] == "class") == 1  # shown once
    page.assert_no_raw_markdown()
    older = _distill_report()  # a report of an older kdflow: the student's accuracy only, no SLA column
    older_md = write_report(older, tmp_path / "older")[1].read_text()
    assert "| class | test rows | student accuracy | teacher accuracy |\n" in older_md
    assert "| 0 | n/a | 0.9000 | n/a |" in older_md and "Hard examples" not in older_md
