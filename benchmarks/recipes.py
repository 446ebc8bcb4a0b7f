"""Distillation recipes on unseen speech: which recipe makes the best student, and does it still improve at the end?

    python benchmarks/recipes.py --teacher openai/whisper-tiny.en --out runs/recipes          # all recipes, 2 seeds
    python benchmarks/recipes.py --teacher ... --out runs/recipes --recipes "hard labels;KL only" --seeds 0
    python benchmarks/recipes.py --out runs/recipes --report                                  # tables + curve plot

Data: real sentences from Debian's fortunes spoken by 13 voices (flite and espeak-ng variants) for training, and
other sentences spoken by 4 voices never heard in training for testing. The student (distil-whisper's shape: every
encoder layer copied and frozen, shared with the teacher; 2 decoder layers) trains from an encoder-output cache, so
a step runs only the student's decoder: each recipe reads a top-8 teacher cache made for its temperature and labels
(with the encoder outputs, and the hidden states it needs), so the teacher never runs during training. The
2-encoder-layer students run their own encoder on the audio features.
Every run is evaluated on the test set every `--eval_every` steps (WER, CER, runaways): the learning curve. Results
go to OUT/results.json after each run (an interrupted benchmark resumes), the plot to OUT/curves.png.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoProcessor, TrainerCallback
from transformers.modeling_outputs import BaseModelOutput

from common import base_parser, machine, table
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import TeacherCache, cache_teacher
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.demo.corpus import fortune_sentences, make_sentence_corpus
from hf_asr_distill.evaluation import asr_scores
from hf_asr_distill.families import WhisperFamily
from hf_asr_distill.pseudo_label import pseudo_label
from hf_asr_distill.student import load_model

TRAIN_VOICES = ["flite:slt", "flite:rms", "flite:kal", *[f"espeak-ng:en-us+{v}" for v in ("m1", "m2", "m3", "m4",
                "f1", "f2", "f3")], "espeak-ng:en-gb+m5", "espeak-ng:en-gb+f4", "espeak-ng:en-029+m6"]
TEST_VOICES = ["flite:awb", "espeak-ng:en-gb-scotland+m7", "espeak-ng:en-us+f5", "espeak-ng:en-gb+m2"]
KD = dict(alpha_ce=0.8, alpha_kd=1.0, temperature=2.0)  # distil-whisper's recipe, the reference of the others
RECIPES = {
    "hard labels": dict(alpha_ce=1.0, alpha_kd=0.0),
    "0.8 CE + KL, T=2 (distil-whisper)": KD,
    "KL only": dict(alpha_ce=0.0, alpha_kd=1.0, temperature=2.0),
    "pseudo-labels (10 % WER filter) + KL": dict(KD, cache="pseudo"),
    "T=1": dict(KD, temperature=1.0, cache="t1"),
    "T=4": dict(KD, temperature=4.0, cache="t4"),
    "init: last two decoder layers": dict(KD, copy_layers={"decoder": [2, 3]}),
    "+ decoder hidden KD (cosine, no projection)": dict(KD, alpha_hidden=1.0, hidden_loss="cosine", projection="none"),
    "+ decoder hidden KD (mse, linear): the old default": dict(KD, alpha_hidden=1.0, hidden_loss="mse",
                                                                projection="linear"),
    "labels without the leading space: the old default": dict(KD, cache="no_space"),
    "4x longer": dict(KD, steps_factor=4),
    "2 enc / 2 dec": dict(KD, shape="2/2"),
    "2 enc / 2 dec + hidden KD (cosine)": dict(KD, shape="2/2", alpha_hidden=1.0, hidden_loss="cosine",
                                               projection="none", cache="t2_enc"),
}
# cache: (temperature, teacher hidden layers kept, encoder outputs kept, rows, labels); top-8 probabilities each
CACHES = {"t2": (2.0, {"decoder": [1, 4]}, True, "train", None), "t1": (1.0, None, True, "train", None),
          "t4": (4.0, None, True, "train", None), "pseudo": (2.0, None, True, "pseudo", None),
          "no_space": (2.0, None, True, "train", "no_space"),
          "t2_enc": (2.0, {"encoder": [1, 4], "decoder": [1, 4]}, False, "train", None)}
SHAPES = {"4/2": dict(decoder_layers=2, freeze_encoder=True), "2/2": dict(encoder_layers=2, decoder_layers=2)}


def build_corpus(folder: str, train: int, test: int) -> Path:
    """Disjoint train and test sentences; test voices never heard in training."""
    sentences = fortune_sentences("en")
    random.Random(0).shuffle(sentences)
    return make_sentence_corpus(folder, {"train": (TRAIN_VOICES, sentences[:train]),
                                         "test": (TEST_VOICES, sentences[train: train + test])})


class Curve(TrainerCallback):
    """Evaluates the student on the test set every `every` steps and at the end."""

    def __init__(self, evaluate, every: int) -> None:
        self.evaluate, self.every, self.points = evaluate, every, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.points[state.global_step] = self.evaluate(model)
            model.train()


@torch.no_grad()
def decode(model, processor, rows: list[dict], encoder: dict[int, torch.Tensor] | None, batch_size: int = 16) -> dict:
    """Greedy transcripts of the test rows (from cached encoder outputs when the encoder is the teacher's), scored."""
    model.eval()
    collate = collator_for(processor, model)
    texts = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        kwargs = {"max_new_tokens": 96}
        if encoder is not None:
            states = torch.stack([encoder[r["example_id"]] for r in chunk]).to(model.dtype)
            kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=states)
        else:
            kwargs["input_features"] = collate(chunk)["input_features"]
        texts += processor.tokenizer.batch_decode(model.generate(**kwargs), skip_special_tokens=True)
    scores = asr_scores(texts, [r["text"] for r in rows], tokenizer=processor.tokenizer)
    return {k: scores[k] for k in ("wer", "cer", "runaway")} | {"examples": list(zip(texts[:3], [r["text"] for r in rows[:3]]))}


