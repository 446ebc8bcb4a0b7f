"""Faults and bad input: each gets a clear error before work is wasted, or is survived without loss."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import ctc_processor, ctc_rows, tiny_ctc, tiny_real_whisper, whisper_processor, write_corpus
from helpers import make_args, make_trainer
from hf_asr_distill import DistillationTrainer, collator_for, make_student
from hf_asr_distill.data import load_speech_dataset, prepare_dataset

WORKER = Path(__file__).with_name("train_worker.py")


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(WORKER), str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "killed"), "-", "1.0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "out" / "checkpoint-3"
    deadline = time.time() + 120
    while not (checkpoint / "projections.safetensors").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # let the checkpoint finish (trainer_state.json is written last)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it was killed"
    resume = sorted((tmp_path / "killed" / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [c for c in resume if (c / "trainer_state.json").exists() and (c / "projections.safetensors").exists()]
    subprocess.run([sys.executable, str(WORKER), str(tmp_path / "killed"), str(complete[-1])], check=True, env=env,
                   capture_output=True)
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for key, value in full.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)
    p_full = torch.load(tmp_path / "full" / "projections.pt")
    p_res = torch.load(tmp_path / "killed" / "projections.pt")
    for key, value in p_full.items():
        torch.testing.assert_close(p_res[key], value, rtol=0, atol=1e-6)
    opt_full = torch.load(tmp_path / "full/out/checkpoint-6/optimizer.pt", weights_only=True)["state"]
    opt_res = torch.load(tmp_path / "killed/out/checkpoint-6/optimizer.pt", weights_only=True)["state"]
    for index, state in opt_full.items():
        for name, tensor in state.items():
            torch.testing.assert_close(opt_res[index][name], tensor, rtol=0, atol=1e-6)


def test_whisper_window_longer_than_the_student_accepts(tmp_path):
    processor = whisper_processor(tmp_path)
    teacher = tiny_real_whisper(processor)
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "max_source_positions": 25})
    student, _ = make_student(teacher, student_config=config)
    with pytest.raises(ValueError, match="makes 100 log-mel frames, but the student accepts 50"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path), processing_class=processor,
                            train_dataset=[], data_collator=collator_for(processor, student))


def test_ctc_labels_longer_than_the_frames(tmp_path):
    folder = write_corpus(tmp_path / "c", n=2)
    sf.write(folder / "clip0.wav", np.full(40, 0.1, np.float32), 16000)  # 2.5 ms: two frames
    ds = load_speech_dataset(str(folder))
    with pytest.raises(ValueError, match="row 0: 7 labels but only 2 CTC frames .* infinite"):
        prepare_dataset(ds, ctc_processor(tmp_path), tiny_ctc())
    _, stats = prepare_dataset(ds, ctc_processor(tmp_path), tiny_ctc(), on_error="skip")
    assert stats.labels_too_long == 1 and stats.kept == 1


def test_a_nan_batch_is_reported_with_its_example_ids(tmp_path):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows())
    batch = collator_for(ctc_processor(tmp_path), student)([{**r, "example_id": i} for i, r in
                                                            enumerate(ctc_rows(2))])
    batch["input_values"][1, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not finite .* examples \[0, 1\]"):
        trainer.compute_loss(student.train(), batch)


def test_hub_token_from_the_environment_never_reaches_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENVSECRETTOKEN")
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows(), save_strategy="steps", save_steps=1,
                           max_steps=2)
    trainer.train()
    trainer.save_model()
    trainer.model_card("me/student").save(tmp_path / "out" / "README.md")
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert b"hf_ENVSECRETTOKEN" not in path.read_bytes(), path


SECRET = "hf_CLISECRETTOKEN42"


class _Uploads:
    """HfApi's uploads captured: every folder and file that would leave the machine, read at upload time."""

    def __init__(self, monkeypatch):
        from concurrent.futures import Future

        from huggingface_hub import HfApi

        self.blobs: list[tuple[str, bytes]] = []

        def done(result=None):
            future = Future()
            future.set_result(result)
            return future

        def upload_folder(api, folder_path=None, run_as_future=False, allow_patterns=None, ignore_patterns=None,
                          **kwargs):
            from huggingface_hub.utils import filter_repo_objects

            files = [p for p in Path(folder_path).rglob("*") if p.is_file()]
            names = set(filter_repo_objects([str(p.relative_to(folder_path)) for p in files],
                                            allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            self.blobs += [(str(p), p.read_bytes()) for p in files if str(p.relative_to(folder_path)) in names]
            return done() if run_as_future else None

        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        from huggingface_hub import RepoUrl

        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
        monkeypatch.setattr(HfApi, "whoami", lambda api, **kw: {"name": "me"})


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint", "all_checkpoints", "end"])
def test_no_secret_in_any_uploaded_or_saved_byte(tmp_path, monkeypatch, strategy):
    uploads = _Uploads(monkeypatch)
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    processor = ctc_processor(tmp_path)
    args = make_args(tmp_path, alpha_hidden=1.0, save_strategy="steps", save_steps=1, max_steps=2, push_to_hub=True,
                     hub_model_id="me/tiny", hub_token=SECRET, hub_strategy=strategy)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                  train_dataset=ctc_rows(), data_collator=collator_for(processor, student))
    trainer.train()
    trainer.push_to_hub()
    assert trainer.args.hub_token == SECRET  # still there in memory for the uploads
    assert uploads.blobs and any(name.endswith("model.safetensors") for name, _ in uploads.blobs)
    if strategy != "end":  # Trainer's own checkpoint pushes upload training_args.bin: pickled without the token
        assert any(name.endswith("training_args.bin") for name, _ in uploads.blobs)
    saved = [(str(p), p.read_bytes()) for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for name, data in uploads.blobs + saved:
        assert SECRET.encode() not in data, name


def test_a_token_on_the_command_line_with_push_to_hub_never_leaves_memory(tmp_path, monkeypatch):
    from hf_asr_distill.cli import main

    uploads = _Uploads(monkeypatch)
    teacher = tiny_ctc()
    teacher.save_pretrained(tmp_path / "teacher")
    ctc_processor(tmp_path).save_pretrained(tmp_path / "teacher")
    write_corpus(tmp_path / "corpus" / "train", n=8)
    main(["distill", "--teacher", str(tmp_path / "teacher"), "--num_hidden_layers", "2", "--dataset",
          str(tmp_path / "corpus"), "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--save_steps", "1",
          "--push_to_hub", "true", "--hub_model_id", "me/tiny", "--hub_token", SECRET, "--report_to", "none",
          "--per_device_train_batch_size", "4", "--disable_tqdm", "true"])
    main(["push", "--student", str(tmp_path / "run"), "--repo_id", "me/tiny"])
    saved = [(str(p), p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert uploads.blobs and len(saved) > 10
    for name, data in uploads.blobs + saved:
        assert SECRET.encode() not in data, name


def test_pickled_arguments_drop_the_token_but_copies_keep_it(tmp_path):
    import copy
    import pickle

    args = make_args(tmp_path, hub_token=SECRET)
    assert pickle.loads(pickle.dumps(args)).hub_token is None
    assert copy.deepcopy(args).hub_token == SECRET and args.hub_token == SECRET


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    import errno

    def run(name, **kw):
        teacher = tiny_ctc()
        student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
        return make_trainer(tmp_path / name, teacher, student, ctc_rows(16), alpha_hidden=1.0, max_steps=6,
                            save_strategy="steps", save_steps=2, per_device_train_batch_size=2, **kw)

    full = run("full")
    full.train()
    broken = run("broken")
    real_save = torch.save

    def disk_full_at_step_4(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    with pytest.raises(OSError, match="No space left on device"):
        broken.train()
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint_4 = tmp_path / "broken" / "out" / "checkpoint-4"
    assert checkpoint_4.exists() and not (checkpoint_4 / "trainer_state.json").exists()  # half written
    resumed = run("broken")
    resumed.train(resume_from_checkpoint=True)  # passes over checkpoint-4, resumes from checkpoint-2
    assert resumed.state.global_step == 6
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    for key, value in full.projections.state_dict().items():
        torch.testing.assert_close(resumed.projections.state_dict()[key], value, rtol=0, atol=1e-6)
