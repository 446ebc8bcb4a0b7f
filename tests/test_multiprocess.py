"""Two processes (gloo, CPU) under torchrun give the same training as one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_match_one(tmp_path):
    run([sys.executable, str(WORKER), str(tmp_path / "single"), "4"], {"CUDA_VISIBLE_DEVICES": ""})
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(WORKER), str(tmp_path / "ddp"), "2"])
    single = json.loads((tmp_path / "single" / "summary_rank0.json").read_text())
    rank0 = json.loads((tmp_path / "ddp" / "summary_rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ddp" / "summary_rank1.json").read_text())
    assert single["world"] == 1 and rank0["world"] == 2
    assert rank0["teacher_wrapped"] == "WhisperForConditionalGeneration"  # not wrapped in DDP
    assert rank0["projections"] == rank1["projections"]  # projection gradients are synchronised
    assert rank0["student"] == rank1["student"]
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-4)
    np.testing.assert_allclose(rank0["kd"], single["kd"], rtol=1e-4)
    for key, value in single["student"].items():
        np.testing.assert_allclose(rank0["student"][key], value, rtol=1e-4, atol=1e-6)
