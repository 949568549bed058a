"""bench/gpu.py runs end to end: without CUDA it refuses with a message (exit 2) or, with --allow-cpu, runs its CPU
rows at tiny sizes and writes its JSON (exit 0). Its figures are measured by the script, never asserted here."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import run_bench


def run(*args: str) -> subprocess.CompletedProcess:
    return run_bench("gpu.py", *args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal is not reachable")
def test_without_cuda_it_refuses_with_a_message_unless_allowed():
    proc = run("--rows", "100")
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--allow-cpu" in proc.stderr


def test_the_cpu_rows_run_and_write_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("--rows", "3000", "--train-rows", "2000", "--epochs", "2", "--allow-cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] == torch.__version__ and "kdflow_cpu" in result["precompute"]
    assert result["precompute"]["kdflow_cpu"]["rows"] == 3000 and result["student"]["kdflow_array_cpu"]["epoch_s"] > 0
    if not torch.cuda.is_available():
        assert result["gpu_skipped"] and result["goals"] == {} and "SKIPPED" in proc.stdout
