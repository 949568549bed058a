"""How much ECE a perfectly calibrated model shows on a finite sample (a benchmark script, not a test).

ECE (15 equal-width bins, :func:`kdflow.calibration.expected_calibration_error`) is a biased estimator: on n
rows drawn from a model that is calibrated by construction (labels sampled from its own probabilities), the
measured ECE is positive and shrinks roughly as 1/sqrt(n). This sets how many labeled rows a recalibration
window needs before ``ECE <= sla.max_ece`` can be shown at all.

World: 10 classes, logits ``a * N(0, 1)`` with ``1.5 a`` added to class 0, labels drawn from softmax(logits);
``a`` sets the accuracy (about 0.93, 0.86 and 0.73 for a = 12, 6 and 3). For each (a, n): ``--replicates``
independent samples; the mean and the 90th percentile of the measured ECE.

Run (from the repository root)::

    .venv/bin/python bench/ece_noise.py --json bench/results/ece_noise.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
from _common import cpu_model, load_avg, write_json  # bench/ is on sys.path as the script's folder

SCALES = (12.0, 6.0, 3.0)
SIZES = (250, 500, 1000, 2000, 4000, 8000, 15000)


def calibrated_sample(n: int, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n, 10) and labels drawn from them: calibrated by construction."""
    z = rng.normal(0.0, 1.0, (n, 10)) * scale
    z[:, 0] += 1.5 * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF draw per row
    return p, np.minimum(y, 9)


def main(argv: list[str] | None = None) -> int:
    from kdflow.calibration import expected_calibration_error

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for scale in SCALES:
        for n in SIZES:
            eces, accs = [], []
            for _ in range(args.replicates):
                p, y = calibrated_sample(n, scale, rng)
                eces.append(expected_calibration_error(p, y, 15))
                accs.append(float((p.argmax(1) == y).mean()))
            row = {
                "scale": scale,
                "rows": n,
                "accuracy": float(np.mean(accs)),
                "ece_mean": float(np.mean(eces)),
                "ece_p90": float(np.quantile(eces, 0.9)),
            }
            rows.append(row)
            print(
                f"a={scale:4.1f} accuracy {row['accuracy']:.3f} n={n:6d}: ECE mean {row['ece_mean']:.4f} "
                f"p90 {row['ece_p90']:.4f}",
                flush=True,
            )
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "ECE of a calibrated model on finite samples (15 bins)",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": {"cpu": cpu_model(), "python": platform.python_version(), "load_average": load_avg()},
                "replicates": args.replicates,
                "seed": args.seed,
                "results": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
