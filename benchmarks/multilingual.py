"""A multilingual teacher: per-row languages, WER per language, for the teacher and hard-label and KD students.

    python benchmarks/multilingual.py --teacher openai/whisper-base --out runs/multilingual
    python benchmarks/multilingual.py --out runs/multilingual --report

Data: real sentences (Debian's fortunes-de, -es, -it, -pl) spoken by espeak-ng voices of each language, mixed in one
training set with a `language` column (each row trains and is decoded with its own language token); the test set
has other sentences spoken by voices of each language never heard in training. The student is distil-whisper's
shape: every encoder layer copied, frozen and shared with the teacher, 2 decoder layers; it trains from a top-8
teacher cache with the encoder outputs (the teacher never runs during training).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoProcessor

from common import base_parser, machine, table
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import TeacherCache, cache_teacher
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.demo.corpus import espeak_voices, fortune_sentences, make_sentence_corpus
from hf_asr_distill.evaluation import asr_scores
from hf_asr_distill.student import load_model
from recipes import test_encoder_outputs

RECIPES = {"hard labels": dict(alpha_ce=1.0, alpha_kd=0.0),
           "0.8 CE + KL, T=2": dict(alpha_ce=0.8, alpha_kd=1.0, temperature=2.0)}


def build_corpus(folder: str, languages: list[str], train: int, test: int) -> Path:
    """Per language: `train` sentences by 10 voice variants, `test` others by 2 variants unheard in training."""
    splits = {"train": ([], []), "test": ([], [])}
    for language in languages:
        sentences = fortune_sentences(language)
        random.Random(0).shuffle(sentences)
        voices = espeak_voices(language)
        for split, chosen, pool in (("train", sentences[:train], voices[:10]),
                                    ("test", sentences[train: train + test], voices[10:12])):
            splits[split][0].extend(pool[i % len(pool)] for i in range(len(chosen)))
            splits[split][1].extend(chosen)
    # one voice per sentence: make_sentence_corpus cycles through the voices given, here one list per row
    return make_sentence_corpus(folder, {name: (voices, texts) for name, (voices, texts) in splits.items()})


@torch.no_grad()
def decode(model, processor, rows: list[dict], encoder: dict[int, torch.Tensor], batch_size: int = 16) -> dict:
    """Greedy transcripts in each row's language (from the cached encoder outputs), scored per language."""
    from transformers.modeling_outputs import BaseModelOutput

    model.eval()
    texts = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        states = torch.stack([encoder[r["example_id"]] for r in chunk]).to(model.dtype)
        ids = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), max_new_tokens=96,
                             language=[r["language"] for r in chunk], task="transcribe")
        texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    scores = asr_scores(texts, [r["text"] for r in rows], languages=[r["language"] for r in rows],
                        tokenizer=processor.tokenizer)
    return {"wer": scores["wer"], "cer": scores["cer"], "runaway": scores["runaway"],
            "per_language": {lang: {k: v[k] for k in ("wer", "cer", "runaway")}
                             for lang, v in scores["per_language"].items()}}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/multilingual")
    parser.add_argument("--languages", default="de,es,it,pl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train", type=int, default=300, help="training sentences per language")
    parser.add_argument("--test", type=int, default=50, help="test sentences per language")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--report", action="store_true")
    cli = parser.parse_args()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not cli.report:
        run_all(cli, out, path, results)
    report(results)


def run_all(cli, out: Path, path: Path, results: dict) -> None:
    processor = AutoProcessor.from_pretrained(cli.teacher)
    teacher = load_model(cli.teacher, dtype=torch.float32).eval()
    folder = build_corpus(cli.corpus, cli.languages.split(","), cli.train, cli.test)
    raw = load_speech_dataset(str(folder), "train")
    options = dict(language_column="language")
    train, _ = prepare_dataset(raw, processor, teacher, features=False, **options)
    train_features, _ = prepare_dataset(raw, processor, teacher, **options)
    test, _ = prepare_dataset(load_speech_dataset(str(folder), "test"), processor, teacher, **options)
    rows = [test[i] for i in range(len(test))]
    encoder = test_encoder_outputs(teacher, processor, rows)
    if "teacher" not in results:
        results["teacher"] = decode(teacher, processor, rows, encoder)
        path.write_text(json.dumps(results, indent=2))
    folder = out / "cache"
    cache = (TeacherCache(folder) if (folder / "manifest.json").exists()
             and json.loads((folder / "manifest.json").read_text()).get("complete")
             else cache_teacher(teacher, processor, train_features, folder, k=8, temperature=2.0,
                                encoder_outputs=True, batch_size=8))
    for seed in cli.seeds:
        for name, recipe in RECIPES.items():
            key = f"{name} | seed {seed}"
            if key in results:
                continue
            torch.manual_seed(seed)
            student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
            args = DistillationConfig(output_dir=tempfile.mkdtemp(), max_steps=cli.steps,
                                      per_device_train_batch_size=cli.batch, learning_rate=cli.lr, warmup_steps=50,
                                      seed=seed, data_seed=seed, save_strategy="no", report_to="none",
                                      disable_tqdm=True, logging_steps=50, **recipe)
            trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                          train_dataset=train, data_collator=collator_for(processor, student),
                                          teacher_cache=cache)
            start = time.perf_counter()
            trainer.train()
            results[key] = {"recipe": name, "seed": seed, "final": decode(student, processor, rows, encoder),
                            "seconds": time.perf_counter() - start}
            path.write_text(json.dumps(results, indent=2))
            print(f"{key}: WER {100 * results[key]['final']['wer']:.2f}", flush=True)
    results["setup"] = {"teacher": cli.teacher, "languages": cli.languages, "train": len(train), "test": len(rows),
                        "steps": cli.steps, "batch": cli.batch, "lr": cli.lr, "machine": machine()}
    path.write_text(json.dumps(results, indent=2))


def report(results: dict) -> None:
    teacher = results.get("teacher")
    languages = sorted(teacher["per_language"]) if teacher else []
    header = ["model", "WER % (all)"] + [f"{lang} WER %" for lang in languages] + ["WER % per seed", "runaways"]
    rows = []
    if teacher:
        rows.append(["teacher", f"{100 * teacher['wer']:.2f}"]
                    + [f"{100 * teacher['per_language'][lang]['wer']:.2f}" for lang in languages]
                    + ["-", teacher["runaway"]])
    for name in RECIPES:
        runs = [v for k, v in results.items() if k.startswith(f"{name} | seed")]
        if not runs:
            continue
        finals = [r["final"] for r in sorted(runs, key=lambda r: r["seed"])]
        rows.append([f"6 enc (frozen) / 2 dec, {name}", f"{statistics.mean(100 * f['wer'] for f in finals):.2f}"]
                    + [f"{statistics.mean(100 * f['per_language'][lang]['wer'] for f in finals):.2f}"
                       for lang in languages]
                    + [" / ".join(f"{100 * f['wer']:.2f}" for f in finals), sum(f["runaway"] for f in finals)])
    print(f"\n{results.get('setup', {})}\n")
    print(table(header, rows))


if __name__ == "__main__":
    main()
