"""bench/out_of_core.py runs end to end at a tiny size: the real precompute flow in memory and out of core, in fresh
processes, gives the same transfer store (same key: same fingerprint; same shard checksums). Its timings and memory
figures are measured by the script, never asserted here."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_bench

pytestmark = pytest.mark.slow


def test_both_modes_store_the_same_transfer_logits(tmp_path):
    out = tmp_path / "out_of_core.json"
    proc = run_bench(
        "out_of_core.py", "--rows", "30000", "--rows-per-file", "20000", "--row-group", "4096", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stores_identical"] and set(result["results"]) == {"in_memory", "out_of_core"}
    for mode, row in result["results"].items():
        assert row["stats"]["transfer"]["rows_computed"] == 30000, mode
        assert row["vmhwm_mib"] > 0 and row["seconds"] > 0
