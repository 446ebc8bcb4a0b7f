"""Distillation quality: the same student trained with hard labels only, + output-layer KD, + hidden-state KD, and
on teacher pseudo-labels (sequence-level KD), same steps, data and seeds; held-out voices for testing.

    python benchmarks/quality.py --teacher openai/whisper-tiny.en --steps 60 --seeds 0 1
    python benchmarks/quality.py --family ctc --seeds 0 1 [--ctc_teacher runs/ctc_teacher]  # trains it there first

Whisper, two student shapes: distil-whisper's (all encoder layers copied and frozen, 2 decoder layers) and a shrunk
encoder (2 encoder, 2 decoder layers). CTC: a small Wav2Vec2 teacher (4 layers, the demo's recipe, trained by
the script with --ctc_teacher DIR, or the identical one shipped) knows all four flite voices; students of 2 and 1
layers (copied layers) learn from three of them. Prints teacher and students: WER, CER, runaways, params, size,
latency, speed-up, plus the teacher's WER on the training voices (KD can only transfer what the teacher knows). Two test
sets, both spoken by a voice not used in training: sentences from the training grammar, and sentences built from
words the students never heard in training ("new words"), where only what the teacher knows can help.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import AutoProcessor

from common import base_parser, machine, table
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.demo.corpus import make_corpus
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.demo import DEMO_VOICES, shipped_teacher_path, train_demo_teacher
from hf_asr_distill.evaluation import compare, evaluate_model
from hf_asr_distill.pseudo_label import pseudo_label
from hf_asr_distill.student import load_model

SHAPES = {"whisper": {"4 enc (frozen) / 2 dec": dict(decoder_layers=2, freeze_encoder=True),
                      "2 enc / 2 dec": dict(encoder_layers=2, decoder_layers=2)},
          "ctc": {"2 layers": dict(num_hidden_layers=2), "1 layer": dict(num_hidden_layers=1)}}
# steps, batch, learning rate: the Whisper defaults fit a CPU; the CTC ones are the demo's recipe
DEFAULTS = {"whisper": (60, 4, 3e-4), "ctc": (300, 16, 1e-3)}
METHODS = {"hard labels": dict(alpha_ce=1.0, alpha_kd=0.0, alpha_hidden=0.0),
           "+ output KD": dict(alpha_ce=0.8, alpha_kd=1.0, alpha_hidden=0.0),
           "+ output + hidden KD": dict(alpha_ce=0.8, alpha_kd=1.0, alpha_hidden=1.0),
           "pseudo-labels + output KD": dict(alpha_ce=0.8, alpha_kd=1.0, alpha_hidden=0.0, pseudo=True)}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--family", choices=list(SHAPES), default="whisper",
                        help="whisper: the --teacher checkpoint; ctc: a small Wav2Vec2 teacher (see --ctc_teacher)")
    parser.add_argument("--steps", type=int, help="default: 60 (whisper), 300 (ctc)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch", type=int, help="default: 4 (whisper), 16 (ctc)")
    parser.add_argument("--lr", type=float, help="default: 3e-4 (whisper), 1e-3 (ctc)")
    parser.add_argument("--ctc_teacher", default=None,
                        help="CTC teacher folder, trained there first unless it already holds one. Default: the "
                             "teacher shipped with the package, which train_demo_teacher made with this recipe on "
                             "exactly this script's teacher_train split (same sentences, voices and seed)")
    parser.add_argument("--ctc_teacher_steps", type=int, default=1500,
                        help="training steps when --ctc_teacher has to be trained (the shipped one had 1500)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers (feature extraction off the "
                                                                "training loop; worth it on a GPU)")
    parser.add_argument("--train_voices", default="flite:slt,flite:rms,flite:kal")
    parser.add_argument("--test_voices", default="flite:awb")
    parser.add_argument("--per_voice", type=int, default=40)
    parser.add_argument("--per_test_voice", type=int, default=30)
    parser.add_argument("--shapes", help="comma-separated; default: all of the family's")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", help="default: runs/quality_<family>.json")
    parser.add_argument("--hidden_loss", default="mse", help="hidden loss of the '+ output + hidden KD' method")
    parser.add_argument("--alpha_hidden", type=float, default=1.0, help="its weight")
    parser.add_argument("--projection", default="linear", help="its projection (linear, mlp, none)")
    cli = parser.parse_args()
    steps, batch, lr = DEFAULTS[cli.family]
    cli.steps, cli.batch, cli.lr = cli.steps or steps, cli.batch or batch, cli.lr or lr
    cli.shapes = cli.shapes or ",".join(SHAPES[cli.family])
    cli.output = cli.output or f"runs/quality_{cli.family}.json"
    test_voices = cli.test_voices.split(",")
    splits = {"train": (cli.train_voices.split(","), cli.per_voice), "test": (test_voices, cli.per_test_voice),
              "test_open": (test_voices, cli.per_test_voice, "open")}
    if cli.family == "ctc":
        # the teacher's own data: all four voices (the test voice too), sentences disjoint from every other split
        folder = make_corpus(cli.corpus + "_quality_ctc", {"teacher_train": (DEMO_VOICES, 150), **splits})
        cli.teacher = cli.ctc_teacher or str(shipped_teacher_path())
        if not (Path(cli.teacher) / "config.json").exists():
            train_demo_teacher(folder, cli.teacher, max_steps=cli.ctc_teacher_steps, split="teacher_train")
    else:
        folder = make_corpus(cli.corpus + "_quality", splits)
    processor = AutoProcessor.from_pretrained(cli.teacher)
    teacher = load_model(cli.teacher, dtype=torch.float32)
    raw_train = load_speech_dataset(str(folder), "train")
    train, _ = prepare_dataset(raw_train, processor, teacher)
    test, _ = prepare_dataset(load_speech_dataset(str(folder), "test"), processor, teacher)
    test_open, _ = prepare_dataset(load_speech_dataset(str(folder), "test_open"), processor, teacher)
    pseudo, pl_stats = None, None
    if any(METHODS[m].get("pseudo") for m in cli.methods.split(",")):
        labelled, pl_stats = pseudo_label(teacher, processor, raw_train, batch_size=8, progress=False)
        pseudo, _ = prepare_dataset(labelled, processor, teacher, text_column="pseudo_text")
    teacher_train = evaluate_model("teacher", teacher, processor, train, batch_size=8, warmup=0, repeats=1,
                                   progress=False)
    teacher_test = evaluate_model("teacher", teacher, processor, test, batch_size=8, warmup=0, repeats=1,
                                  progress=False)
    teacher_open = evaluate_model("teacher", teacher, processor, test_open, batch_size=8, warmup=0, repeats=1,
                                  progress=False)
    rows, raw = [], {"teacher_train_wer": teacher_train.scores["wer"], "teacher": teacher_test.scores,
                     "teacher_open": teacher_open.scores}
    for shape in cli.shapes.split(","):
        if shape not in SHAPES[cli.family]:
            raise SystemExit(f"unknown shape {shape!r} for {cli.family}: {', '.join(SHAPES[cli.family])}")
        for method in cli.methods.split(","):
            results = []
            for seed in cli.seeds:
                student = train_student(teacher, processor, pseudo if METHODS[method].get("pseudo") else train,
                                        shape, method, seed, cli)
                result = evaluate_model(f"{shape} | {method}", student, processor, test, batch_size=8, warmup=0,
                                        repeats=1, progress=False)
                opened = evaluate_model("open", student, processor, test_open, batch_size=8, warmup=0, repeats=0,
                                        progress=False)
                results.append((compare([teacher_test, result])[1], opened))
                raw[f"{shape} | {method} | seed {seed}"] = {"test": result.scores, "test_open": opened.scores}
                print(f"{shape} | {method} | seed {seed}: WER {100 * result.scores['wer']:.2f} "
                      f"(new words: {100 * opened.scores['wer']:.2f})", flush=True)
            rows.append(summarise(shape, method, results))
    Path(cli.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cli.output).write_text(json.dumps(raw, indent=2))
    print(f"\n{cli.teacher}; train voices {cli.train_voices} ({len(train)} utt.), test voice(s) {cli.test_voices} "
          f"({len(test)} utt.); {cli.steps} steps, batch {cli.batch}, lr {cli.lr}, seeds {cli.seeds}; {machine()}")
    kept = f"; pseudo-labels kept {pl_stats.kept}/{pl_stats.transcribed}" if pl_stats else ""
    print(f"teacher WER on the training voices: {100 * teacher_train.scores['wer']:.2f}%{kept}\n")
    t = teacher_test
    head = [["teacher", f"{100 * t.scores['wer']:.2f}", "-", f"{100 * teacher_open.scores['wer']:.2f}", "-",
             f"{100 * t.scores['cer']:.2f}", t.scores["runaway"] + teacher_open.scores["runaway"],
             f"{t.params['total'] / 1e6:.1f}", f"{t.size_bytes['fp32'] / 1e6:.0f}", f"{t.latency_ms:.0f}", "1.00x"]]
    print(table(["model", "WER % (mean)", "WER % per seed", "WER % new words (mean)", "new words per seed",
                 "CER %", "runaways", "params (M)", "size (MB)", "latency (ms/utt)", "speed-up"], head + rows))


def train_student(teacher, processor, data, shape, method, seed, cli):
    torch.manual_seed(seed)
    student, _ = make_student(teacher, **SHAPES[cli.family][shape])
    if cli.family == "ctc":
        student.freeze_feature_encoder()  # the copied conv front-end stays the teacher's, as in the demo
    weights = {k: v for k, v in METHODS[method].items() if k != "pseudo"}
    if weights["alpha_hidden"] > 0:
        weights.update(alpha_hidden=cli.alpha_hidden, hidden_loss=cli.hidden_loss, projection=cli.projection)
    args = DistillationConfig(output_dir=tempfile.mkdtemp(), max_steps=cli.steps, per_device_train_batch_size=cli.batch,
                              learning_rate=cli.lr, warmup_steps=max(1, cli.steps // 10), seed=seed, data_seed=seed,
                              save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=cli.steps,
                              dataloader_num_workers=cli.workers, **weights)
    needs_teacher = weights["alpha_kd"] > 0 or weights["alpha_hidden"] > 0
    trainer = DistillationTrainer(model=student, teacher_model=teacher if needs_teacher else None, args=args,
                                  processing_class=processor, train_dataset=data,
                                  data_collator=collator_for(processor, student))
    trainer.train()
    return trainer.model


def summarise(shape, method, pairs):
    results = [r for r, _ in pairs]
    wers = [100 * r.scores["wer"] for r in results]
    open_wers = [100 * o.scores["wer"] for _, o in pairs]
    r0 = results[0]
    return [f"{shape} | {method}", f"{statistics.mean(wers):.2f}", " / ".join(f"{w:.2f}" for w in wers),
            f"{statistics.mean(open_wers):.2f}", " / ".join(f"{w:.2f}" for w in open_wers),
            f"{statistics.mean(100 * r.scores['cer'] for r in results):.2f}",
            sum(r.scores["runaway"] + o.scores["runaway"] for r, o in pairs),
            f"{r0.params['total'] / 1e6:.1f}", f"{r0.size_bytes['fp32'] / 1e6:.0f}",
            f"{statistics.mean(r.latency_ms for r in results):.0f}",
            f"{statistics.mean(r.speedup for r in results):.2f}x"]


if __name__ == "__main__":
    main()
