"""`hf-asr-distill demo`: the whole job on one CPU machine with no Hub access, in a few minutes.

It synthesises a small English corpus (flite or espeak-ng), takes a small Wav2Vec2 CTC teacher (shipped with the
package, trained on that corpus by `train_demo_teacher`), shrinks it into a 2-layer student, distils it with
frame-level output KD and hidden-state KD, then evaluates teacher and student side by side. With `--teacher` and
`--dataset` pointing at the Hub (e.g. openai/whisper-tiny.en and a speech dataset) it runs the same steps for real.

The demo is the offline quickstart, not the library: speech synthesis (`corpus`) and the demo teacher (`teacher`)
live here, apart from the distillation code.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoProcessor

from .corpus import available_voices, make_corpus, make_sentences, synthesize
from .teacher import (DEMO_CHARS, DEMO_VOICES, demo_corpus, demo_processor, demo_teacher_config, shipped_teacher_path,
                      train_demo_teacher)

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CHARS", "DEMO_VOICES", "DemoArguments", "available_voices", "demo_corpus", "demo_processor",
           "demo_teacher_config", "make_corpus", "make_sentences", "run_demo", "shipped_teacher_path", "synthesize",
           "train_demo_teacher"]


@dataclass
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where the corpus, student and report go."})
    teacher: str | None = field(
        default=None, metadata={"help": "Teacher Hub id or path (default: the small CTC teacher shipped inside)."})
    dataset: str | None = field(
        default=None, metadata={"help": "Dataset (default: a corpus synthesised here with flite)."})
    train_split: str = field(default="train", metadata={"help": "Split to distil on."})
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on."})
    max_train_samples: int = field(default=256, metadata={"help": "Rows of the train split to distil on."})
    max_eval_samples: int = field(default=40, metadata={"help": "Rows of the eval split to evaluate on."})
    max_steps: int = field(default=300, metadata={"help": "Distillation steps."})
    corpus_per_voice: int = field(default=150, metadata={"help": "Synthesised training utterances per voice."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Student learning rate."})
    student_layers: int = field(default=2, metadata={"help": "Student layers (CTC) or decoder layers (Whisper)."})


def _student_for(teacher, layers: int):
    """`layers` of the stack the family shrinks first (Whisper: decoder layers, with the encoder frozen and shared;
    CTC: transformer layers, with the copied conv front-end frozen, which is faster and standard)."""
    from ..families import family_of
    from ..student import make_student

    family = family_of(teacher)
    freeze = family.separate_encoder
    student, _ = make_student(teacher, freeze_encoder=freeze, **{family.depth_option: layers})
    if hasattr(student, "freeze_feature_encoder"):
        student.freeze_feature_encoder()
    return student


@contextlib.contextmanager
def _library_bars_off():
    """A newcomer's log shows the demo's own progress and table: no per-file bars from datasets or weight loading."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        datasets.enable_progress_bars()
        hf_logging.enable_progress_bar()


def run_demo(args: DemoArguments) -> list:
    """Corpus -> teacher -> student -> distillation (output + hidden-state KD) -> side-by-side report."""
    with _library_bars_off():
        return _run_demo(args)


def _run_demo(args: DemoArguments) -> list:
    import torch

    from ..config import DistillationConfig
    from ..data import collator_for, load_speech_dataset, prepare_dataset
    from ..evaluation import compare, evaluate_model, report_table, write_report
    from ..families import family_of
    from ..student import load_model
    from ..trainer import DistillationTrainer

    start = time.perf_counter()
    out = Path(args.output_dir)
    dataset = args.dataset or str(demo_corpus(out / "corpus", per_voice_train=args.corpus_per_voice))
    teacher_path = args.teacher or str(shipped_teacher_path())
    teacher = load_model(teacher_path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(teacher_path)
    student = _student_for(teacher, args.student_layers)

    def split(name: str, limit: int):
        raw = load_speech_dataset(dataset, name)
        return prepare_dataset(raw.shuffle(seed=0).select(range(min(limit, len(raw)))), processor, teacher)[0]

    train, test = split(args.train_split, args.max_train_samples), split(args.eval_split, args.max_eval_samples)
    config = DistillationConfig(
        output_dir=str(out / "student"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=max(1, args.max_steps // 10), logging_steps=10,
        save_strategy="no", report_to="none", alpha_hidden=1.0, seed=0, disable_tqdm=False,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, processing_class=processor,
                                  train_dataset=train, data_collator=collator_for(processor, student))
    trainer.train()
    trainer.save_model()
    results = compare([evaluate_model(name, model, processor, test, batch_size=8, progress=False)
                       for name, model in (("teacher", trainer.teacher), ("student", trainer.model))])
    family = family_of(teacher).name
    paths = write_report(results, out / "student" / "report", meta={
        "dataset": dataset, "train_dataset": dataset, "utterances": len(test), "device": "CPU", "family": family})
    elapsed = time.perf_counter() - start
    print(f"\nDistilled a {family} teacher ({teacher_path}) into a {args.student_layers}-layer student on "
          f"{len(train)} utterances, {args.max_steps} steps; evaluated on {len(test)} held-out utterances.\n")
    print(report_table(results))
    chart = f"  chart: {paths['png']}" if "png" in paths else ""
    print(f"\nreport: {paths['md']}{chart}  student: {out / 'student'}  wall time: {elapsed:.0f} s")
    return results
