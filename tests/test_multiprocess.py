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
    assert rank0["teacher_partitioned"] == 0
    assert rank0["projections"] == rank1["projections"]  # projection gradients are synchronised
    assert rank0["student"] == rank1["student"]
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-4)
    np.testing.assert_allclose(rank0["kd"], single["kd"], rtol=1e-4)
    for key, value in single["student"].items():
        np.testing.assert_allclose(rank0["student"][key], value, rtol=1e-4, atol=1e-6)


def torchrun(nproc: int, out_dir: Path, per_device_batch: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(WORKER), str(out_dir), str(per_device_batch)]


@pytest.mark.parametrize("stage,bf16", [(2, False), (3, False), (3, True)])
def test_deepspeed_zero_two_processes_match_one(tmp_path, stage, bf16):
    # output-layer and hidden-state KD: the projections, outside the student, have their own optimizer
    run([sys.executable, str(WORKER), str(tmp_path / "single"), "4"], {"CUDA_VISIBLE_DEVICES": ""})
    run(torchrun(2, tmp_path / "ds", 2), {"DS_STAGE": str(stage), "BF16": "1" if bf16 else "0"})
    single = json.loads((tmp_path / "single" / "summary_rank0.json").read_text())
    rank0 = json.loads((tmp_path / "ds" / "summary_rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ds" / "summary_rank1.json").read_text())
    assert rank0["world"] == 2
    if stage == 3:  # the teacher's weights are partitioned across the processes, in an engine of its own
        assert rank0["teacher_wrapped"] == "DeepSpeedEngine" and rank0["teacher_partitioned"] > 0
    else:  # ZeRO-2 shards optimizer state and gradients: a frozen teacher is a plain replica
        assert rank0["teacher_wrapped"] == "WhisperForConditionalGeneration" and rank0["teacher_partitioned"] == 0
    assert rank0["student"] == rank1["student"]
    assert rank0["projections"] == rank1["projections"]
    if bf16:  # DeepSpeed's bf16 weights and the fp32 run agree to bf16's precision
        np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-3)
        return
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-4)
    np.testing.assert_allclose(rank0["kd"], single["kd"], rtol=1e-4)
    for key, value in single["student"].items():
        np.testing.assert_allclose(rank0["student"][key], value, rtol=1e-4, atol=1e-6)
    for key, value in single["projection_values"].items():
        np.testing.assert_allclose(rank0["projection_values"][key], value, rtol=1e-4, atol=1e-6)


def test_deepspeed_resume_restores_the_projections(tmp_path):
    # DeepSpeed resumes through its own checkpoint loader, never through Trainer's _load_from_checkpoint: the
    # projections (and their Adam state) must still come back, or they restart from their initial values.
    env = {"DS_STAGE": "2", "MAX_STEPS": "4", "SAVE_STEPS": "2", "OPTIM": "adamw_torch"}
    run(torchrun(2, tmp_path / "full", 2), env)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "projections.safetensors").exists() and (checkpoint / "projections_optimizer.pt").exists()
    run(torchrun(2, tmp_path / "resumed", 2), {**env, "RESUME": str(checkpoint)})
    full = json.loads((tmp_path / "full" / "summary_rank0.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "summary_rank0.json").read_text())
    assert len(resumed["losses"]) == 4  # steps 1-2 from the checkpoint's log history, 3-4 trained again
    np.testing.assert_allclose(resumed["losses"], full["losses"], rtol=1e-5)
    for key, value in full["projection_values"].items():
        np.testing.assert_allclose(resumed["projection_values"][key], value, rtol=1e-5, atol=1e-7)
    for key, value in full["student"].items():
        np.testing.assert_allclose(resumed["student"][key], value, rtol=1e-5, atol=1e-7)


def test_unverified_backend_combinations_are_refused_with_the_reason(tmp_path):
    # FSDP does not run on CPU and fp16 needs a GPU, so this checks the rule itself.
    from hf_asr_distill import DistillationConfig
    from hf_asr_distill.trainer import check_backend

    hidden = DistillationConfig(output_dir=str(tmp_path), alpha_hidden=1.0, report_to="none")
    with pytest.raises(NotImplementedError, match="not available under FSDP yet"):
        check_backend(hidden, deepspeed=False, fsdp=True)
    hidden.fp16 = True
    with pytest.raises(NotImplementedError, match="not available under DeepSpeed with fp16 yet"):
        check_backend(hidden, deepspeed=True, fsdp=False)
    check_backend(hidden, deepspeed=False, fsdp=False)  # DDP or one process
    hidden.fp16 = False
    check_backend(hidden, deepspeed=True, fsdp=False)  # DeepSpeed in bf16 or fp32
    output_kd = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    check_backend(output_kd, deepspeed=False, fsdp=True)
