"""bench/stream.py runs end to end at a tiny size: four modes (local and S3 behind the latency proxy, each read
when due and read ahead), every mode gives the training loop the same batches and copies nothing to disk. Its timings are
measured by the script, never asserted here."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.slow


def test_every_mode_gives_the_same_batches_and_reports_its_input_wait(tmp_path):
    out = tmp_path / "stream.json"
    args = ["--rows", "16384", "--row-group", "4096", "--epochs", "2", "--latency", "0.01", "--json", str(out)]
    proc = run_bench("stream.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["identical_batches"]  # the weights are reported, not asserted: kernels may round per process
    modes = [(r["storage"], r["prefetch_buffers"]) for r in result["results"]]
    assert modes == [("local", 0), ("local", 2), ("s3", 0), ("s3", 2)]
    for row in result["results"]:
        assert row["files_left_in_tmpdir"] == []  # nothing copied to disk
        assert [e["epoch"] for e in row["epochs"]] == [1.0, 2.0]
        assert all(0 <= e["input_wait_seconds"] <= e["epoch_seconds"] for e in row["epochs"])
        # per epoch 4 row groups and 4 shards, plus the footer and manifest: through the proxy only on S3
        assert (row["requests"] >= 16) if row["storage"] == "s3" else (row["requests"] == 0)
