"""The tuning report a person reads: ``report.html`` beside ``best.yaml`` and ``trials.json``, from the study's
:func:`kdflow.tune.summary` (the decision, the counts, the best settings, every trial and a plot of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdflow import html

COLORS = {"feasible": "#1a7f4b", "infeasible (ECE)": "#e08a00", "best": "#c00"}


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_markdown(result: dict[str, Any]) -> str:
    """The decision and the counts, the best trial's settings, and every trial as Markdown tables."""
    best, max_ece = result["best"], result["max_ece"]
    counts = ", ".join(f"{n} {s.lower()}" for s, n in result["states"].items()) or "none"
    limit = f"sla.max_ece {max_ece}" if max_ece is not None else "no sla.max_ece"
    lines = [f"# kdflow tuning report: study `{result['study']}`", ""]
    if best is None:
        lines.append(f"**No feasible trial**: no complete trial met {limit}; nothing to apply.")
    else:
        lines.append(
            f"**Best feasible trial {best['number']}**: validation accuracy {_metric(best['value'])}, "
            f"calibrated validation ECE {_metric(best['val_ece'])} ({limit}). Its settings are in `best.yaml`."
        )
    lines += [
        "",
        f"{result['trials']} trial(s): {counts}; {len(result['infeasible'])} infeasible (calibrated validation ECE "
        f"above {limit}){': trials ' + ', '.join(map(str, result['infeasible'])) if result['infeasible'] else ''}. "
        "Objective: validation accuracy; pruned trials were stopped early by the median rule.",
    ]
    if best is not None:
        lines += ["", "## Best settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| train.{k} | {_num(v)} |" for k, v in sorted(best["params"].items())]
    keys = sorted({k for t in result["table"] for k in t["params"]})
    lines += [
        "",
        "## Every trial",
        "",
        "| trial | state | val accuracy | val ECE | feasible | " + " | ".join(f"train.{k}" for k in keys) + " |",
        "|---" * (5 + len(keys)) + "|",
    ]
    for t in result["table"]:
        feasible = {True: "yes", False: "no", None: ""}[t["feasible"]]
        mark = " (best)" if best is not None and t["number"] == best["number"] else ""
        cells = [f"{t['number']}{mark}", t["state"], _metric(t["value"]), _metric(t["val_ece"]), feasible]
        lines.append("| " + " | ".join([*cells, *(_num(t["params"].get(k)) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def to_html(result: dict[str, Any]) -> str:
    """:func:`to_markdown` rendered, with an SVG plot of every complete trial's validation accuracy."""
    best = result["best"]
    done = [t for t in result["table"] if t["value"] is not None]
    series = {
        "feasible": [(t["number"], t["value"]) for t in done if t["feasible"] is not False],
        "infeasible (ECE)": [(t["number"], t["value"]) for t in done if t["feasible"] is False],
        "best": [(best["number"], best["value"])] if best is not None else [],
    }
    head, _, rest = to_markdown(result).partition("## Every trial")
    plot = html.scatter(series, COLORS, "trial", "validation accuracy")
    parts = [html.render(head)]
    if plot:
        parts += [html.Raw("<h2>Trials</h2>"), html.Raw(f"<figure>{plot}<figcaption>Validation accuracy of "
                  "every complete trial (pruned trials have none).</figcaption></figure>")]  # fmt: skip
    parts.append(html.render("## Every trial" + rest))
    return html.page(f"kdflow tuning report: {result['study']}", *parts)


def write_report_html(out_dir: Path, result: dict[str, Any]) -> Path:
    """``report.html`` in ``out_dir`` (:func:`to_html`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(to_html(result))
    return path
