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
    assert done.returncode == 0, f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"


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


PASS_WORKER = Path(__file__).with_name("pass_worker.py")


def test_teacher_passes_on_two_processes_match_one(tmp_path):
    from conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n=7)  # an odd count: the shares differ in size
    run([sys.executable, str(PASS_WORKER), str(tmp_path / "one"), str(corpus)], {"CUDA_VISIBLE_DEVICES": ""})
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(PASS_WORKER), str(tmp_path / "two"), str(corpus)])
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one["world"] == 1 and two["world"] == 2
    assert two["pseudo"] == one["pseudo"] and len(one["pseudo"]) == 7
    assert two["cache"] == one["cache"] and len(one["cache"]) == 7  # same examples, same tensors
    assert two["evaluate"] == one["evaluate"]
    progress = sorted(p.name for p in (tmp_path / "two" / "progress").glob("*.jsonl"))
    assert progress == ["pseudo_labels.rank0.jsonl", "pseudo_labels.rank1.jsonl"]  # each process wrote its share
    assert {p.name.split("_")[1] for p in (tmp_path / "two" / "cache").glob("shard_*")} == {"p000", "p001"}


def test_cli_commands_under_torchrun_write_what_one_process_writes(tmp_path):
    """The commands users launch themselves: `pseudo-label` and `evaluate` on 2 processes, each a clean exit."""
    from datasets import load_from_disk

    from conftest import ctc_processor, tiny_ctc, write_corpus

    for name, layers in (("teacher", 4), ("student", 2)):
        tiny_ctc(num_hidden_layers=layers).save_pretrained(tmp_path / name)
        ctc_processor(tmp_path).save_pretrained(tmp_path / name)
    write_corpus(tmp_path / "corpus" / "train", n=7)  # an odd count: the shares differ in size
    common = ["--teacher", str(tmp_path / "teacher"), "--dataset", str(tmp_path / "corpus"), "--split", "train"]
    commands = {"pl": ["pseudo-label", *common, "--batch_size", "2", "--max_wer", "none"],
                "eval": ["evaluate", *common, "--student", str(tmp_path / "student"), "--batch_size", "2",
                         "--repeats", "1", "--warmup", "0"]}
    for name, command in commands.items():
        cli = ["-m", "hf_asr_distill.cli", *command]
        run([sys.executable, *cli, "--output_dir", str(tmp_path / f"{name}1")], {"CUDA_VISIBLE_DEVICES": ""})
        run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
             f"--master_port={free_port()}", *cli, "--output_dir", str(tmp_path / f"{name}2")])
    one, two = (load_from_disk(str(tmp_path / f"pl{n}" / "dataset")) for n in (1, 2))
    assert len(one) == 7 and two["pseudo_text"] == one["pseudo_text"] and two["text"] == one["text"]
    one, two = (json.loads((tmp_path / f"eval{n}" / "report.json").read_text())["results"] for n in (1, 2))
    assert [r["scores"] for r in two] == [r["scores"] for r in one] and one[0]["scores"]["wer"] > 0


def test_killed_two_process_pseudo_labelling_resumes_without_loss_or_duplicates(tmp_path):
    import signal
    import time

    from conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n=12)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(PASS_WORKER), str(tmp_path / "run"), str(corpus), "pseudo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW": "1.0", "BATCH": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    progress = tmp_path / "run" / "progress"
    deadline = time.time() + 120

    def lines():
        return [line for p in progress.glob("*.jsonl") for line in p.read_text().splitlines()]

    while (not progress.exists() or len(lines()) < 4) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # both processes, in the middle of the pass
    proc.wait()
    before = len(lines())
    assert 4 <= before < 12, before
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(PASS_WORKER), str(tmp_path / "run"), str(corpus), "pseudo"],
        {"BATCH": "1"})
    indices = [json.loads(line)["index"] for line in lines()]
    assert sorted(indices) == list(range(12))  # every row once: none lost, none transcribed twice
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["pseudo"]) == 12