def test_encoder_outputs(teacher, processor, rows: list[dict]) -> dict[int, torch.Tensor]:
    collate = collator_for(processor, teacher)
    out = {}
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            chunk = rows[start: start + 16]
            states = teacher.model.encoder(collate(chunk)["input_features"]).last_hidden_state
            out.update({r["example_id"]: s for r, s in zip(chunk, states)})
    return out


def no_leading_space(family, processor, text, language=None, task=None, timestamps=False):
    """The labels before the leading-space default: the text tokenised as given."""
    tokenizer = processor.tokenizer
    body = tokenizer(text.strip(), add_special_tokens=False).input_ids
    return [*family.prompt_ids(tokenizer, language, task, timestamps), *body, tokenizer.eos_token_id]


@contextlib.contextmanager
def labels(kind: str | None):
    """Labels are made at batch time: the old tokenisation (no leading space) while a no_space cache is made or used."""
    label_ids = WhisperFamily.label_ids
    if kind == "no_space":
        WhisperFamily.label_ids = no_leading_space
    try:
        yield
    finally:
        WhisperFamily.label_ids = label_ids


def run(name: str, seed: int, cli, teacher, processor, data: dict, encoder, caches: dict) -> dict:
    recipe = dict(RECIPES[name])
    shape, copy_layers = recipe.pop("shape", "4/2"), recipe.pop("copy_layers", None)
    steps = cli.steps * recipe.pop("steps_factor", 1)
    cache_name = recipe.pop("cache", "t2")
    rows, label_kind = CACHES[cache_name][3:]
    shared = shape == "4/2"  # the student's frozen encoder is the teacher's: it trains from the cache alone
    train = data[rows if shared else f"{rows}_features"]
    torch.manual_seed(seed)
    student, _ = make_student(teacher, copy_layers=copy_layers, **SHAPES[shape])
    args = DistillationConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=cli.batch,
        learning_rate=cli.lr, warmup_steps=cli.warmup_steps, seed=seed, data_seed=seed, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=50, **recipe)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                  train_dataset=train, data_collator=collator_for(processor, student),
                                  teacher_cache=caches[cache_name])
    curve = Curve(lambda model: decode(model, processor, data["test_rows"], encoder if shared else None),
                  cli.eval_every)
    trainer.add_callback(curve)
    start = time.perf_counter()
    with labels(label_kind):
        trainer.train()
    seconds = time.perf_counter() - start
    if cli.save_students and seed == cli.seeds[0]:  # for the deployment benchmark (benchmarks/deploy.py)
        folder = Path(cli.save_students) / "".join(c if c.isalnum() else "_" for c in name).strip("_")
        student.save_pretrained(folder)
        processor.save_pretrained(folder)
    final = curve.points[steps]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return {"recipe": name, "seed": seed, "steps": steps, "final": final, "curve": curve.points,
            "seconds": seconds, "last_loss": logs[-1] if logs else None}


def prepare(cli):
    processor = AutoProcessor.from_pretrained(cli.teacher)
    teacher = load_model(cli.teacher, dtype=torch.float32).eval()
    folder = build_corpus(cli.corpus, cli.train, cli.test)
    language = "en" if getattr(teacher.generation_config, "is_multilingual", False) else None
    raw = load_speech_dataset(str(folder), "train")
    raw = raw.add_column("example_id", list(range(len(raw))))
    options = dict(language=language)
    data = {}
    data["train"], _ = prepare_dataset(raw, processor, teacher, features=False, **options)
    data["train_features"], _ = prepare_dataset(raw, processor, teacher, **options)  # for the teacher, 2-layer encoders
    test, _ = prepare_dataset(load_speech_dataset(str(folder), "test"), processor, teacher, **options)
    data["test_rows"] = [test[i] for i in range(len(test))]
    return processor, teacher, raw, data, options


