"""bench/logits_dask.py runs end to end at a tiny size, both modes, data on moto S3: both write the same shards
and report rows/s and per-process peaks. Its figures are measured by the script, never asserted here."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.slow


def test_both_modes_run_on_s3_and_write_identical_shards(tmp_path):
    out = tmp_path / "dask.json"
    args = ["--rows", "30000", "--rows-per-file", "20000", "--row-group", "4096", "--rows-per-shard", "8192"]
    proc = run_bench("logits_dask.py", *args, "--teacher", "mlp", "--s3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["identical_shards"]
    threads, dask = result["modes"]["threads"], result["modes"]["dask"]
    assert threads["rows"] == dask["rows"] == 30000 and threads["shards"] == dask["shards"] == 4
    assert len(dask["worker_peak_mib"]) == 2 and all(v > 0 for v in dask["worker_peak_mib"].values())
    assert dask["worker_env"] and all(v is None for v in dask["worker_env"].values())  # MALLOC_TRIM_THRESHOLD_ unset
