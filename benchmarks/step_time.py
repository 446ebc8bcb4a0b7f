"""Trainer overhead and caches: time one optimisation step of each kind on the same batch, in one run.

    python benchmarks/step_time.py --teacher openai/whisper-tiny.en [--batch 4] [--device cuda] [--teacher_dtype bf16]

Each kind of step runs in turn, `--repeats` rounds, and the fastest time of each counts (timings on a shared
CPU drift; interleaving exposes all kinds to the same drift). Ratios printed (targets from the project's issues):
  KD step / (plain student step + teacher forward alone)              target <= 1.05  (the rest is waste)
  KD step, frozen shared encoder / same student, encoder recomputed     target <= 0.6
  teacher forward bf16 / fp32
  peak memory KD step / plain step
  step reading the top-k cache / plain student step                     target <= 1.10
  KD step with the encoder-output cache / frozen encoder recomputed     target <= 0.3
--teacher_dtype sets the teacher of every KD step and of the "teacher forward" baseline of the first ratio.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile

import torch

from common import base_parser, corpus, interleaved, machine, table, teacher_and_data
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import cache_teacher
from hf_asr_distill.evaluation import PeakMemory
from hf_asr_distill.teacher import TEACHER_DTYPES


def make_step(trainer: DistillationTrainer, batch: dict):
    optimizer = trainer.create_optimizer()
    trainer.model.train()
    items = batch["labels"].ne(-100).sum()

    def step():
        trainer.training_step(trainer.model, batch, items)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.model.zero_grad(set_to_none=True)

    return step


def probe_memory(cli, kind: str) -> float:
    """Peak memory (MiB above the start of the step) of one steady-state step, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--teacher", cli.teacher, "--corpus", cli.corpus, "--device", cli.device,
           "--batch", str(cli.batch), "--teacher_dtype", cli.teacher_dtype, "--probe", kind]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def run_probe(cli) -> None:
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus))
    device = torch.device(cli.device)
    student, _ = make_student(teacher, decoder_layers=2)
    kd = cli.probe == "kd"
    args = DistillationConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=device.type == "cpu",
                              per_device_train_batch_size=cli.batch, alpha_kd=1.0 if kd else 0.0,
                              alpha_ce=0.8 if kd else 1.0, teacher_dtype=cli.teacher_dtype)
    trainer = DistillationTrainer(model=student, teacher_model=teacher if kd else None, args=args,
                                  processing_class=processor, train_dataset=data,
                                  data_collator=collator_for(processor, student))
    batch = {k: v.to(device) for k, v in collator_for(processor, student)([data[i] for i in range(cli.batch)]).items()}
    step = make_step(trainer, batch)
    step()  # optimizer state exists from here on
    with PeakMemory(device) as memory:
        step()
    print(memory.peak / 2**20)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--teacher_dtype", default="fp32", choices=list(TEACHER_DTYPES),
                        help="dtype of the teacher in the KD steps")
    parser.add_argument("--probe", choices=["plain", "kd"], help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.probe:
        return run_probe(cli)
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus))
    device = torch.device(cli.device)
    rows = [data[i] for i in range(cli.batch)]

    def trainer_for(student, teacher_model, tmp, **kw):
        kw.setdefault("teacher_dtype", cli.teacher_dtype)
        args = DistillationConfig(output_dir=tmp, report_to="none", use_cpu=device.type == "cpu",
                                  learning_rate=1e-5, per_device_train_batch_size=cli.batch, **kw)
        # each trainer casts its own copy: the fp32 teacher stays the source of every student
        teacher_model = copy.deepcopy(teacher_model) if teacher_model is not None else None
        return DistillationTrainer(model=student, teacher_model=teacher_model, args=args, processing_class=processor,
                                   train_dataset=data, data_collator=collator_for(processor, student))

    tmp = tempfile.mkdtemp()
    batch = {k: v.to(device) for k, v in collator_for(processor, teacher)(rows).items()}
    trainable, _ = make_student(teacher, decoder_layers=2)
    frozen, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    plain = trainer_for(trainable, None, tmp, alpha_kd=0.0, alpha_ce=1.0)
    plain_frozen = trainer_for(frozen, None, tmp, alpha_kd=0.0, alpha_ce=1.0)
    kd = trainer_for(make_student(teacher, decoder_layers=2)[0], teacher, tmp)
    shared = trainer_for(frozen, teacher, tmp)
    assert shared.share_encoder
    unshared = trainer_for(frozen, teacher, tmp, share_frozen_encoder=False)
    teacher_inputs = {"input_features": batch["input_features"],
                      "decoder_input_ids": torch.where(batch["labels"] < 0, 0, batch["labels"])}
    # the teacher alone, in fp32, bf16 and the KD steps' dtype
    teachers = {name: copy.deepcopy(teacher).to(device, TEACHER_DTYPES[name]).eval()
                for name in dict.fromkeys(("fp32", "bf16", cli.teacher_dtype))}

    def teacher_forward(model):
        with torch.no_grad():
            model(input_features=teacher_inputs["input_features"].to(model.dtype),
                  decoder_input_ids=teacher_inputs["decoder_input_ids"])

    # caches: top-k (k = 8) for a trainable student, encoder outputs for a frozen one
    cached_batch = {**batch, "example_id": torch.arange(cli.batch, device=device)}
    topk = cache_teacher(teacher, processor, data, tmp + "/topk", k=8, progress=False)
    enc = cache_teacher(teacher, processor, data, tmp + "/enc", k=8, encoder_outputs=True, progress=False)

    def cached_trainer(student, cache):
        args = DistillationConfig(output_dir=tmp, report_to="none", use_cpu=device.type == "cpu",
                                  learning_rate=1e-5, per_device_train_batch_size=cli.batch,
                                  teacher_dtype=cli.teacher_dtype)
        return DistillationTrainer(model=student, teacher_model=copy.deepcopy(teacher), args=args,
                                   processing_class=processor, train_dataset=data,
                                   data_collator=collator_for(processor, student), teacher_cache=cache)

    steps = {
        "plain student step": make_step(plain, batch),
        "plain step, frozen encoder": make_step(plain_frozen, batch),
        **{f"teacher forward {name}": (lambda m=model: teacher_forward(m)) for name, model in teachers.items()},
        "KD step": make_step(kd, batch),
        "KD step, frozen shared encoder": make_step(shared, batch),
        "KD step, frozen encoder recomputed": make_step(unshared, batch),
        "step from top-k cache": make_step(cached_trainer(make_student(teacher, decoder_layers=2)[0], topk),
                                           cached_batch),
        "KD step from encoder cache": make_step(cached_trainer(make_student(teacher, decoder_layers=2,
                                                                            freeze_encoder=True)[0], enc),
                                                cached_batch),
    }
    results = interleaved(steps, cli.repeats, cli.warmup, cli.device)
    memory = {kind: probe_memory(cli, kind) for kind in ("plain", "kd")}

    print(f"\nWhisper teacher {cli.teacher} ({cli.teacher_dtype} in the KD steps), student: 2 decoder layers; "
          f"batch {cli.batch} x 30 s; {machine()}\n")
    print(table(["step", "seconds (fastest of interleaved runs)"], [[k, f"{v:.3f}"] for k, v in results.items()]))
    r = results
    ratios = [
        ["KD step / (plain step + teacher forward)", r["KD step"] / (r["plain student step"] + r[
            f"teacher forward {cli.teacher_dtype}"]), "<= 1.05"],
        ["frozen shared encoder / recomputed", r["KD step, frozen shared encoder"]
         / r["KD step, frozen encoder recomputed"], "<= 0.6"],
        ["teacher bf16 / fp32 forward", r["teacher forward bf16"] / r["teacher forward fp32"], "< 1 on GPU"],
        ["peak memory KD / plain step", memory["kd"] / memory["plain"], "-"],
        ["top-k cache step / plain student step", r["step from top-k cache"] / r["plain student step"], "<= 1.10"],
        ["encoder-cache KD step / frozen encoder recomputed", r["KD step from encoder cache"]
         / r["KD step, frozen encoder recomputed"], "<= 0.3"],
    ]
    print()
    print(table(["ratio", "measured", "target"], [[n, f"{v:.2f}", t] for n, v, t in ratios]))


if __name__ == "__main__":
    main()
