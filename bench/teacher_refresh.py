"""Teacher refresh, fine-tune vs retrain: how good a refreshed teacher gets from how many labeled rows of a shifted
regime, and what it costs (a benchmark script, not a test).

The lifecycle benchmark runs one refresh at a time inside 120 simulated days; this one isolates the refresh step on
the same data so the two modes and the row budget can be compared directly:

1. The base teacher: the packaged MNIST-1D teacher config (architecture and ``train`` section) trained from
   scratch on the packaged train split (``kdflow.generators.write_mnist1d``, as ``kdflow data mnist1d`` writes it).
2. Recent labeled traffic of a shifted regime: ``--rows`` rows drawn with the simulator's generator
   (``kdflow.simulate.day_traffic``, preset ``stable-gradual-sudden``) at ``--labels-per-day`` rows a day from the
   regime's first day, as the production logs would hold them that many days after the onset.
3. Each refresh is the library's: :func:`kdflow.teacher_refresh.prepare_refresh_data` (seeded split into train /
   validation / held-out, replay of the old data), :func:`refresh_model` + :func:`refresh_train_config` with the
   packaged ``teacher_refresh`` defaults, ``kdflow.train.fit``, and the gate :func:`score_refresh`.
4. Scored on the regime's later traffic (the lifecycle bar's judged days: onset + 10 to the next onset, 200 rows a
   day, seeds disjoint from every other draw) and on the old test split (forgetting), beside an oracle: the
   teacher architecture trained from scratch on 4,000 labeled rows of the judged days (as the lifecycle's
   ``teacher_refresh_recovery`` bar trains it).

Run: ``.venv/bin/python bench/teacher_refresh.py --json bench/results/teacher_refresh.json``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
from _common import cpu_model, load_avg, write_json  # noqa: E402  (bench/ is on sys.path as the script's folder)

ONSETS = {"gradual": (40, 80), "sudden": (80, 120)}  # regime -> (onset day, next onset or end)
JUDGED_AFTER_DAYS = 10
JUDGED_ROWS_PER_DAY = 200
ORACLE_ROWS, ORACLE_VAL_ROWS = 4000, 500
SEEDS = {"recent": 50_000, "judged": 60_000, "oracle": 7919}  # day_traffic seeds, disjoint per use


def draw(days: list[int], rows: int, seed: int):
    """``rows`` rows of the preset spread evenly over ``days`` (``day_traffic`` with ``seed``)."""
    import numpy as np

    from kdflow.simulate import DriftSchedule, day_traffic

    schedule = DriftSchedule.preset("stable-gradual-sudden")
    per = np.diff(np.linspace(0, rows, len(days) + 1).round().astype(int))
    parts = [day_traffic(int(n), d, schedule, seed) for d, n in zip(days, per) if n]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def split(path: Path, name: str):
    import numpy as np
    import pandas as pd

    from kdflow.data import Dataset

    frame = pd.read_parquet(path)
    return Dataset(name, str(path), frame["id"].to_numpy(), np.stack(frame["x"]).astype(np.float32),
                   frame["label"].to_numpy().astype(np.int64))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regimes", default="sudden,gradual")
    ap.add_argument("--rows", default="1000,2000,4000", help="recent labeled rows per refresh (comma-separated)")
    ap.add_argument("--modes", default="finetune,retrain")
    ap.add_argument("--labels-per-day", type=int, default=500, help="the lifecycle benchmark's label volume")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a teacher_refresh key (YAML value), e.g. finetune_lr=0.001")  # fmt: skip
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch
    import yaml

    from kdflow.config import DistillConfig, TeacherConfig, load_config
    from kdflow.data import Dataset
    from kdflow.generators import write_mnist1d
    from kdflow.metrics import accuracy
    from kdflow.models import build_model
    from kdflow.stream import ArraySource
    from kdflow.teacher_refresh import prepare_refresh_data, refresh_model, refresh_train_config, score_refresh
    from kdflow.train import fit, predict_logits

    torch.set_num_threads(2)
    print(f"kdflow teacher-refresh bench: {cpu_model()}, load {load_avg()}", flush=True)
    tcfg = load_config(REPO / "kdflow/configs/mnist1d_teacher.yaml", TeacherConfig)
    rcfg = load_config(REPO / "kdflow/configs/mnist1d_distill.yaml", DistillConfig).teacher_refresh
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rcfg = rcfg.model_validate({**rcfg.model_dump(), **overrides, "teacher_config": None})
    tmp = Path(tempfile.mkdtemp(prefix="kdflow-refresh-bench-"))
    paths = write_mnist1d(tmp, transfer_size=0)
    old = {name: split(paths[name], name) for name in ("train", "val", "test")}
    shape = old["train"].input_shape

    def train(x, y, xv, yv, model=None, cfg=None):
        if model is None:  # fit seeds the training order; the initial weights are seeded here, so runs repeat
            torch.manual_seed(tcfg.train.seed)
            model = build_model(tcfg.model.arch, tcfg.model.args, shape, 10)
        t0 = time.perf_counter()
        cfg = cfg or tcfg.train.model_copy(update={"checkpoint_every_epochs": None})
        res = fit(model, ArraySource(x, y), xv, yv, cfg, progress=False)
        return model, time.perf_counter() - t0, res.best_epoch

    base, base_s, _ = train(old["train"].x, old["train"].y, old["val"].x, old["val"].y)
    base_test = accuracy(predict_logits(base, old["test"].x), old["test"].y)
    print(f"base teacher: test {base_test:.4f} ({base_s:.1f} s)", flush=True)
    out: dict[str, Any] = {"base_teacher": {"test_accuracy": base_test, "seconds": base_s}, "regimes": {}}
    for regime in args.regimes.split(","):
        onset, end = ONSETS[regime]
        judged_days = list(range(onset + JUDGED_AFTER_DAYS, end))
        jx, jy = draw(judged_days, JUDGED_ROWS_PER_DAY * len(judged_days), SEEDS["judged"])
        ox, oy = draw(judged_days, ORACLE_ROWS, SEEDS["oracle"])
        ovx, ovy = draw(judged_days, ORACLE_VAL_ROWS, SEEDS["oracle"] + 1)
        oracle, oracle_s, _ = train(ox, oy, ovx, ovy)
        rec: dict[str, Any] = {
            "judged_days": [judged_days[0], judged_days[-1]],
            "judged_rows": len(jy),
            "base_teacher_judged": accuracy(predict_logits(base, jx), jy),
            "oracle_judged": accuracy(predict_logits(oracle, jx), jy),
            "oracle_seconds": oracle_s,
            "refreshes": [],
        }
        print(f"{regime}: base {rec['base_teacher_judged']:.4f}, oracle {rec['oracle_judged']:.4f} on days "
              f"{judged_days[0]}-{judged_days[-1]} ({len(jy)} rows)", flush=True)  # fmt: skip
        for rows in (int(r) for r in args.rows.split(",")):
            days = list(range(onset, onset + -(-rows // args.labels_per_day)))
            x, y = draw(days, rows, SEEDS["recent"])
            recent = Dataset("recent_labeled", f"{regime} days {days[0]}-{days[-1]}", np.arange(rows), x, y)
            for mode in args.modes.split(","):
                cfg = rcfg.model_copy(update={"mode": mode})
                data = prepare_refresh_data(recent, old["train"], old["val"], cfg)
                parent = build_model(tcfg.model.arch, tcfg.model.args, shape, 10)
                parent.load_state_dict(base.state_dict())
                torch.manual_seed(rcfg.seed)  # a retrain's fresh weights
                model = refresh_model(mode, parent, tcfg.model, shape, 10)
                model, secs, best = train(data.train.x, data.train.y, data.val.x, data.val.y, model,
                                          refresh_train_config(cfg, tcfg.train))  # fmt: skip
                verdict = score_refresh(model, base, data.holdout, old["test"], cfg)
                item = {
                    "mode": mode, "recent_rows": rows, "days": [days[0], days[-1]], "rows": data.rows,
                    "seconds": secs, "best_epoch": best, "judged": accuracy(predict_logits(model, jx), jy),
                    "old_test": verdict.test_accuracy, "holdout": verdict.holdout_accuracy,
                    "champion_holdout": verdict.champion_holdout_accuracy, "promote": verdict.promote,
                }  # fmt: skip
                item["gap_to_oracle_points"] = (rec["oracle_judged"] - item["judged"]) * 100
                rec["refreshes"].append(item)
                print(f"  {mode:8s} {rows:5d} rows (days {days[0]}-{days[-1]}): judged {item['judged']:.4f} "
                      f"(oracle gap {item['gap_to_oracle_points']:+.2f} pts), held-out {item['holdout']:.4f} vs "
                      f"{item['champion_holdout']:.4f}, old test {item['old_test']:.4f}, "
                      f"promote {item['promote']}, {secs:.1f} s", flush=True)  # fmt: skip
        out["regimes"][regime] = rec
    out["machine"] = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "load_end": load_avg()}
    out["teacher_refresh_config"] = rcfg.model_dump(mode="json")
    out["overrides"] = overrides
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    sys.exit(main())
