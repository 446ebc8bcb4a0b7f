"""Trainer overhead and caches: time one optimisation step of each kind on the same batch, in one run.

    python benchmarks/step_time.py --teacher openai/whisper-tiny.en [--batch 4] [--device cuda]

Ratios printed (targets from the project's issues):
  KD step / (plain student step + teacher forward alone)              target <= 1.05  (the rest is waste)
  KD step, frozen shared encoder / same student, encoder recomputed     target <= 0.6
  teacher forward bf16 / fp32
  peak memory KD step / plain step
  step reading the top-k cache / plain student step                     target <= 1.10
  KD step with the encoder-output cache / frozen encoder recomputed     target <= 0.3
"""

from __future__ import annotations

import copy
import tempfile

import torch

from common import base_parser, corpus, machine, table, teacher_and_data, timed
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import cache_teacher
from hf_asr_distill.evaluation import PeakMemory


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


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    cli = parser.parse_args()
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus))
    device = torch.device(cli.device)
    rows = [data[i] for i in range(cli.batch)]

    def trainer_for(student, teacher_model, tmp, **kw):
        args = DistillationConfig(output_dir=tmp, report_to="none", use_cpu=device.type == "cpu",
                                  learning_rate=1e-5, per_device_train_batch_size=cli.batch, **kw)
        return DistillationTrainer(model=student, teacher_model=teacher_model, args=args, processing_class=processor,
                                   train_dataset=data, data_collator=collator_for(processor, student))

    tmp = tempfile.mkdtemp()
    batch = {k: v.to(device) for k, v in collator_for(processor, teacher)(rows).items()}
    trainable, _ = make_student(teacher, decoder_layers=2)
    frozen, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    results = {}
    plain = trainer_for(trainable, None, tmp, alpha_kd=0.0, alpha_ce=1.0)
    results["plain student step"] = timed(make_step(plain, batch), cli.repeats, cli.warmup, cli.device)
    plain_frozen = trainer_for(frozen, None, tmp, alpha_kd=0.0, alpha_ce=1.0)
    results["plain step, frozen encoder"] = timed(make_step(plain_frozen, batch), cli.repeats, cli.warmup, cli.device)
    kd = trainer_for(trainable, teacher, tmp)
    teacher_inputs = {"input_features": batch["input_features"],
                      "decoder_input_ids": torch.where(batch["labels"] < 0, 0, batch["labels"])}

    def teacher_forward(model=kd.teacher, dtype=torch.float32):
        with torch.no_grad():
            model(input_features=teacher_inputs["input_features"].to(dtype),
                  decoder_input_ids=teacher_inputs["decoder_input_ids"])

    results["teacher forward fp32"] = timed(teacher_forward, cli.repeats, cli.warmup, cli.device)
    bf16_teacher = trainer_for(make_student(teacher, decoder_layers=2)[0], copy.deepcopy(teacher), tmp,
                               teacher_dtype="bf16").teacher
    results["teacher forward bf16"] = timed(lambda: teacher_forward(bf16_teacher, torch.bfloat16), cli.repeats,
                                            cli.warmup, cli.device)
    results["KD step"] = timed(make_step(kd, batch), cli.repeats, cli.warmup, cli.device)
    shared = trainer_for(frozen, teacher, tmp)
    assert shared.share_encoder
    results["KD step, frozen shared encoder"] = timed(make_step(shared, batch), cli.repeats, cli.warmup, cli.device)
    unshared = trainer_for(frozen, teacher, tmp, share_frozen_encoder=False)
    results["KD step, frozen encoder recomputed"] = timed(make_step(unshared, batch), cli.repeats, cli.warmup,
                                                          cli.device)
    with PeakMemory(device) as mem_plain:
        make_step(plain, batch)()
    with PeakMemory(device) as mem_kd:
        make_step(kd, batch)()

    # caches: top-k logits (k = 8) for the trainable student, encoder outputs for the frozen one
    cached_batch = {**batch, "example_id": torch.arange(cli.batch, device=device)}
    topk = cache_teacher(teacher, processor, data, tmp + "/topk", k=8, progress=False)
    enc = cache_teacher(teacher, processor, data, tmp + "/enc", k=8, encoder_outputs=True, progress=False)

    def cached_trainer(student, cache):
        args = DistillationConfig(output_dir=tmp, report_to="none", use_cpu=device.type == "cpu",
                                  learning_rate=1e-5, per_device_train_batch_size=cli.batch)
        return DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                   train_dataset=data, data_collator=collator_for(processor, student),
                                   teacher_cache=cache)

    results["step from top-k cache"] = timed(make_step(cached_trainer(trainable, topk), cached_batch), cli.repeats,
                                             cli.warmup, cli.device)
    results["KD step from encoder cache"] = timed(make_step(cached_trainer(frozen, enc), cached_batch), cli.repeats,
                                                  cli.warmup, cli.device)

    print(f"\nWhisper teacher {cli.teacher}, student: 2 decoder layers; batch {cli.batch} x 30 s; {machine()}\n")
    print(table(["step", "median seconds"], [[k, f"{v:.3f}"] for k, v in results.items()]))
    r = results
    ratios = [
        ["KD step / (plain step + teacher forward)", r["KD step"] / (r["plain student step"] + r["teacher forward fp32"]),
         "<= 1.05"],
        ["frozen shared encoder / recomputed", r["KD step, frozen shared encoder"]
         / r["KD step, frozen encoder recomputed"], "<= 0.6"],
        ["teacher bf16 / fp32 forward", r["teacher forward bf16"] / r["teacher forward fp32"], "< 1 on GPU"],
        ["peak memory KD / plain step", (mem_kd.peak or 1) / (mem_plain.peak or 1), "-"],
        ["top-k cache step / plain student step", r["step from top-k cache"] / r["plain student step"], "<= 1.10"],
        ["encoder-cache KD step / frozen encoder recomputed", r["KD step from encoder cache"]
         / r["KD step, frozen encoder recomputed"], "<= 0.3"],
    ]
    print()
    print(table(["ratio", "measured", "target"], [[n, f"{v:.2f}", t] for n, v, t in ratios]))


if __name__ == "__main__":
    main()