def test_a_nan_on_one_process_stops_or_skips_on_every_process_in_seconds(tmp_path):
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAN_RANK": "1", "NAN_STEP": "2"}
    start = time.time()
    stopped = subprocess.run(torchrun(2, tmp_path / "stop", 2), capture_output=True, text=True, timeout=300, env=env)
    assert stopped.returncode != 0 and time.time() - start < 120  # not the 30-minute collective timeout
    assert stopped.stderr.count("The distillation loss is not finite (process 1: examples") >= 2  # both processes
    run(torchrun(2, tmp_path / "skip", 2), {"NAN_RANK": "1", "NAN_STEP": "2", "NONFINITE": "skip"})
    rank0 = json.loads((tmp_path / "skip" / "summary_rank0.json").read_text())
    rank1 = json.loads((tmp_path / "skip" / "summary_rank1.json").read_text())
    assert rank0["skipped"] == rank1["skipped"] == 1 and rank0["finite"] and rank1["finite"]
    assert rank0["student"] == rank1["student"] and len(rank0["losses"]) == 3


def _kill_one_process_when(folder: Path, ready, cmd: list[str], env: dict) -> None:
    """Start a 2-process run, wait until `ready()`, SIGKILL one of its two workers; torchrun ends the other."""
    import signal
    import time

    log = folder.parent / f"{folder.name}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready(), f"the run never reached the point to kill it (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        os.kill(int((folder / "pid_rank1").read_text()), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0


@pytest.mark.slow
def test_training_survives_a_killed_process_and_resumes_from_the_last_complete_checkpoint(tmp_path):
    env = {"MAX_STEPS": "6", "SAVE_STEPS": "1", "OPTIM": "adamw_torch"}
    run(torchrun(2, tmp_path / "full", 2), env)
    killed = tmp_path / "killed"
    _kill_one_process_when(killed, lambda: (killed / "checkpoint-3" / "trainer_state.json").exists(),
                           torchrun(2, killed, 2), {**env, "SLOW": "1.0"})
    assert not (killed / "checkpoint-6").exists()
    run(torchrun(2, killed, 2), {**env, "RESUME": "last"})
    full = json.loads((tmp_path / "full" / "summary_rank0.json").read_text())
    resumed = json.loads((killed / "summary_rank0.json").read_text())
    np.testing.assert_allclose(resumed["losses"], full["losses"], rtol=1e-5)
    for key, value in full["student"].items():
        np.testing.assert_allclose(resumed["student"][key], value, rtol=1e-5, atol=1e-7)
    for key, value in full["projection_values"].items():
        np.testing.assert_allclose(resumed["projection_values"][key], value, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_cache_building_survives_a_killed_process_and_resumes_without_loss(tmp_path):
    from conftest import write_corpus

    corpus = write_corpus(tmp_path / "corpus", n=12)
    run([sys.executable, str(PASS_WORKER), str(tmp_path / "one"), str(corpus), "cache"], {"BATCH": "1"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(PASS_WORKER), str(tmp_path / "two"), str(corpus), "cache"]
    folder = tmp_path / "two"

    # process 1 writes 2 of its 6 batches and waits; process 0 writes its 6 and waits for it at the end
    def ready() -> bool:
        index0 = folder / "cache" / "index.p000.jsonl"
        return (folder / "hanging_rank1").exists() and index0.exists() and len(index0.read_text().splitlines()) == 6

    _kill_one_process_when(folder, ready, cmd, {"BATCH": "1", "SLOW": "0.1", "HANG_AFTER": "2"})
    index = [line for p in (folder / "cache").glob("index.p*.jsonl") for line in p.read_text().splitlines()]
    assert len(index) == 8
    run(cmd[:5] + [f"--master_port={free_port()}"] + cmd[6:], {"BATCH": "1"})
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["cache"]
    two = json.loads((folder / "summary.json").read_text())["cache"]
    assert two == one and len(two) == 12  # every example, once, with the same tensors
