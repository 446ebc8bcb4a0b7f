"""Does top-k caching cost accuracy? The same student, seed and steps, distilled with live full-vocabulary KD
and from a top-k cache; WER on held-out voices.

    python benchmarks/cache_quality.py --teacher openai/whisper-tiny.en --k 8 --steps 60
"""

from __future__ import annotations

import tempfile
import time

import torch
from transformers import AutoProcessor

from common import base_parser, machine, table
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import cache_size_bytes, cache_teacher
from hf_asr_distill.demo.corpus import make_corpus
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.evaluation import evaluate_model
from hf_asr_distill.student import load_model


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4)
    cli = parser.parse_args()
    folder = make_corpus(cli.corpus + "_quality", {"train": (["flite:slt", "flite:rms", "flite:kal"], 40),
                                                   "test": (["flite:awb"], 30)})
    processor = AutoProcessor.from_pretrained(cli.teacher)
    teacher = load_model(cli.teacher, dtype=torch.float32)
    train, _ = prepare_dataset(load_speech_dataset(str(folder), "train"), processor, teacher)
    test, _ = prepare_dataset(load_speech_dataset(str(folder), "test"), processor, teacher)
    start = time.perf_counter()
    cache = cache_teacher(teacher, processor, train, tempfile.mkdtemp(), k=cli.k, temperature=2.0, progress=False)
    cache_seconds = time.perf_counter() - start
    rows = []
    for name, teacher_cache in (("live KD, full logits", None), (f"top-{cli.k} cached KD", cache)):
        torch.manual_seed(cli.seed)
        student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
        args = DistillationConfig(output_dir=tempfile.mkdtemp(), max_steps=cli.steps, per_device_train_batch_size=4,
                                  learning_rate=cli.lr, warmup_steps=max(1, cli.steps // 10), seed=cli.seed,
                                  data_seed=cli.seed, save_strategy="no", report_to="none", disable_tqdm=True,
                                  share_frozen_encoder=teacher_cache is None)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                      train_dataset=train, data_collator=collator_for(processor, student),
                                      teacher_cache=teacher_cache)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        result = evaluate_model(name, trainer.model, processor, test, batch_size=8, warmup=0, repeats=1,
                                progress=False)
        rows.append([name, f"{100 * result.scores['wer']:.2f}", f"{100 * result.scores['cer']:.2f}",
                     result.scores["runaway"], f"{seconds:.0f}"])
    live, cached = float(rows[0][1]), float(rows[1][1])
    print(f"\n{cli.teacher}; student 4 enc (frozen) / 2 dec; {cli.steps} steps, seed {cli.seed}; {len(train)} train / "
          f"{len(test)} test utterances (held-out voice); {machine()}")
    print(f"cache: {cache_size_bytes(cache.path) / 1e6:.2f} MB, built in {cache_seconds:.0f} s\n")
    print(table(["KD from", "WER %", "CER %", "runaways", "training seconds"], rows))
    print(f"\nrelative WER difference, cached vs live: {100 * (cached - live) / live:+.1f}%")


if __name__ == "__main__":
    main()
