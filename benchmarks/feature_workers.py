"""Log-mel features in the training loop or in DataLoader workers: what `dataloader_num_workers=-1` buys.

    python benchmarks/feature_workers.py --teacher openai/whisper-tiny.en [--steps 10] [--batch 8]

A prepared dataset computes each row's features when the row is fetched: with 0 workers, in the training process,
between steps; with workers, in other processes, while the step runs. This script trains the same student from
the same rows for `--steps` steps with 0 and with 1 worker and times each step (the gap from the end of one step
to the start of the next is the wait for the batch). It plays a GPU machine on a CPU: the training process
computes on `--threads` threads (1 by default), leaving the other cores free for workers, and the student is small
(`--d_model` 64, `--layers` 1 in encoder and decoder) so that the features are a visible share of its step (a GPU
step is shorter still: 63 ms for a tiny.en student at batch 16 on an H200 in the project's GPU table). It also
times the features of one batch alone. On a CPU-only run the default stays 0 workers: there the workers would take cores
from the training itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from common import corpus, machine, table, teacher_and_data, timed
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student


def sync() -> None:
    if torch.cuda.is_available():  # GPU work is asynchronous: time it once it has finished
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Records, per step, the wait before it (end of the last step to its start) and its whole interval."""

    def __init__(self) -> None:
        self.last_end: float | None = None
        self.begin = 0.0
        self.waits: list[float] = []
        self.intervals: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self.begin = time.perf_counter()
        if self.last_end is not None:
            self.waits.append(self.begin - self.last_end)

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        now = time.perf_counter()
        if self.last_end is not None:
            self.intervals.append(now - self.last_end)
        self.last_end = now


def run(teacher, processor, data, workers: int, cli) -> StepClock:
    student, _ = make_student(teacher, encoder_layers=cli.layers, decoder_layers=cli.layers, d_model=cli.d_model,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=4 * cli.d_model,
                              decoder_ffn_dim=4 * cli.d_model)
    args = DistillationConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=cli.device == "cpu",
                              max_steps=cli.steps, per_device_train_batch_size=cli.batch, alpha_kd=0.0, alpha_ce=1.0, save_strategy="no",
                              disable_tqdm=True, dataloader_num_workers=workers, seed=0)
    trainer = DistillationTrainer(model=student, args=args, processing_class=processor, train_dataset=data,
                                  data_collator=collator_for(processor, student))
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="openai/whisper-tiny.en", help="Hub id or local path")
    parser.add_argument("--corpus", default="runs/feature_corpus", help="synthesised here if missing; its size "
                        "follows --steps and --batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the student trains (on a GPU, the measurement this script stands in for)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per run (the first is not counted)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--d_model", type=int, default=64, help="the student's width")
    parser.add_argument("--layers", type=int, default=1, help="the student's encoder and decoder layers")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    # enough rows that the run stays in one epoch (a new epoch restarts the workers)
    rows = (cli.steps + 1) * cli.batch
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus, per_voice=(rows + 1) // 2))
    collate = collator_for(processor, teacher)
    # fetch (features) and collate one batch in this process: the fastest of 3 after a warm-up
    features_ms = timed(lambda: collate([data[i] for i in range(cli.batch)]), 3, 1, "cpu") * 1000
    results = {workers: run(teacher, processor, data, workers, cli) for workers in (0, 1)}
    print(f"\n{cli.teacher} -> student of {cli.layers} enc / {cli.layers} dec layers, width {cli.d_model}, batch {cli.batch} x 30 s, {cli.steps} steps, training on "
          f"{cli.threads} thread(s); {machine()}\n")
    print(f"features of one batch, in the training process (fastest of 3): {features_ms:.0f} ms\n")
    rows_out = []
    for workers, clock in results.items():
        waits, intervals = clock.waits[1:], clock.intervals[1:]  # the first includes start-up
        rows_out.append([f"{workers} worker{'s' if workers != 1 else ''}", f"{statistics.median(waits) * 1000:.0f}",
                         f"{statistics.median(intervals) * 1000:.0f}"])
    print(table(["DataLoader", "wait for the batch, ms (median)", "step interval, ms (median)"], rows_out))
    plain, overlapped = (statistics.median(results[w].intervals[1:]) for w in (0, 1))
    print(f"\nsteps per second, 1 worker / 0 workers: {plain / overlapped:.2f}x")


if __name__ == "__main__":
    main()
