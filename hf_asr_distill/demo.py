"""`hf-asr-distill demo`: the whole job on one CPU machine with no Hub access, in a few minutes.

It synthesises a small English corpus (flite or espeak-ng), takes a small Wav2Vec2 CTC teacher (shipped with the
package, trained on that corpus by `train_demo_teacher`), shrinks it into a 2-layer student, distils it with
frame-level output KD and hidden-state KD, then evaluates teacher and student side by side. With `--teacher` and
`--dataset` pointing at the Hub (e.g. openai/whisper-tiny.en and a speech dataset) it runs the same steps for real.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from transformers import (
    AutoProcessor, Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC, Wav2Vec2Processor,
)

from .corpus import available_voices, make_corpus

logger = logging.getLogger(__name__)

DEMO_CHARS = "abcdefghijklmnopqrstuvwxyz'"
DEMO_VOICES = ["flite:slt", "flite:kal", "flite:awb", "flite:rms"]


def shipped_teacher_path() -> Path:
    """Folder of the small CTC teacher that ships with the package."""
    return Path(str(resources.files("hf_asr_distill") / "assets" / "demo_teacher"))


def demo_processor() -> Wav2Vec2Processor:
    """Character-level CTC processor: <pad> (the CTC blank), | (word boundary), a-z and the apostrophe."""
    import tempfile

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(DEMO_CHARS)}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|",
                                         bos_token=None, eos_token=None)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def demo_teacher_config(vocab_size: int) -> Wav2Vec2Config:
    """A small Wav2Vec2 (20 ms frames, 4 x 192-wide layers) that learns the synthetic corpus on a CPU.

    The conv front-end is 5 narrow layers (the standard one has 7 x 512 channels) to keep CPU training short.
    """
    return Wav2Vec2Config(
        vocab_size=vocab_size, hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
        conv_dim=(32,) * 5, conv_stride=(5, 4, 4, 2, 2), conv_kernel=(10, 8, 8, 4, 4), num_feat_extract_layers=5,
        feat_extract_norm="group", do_stable_layer_norm=True, num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8, layerdrop=0.0, mask_time_prob=0.05, hidden_dropout=0.05,
        attention_dropout=0.05, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        ctc_loss_reduction="mean", ctc_zero_infinity=True, pad_token_id=0,
    )


def demo_corpus(folder: str | Path, per_voice_train: int = 150, per_voice_test: int = 10) -> Path:
    """Synthesise (once) the demo corpus: every flite voice, disjoint train and test sentences."""
    missing = [v for v in DEMO_VOICES if v not in available_voices()]
    if missing:
        raise RuntimeError("The demo corpus needs flite (Debian/Ubuntu: apt-get install flite); "
                           "or pass --teacher and --dataset to use your own.")
    return make_corpus(folder, {"train": (DEMO_VOICES, per_voice_train), "test": (DEMO_VOICES, per_voice_test)})


def train_demo_teacher(corpus: str | Path, output_dir: str | Path, max_steps: int = 1500, seed: int = 0,
                       split: str = "train") -> Path:
    """Train the demo's CTC teacher from scratch on a split of the synthetic corpus (how the shipped one was made)."""
    from .data import collator_for, load_speech_dataset, prepare_dataset

    processor = demo_processor()
    model = Wav2Vec2ForCTC(demo_teacher_config(len(processor.tokenizer)))
    train, _ = prepare_dataset(load_speech_dataset(str(corpus), split), processor, model)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=16,
                             learning_rate=1e-3, warmup_steps=200, weight_decay=0.01, logging_steps=50,
                             save_strategy="no", report_to="none", seed=seed, remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=train, data_collator=collator_for(processor, model)).train()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return Path(output_dir)


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
    from .student import make_student, model_family

    if model_family(teacher) == "whisper":
        return make_student(teacher, decoder_layers=layers, freeze_encoder=True)[0]
    student, _ = make_student(teacher, num_hidden_layers=layers)
    student.freeze_feature_encoder()  # the copied conv front-end stays as the teacher's: faster, and standard
    return student


def run_demo(args: DemoArguments) -> list:
    """Corpus -> teacher -> student -> distillation (output + hidden-state KD) -> side-by-side report."""
    import torch

    from .config import DistillationConfig
    from .data import collator_for, load_speech_dataset, prepare_dataset
    from .evaluation import compare, evaluate_model, report_table, write_report
    from .student import load_model, model_family
    from .trainer import DistillationTrainer

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
    family = model_family(teacher)
    paths = write_report(results, out / "student" / "report", meta={
        "dataset": dataset, "train_dataset": dataset, "utterances": len(test), "device": "CPU", "family": family})
    elapsed = time.perf_counter() - start
    print(f"\nDistilled a {family} teacher ({teacher_path}) into a {args.student_layers}-layer student on "
          f"{len(train)} utterances, {args.max_steps} steps; evaluated on {len(test)} held-out utterances.\n")
    print(report_table(results))
    print(f"\nreport: {paths['md']}  chart: {paths['png']}  student: {out / 'student'}  wall time: {elapsed:.0f} s")
    return results