def build_cache(name: str, out: Path, teacher, processor, data: dict) -> TeacherCache:
    """The top-8 teacher cache a recipe reads (made once; an interrupted one resumes)."""
    temperature, layers, encoder_outputs, rows, label_kind = CACHES[name]
    folder = out / f"cache_{name}"
    manifest = folder / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("complete"):
        return TeacherCache(folder)
    with labels(label_kind):
        return cache_teacher(teacher, processor, data[f"{rows}_features"], folder, k=8, temperature=temperature,
                             hidden_layers=layers, encoder_outputs=encoder_outputs, batch_size=8)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--recipes", default=";".join(RECIPES), help="names separated by semicolons")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train", type=int, default=1600, help="training utterances")
    parser.add_argument("--test", type=int, default=200, help="test utterances (unseen sentences and voices)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--save_students", default=None, help="save each recipe's first-seed student under this folder")
    parser.add_argument("--report", action="store_true", help="print tables and plot from saved results only")
    cli = parser.parse_args()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not cli.report:
        processor, teacher, raw, data, options = prepare(cli)
        if "teacher" not in results:
            encoder = test_encoder_outputs(teacher, processor, data["test_rows"])
            results["teacher"] = {"final": decode(teacher, processor, data["test_rows"], encoder)}
            results_path.write_text(json.dumps(results, indent=2))
        encoder = test_encoder_outputs(teacher, processor, data["test_rows"])
        names = cli.recipes.split(";")
        needed = {RECIPES[n].get("cache", "t2") for n in names}
        if "pseudo" in needed:
            labelled, stats = pseudo_label(teacher, processor, raw, max_wer=0.1, batch_size=16,
                                           work_dir=out / "pseudo_labels", **options)
            data["pseudo"], _ = prepare_dataset(labelled, processor, teacher, text_column="pseudo_text",
                                                features=False, **options)
            data["pseudo_features"], _ = prepare_dataset(labelled, processor, teacher, text_column="pseudo_text",
                                                         **options)
            results["pseudo_label_stats"] = vars(stats)
        caches = {name: build_cache(name, out, teacher, processor, data) for name in sorted(needed)}
        for seed in cli.seeds:
            for name in names:
                key = f"{name} | seed {seed}"
                if key in results:
                    continue
                results[key] = run(name, seed, cli, teacher, processor, data, encoder, caches)
                results_path.write_text(json.dumps(results, indent=2))
                final = results[key]["final"]
                print(f"{key}: WER {100 * final['wer']:.2f} CER {100 * final['cer']:.2f} runaways {final['runaway']} "
                      f"({results[key]['seconds']:.0f} s)", flush=True)
        results["setup"] = {"teacher": cli.teacher, "train": cli.train, "test": cli.test, "steps": cli.steps,
                            "batch": cli.batch, "lr": cli.lr, "machine": machine()}
        results_path.write_text(json.dumps(results, indent=2))
    report(results, out)


def report(results: dict, out: Path) -> None:
    teacher = results.get("teacher", {}).get("final")
    runs: dict[str, list[dict]] = {}
    for key, value in results.items():
        if " | seed " in key:
            runs.setdefault(value["recipe"], []).append(value)
    rows = []
    if teacher:
        rows.append(["teacher", f"{100 * teacher['wer']:.2f}", "-", f"{100 * teacher['cer']:.2f}", teacher["runaway"],
                     "-", "-"])
    for name in RECIPES:
        if name not in runs:
            continue
        finals = [r["final"] for r in sorted(runs[name], key=lambda r: r["seed"])]
        wers = [100 * f["wer"] for f in finals]
        curve = runs[name][0]["curve"]
        steps = sorted(curve, key=int)
        slope = 100 * (curve[steps[-1]]["wer"] - curve[steps[-2]]["wer"]) if len(steps) > 1 else float("nan")
        rows.append([name, f"{statistics.mean(wers):.2f}", " / ".join(f"{w:.2f}" for w in wers),
                     f"{statistics.mean(100 * f['cer'] for f in finals):.2f}", sum(f["runaway"] for f in finals),
                     f"{slope:+.2f}", f"{statistics.mean(r['seconds'] for r in runs[name]) / 60:.0f}"])
    setup = results.get("setup", {})
    print(f"\n{setup}\n")
    print(table(["model", "WER % (mean)", "WER % per seed", "CER %", "runaways", "WER change over the last "
                 "eval interval (seed 0)", "minutes per run"], rows))
    curves = [[name] + [f"{step}: {100 * runs[name][0]['curve'][step]['wer']:.1f}"
                        for step in sorted(runs[name][0]["curve"], key=int)] for name in RECIPES if name in runs]
    print("\nLearning curves (seed 0, WER % at step):\n")
    for row in curves:
        print(f"- {row[0]}: " + ", ".join(row[1:]))
    plot(runs, teacher, out / "curves.png")


def plot(runs: dict, teacher: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in runs.items():
        steps = sorted({int(s) for r in values for s in r["curve"]})
        means = [statistics.mean(100 * r["curve"][str(s) if str(s) in r["curve"] else s]["wer"] for r in values
                                 if str(s) in r["curve"] or s in r["curve"]) for s in steps]
        ax.plot(steps, means, marker="o", label=name)
    if teacher:
        ax.axhline(100 * teacher["wer"], color="black", linestyle="--", label="teacher")
    ax.set_xlabel("training step")
    ax.set_ylabel("WER % on unseen sentences and voices (mean of seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\ncurves: {path}")


if __name__ == "__main__":
    main()
