"""`hf-asr-distill <command>`: a thin layer of HfArgumentParser over the dataclasses the Python API uses.

Every command takes flags, and `--config FILE.yaml|.json` whose keys are the same names as the flags (flags win).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from transformers import AutoProcessor, HfArgumentParser

from .config import DistillationConfig
from .distributed import process_state


@dataclass
class TeacherArguments:
    teacher: str = field(metadata={"help": "Teacher: a Hub id (openai/whisper-small) or a local path."})
    processor: str | None = field(default=None, metadata={"help": "Processor to use (default: the teacher's)."})


@dataclass
class StudentArguments:
    student: str | None = field(
        default=None, metadata={"help": "An existing student (Hub id or path). Default: shrink the teacher."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Whisper: student encoder layers."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Whisper: student decoder layers."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "CTC: student transformer layers."})
    hidden_size: int | None = field(default=None, metadata={"help": "CTC: student hidden size."})
    intermediate_size: int | None = field(default=None, metadata={"help": "CTC: student feed-forward size."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "CTC: student attention heads."})
    d_model: int | None = field(default=None, metadata={"help": "Whisper: student hidden size."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Whisper: freeze the student's encoder."})

    def shrink(self) -> dict[str, int]:
        names = ("encoder_layers", "decoder_layers", "num_hidden_layers", "hidden_size", "intermediate_size",
                 "num_attention_heads", "d_model")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "Hub id, audiofolder, CSV/JSONL manifest, or saved dataset path."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on after training."})
    audio_column: str = field(default="audio", metadata={"help": "Column with the audio."})
    text_column: str = field(default="text", metadata={"help": "Column with the transcript."})
    max_seconds: float | None = field(default=None, metadata={"help": "Drop longer audio (Whisper: 30)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows per split."})
    on_error: str = field(default="raise", metadata={"help": "Bad rows: 'raise' (name the row) or 'skip' (count)."})
    teacher_cache: str | None = field(
        default=None, metadata={"help": "A cache from `cache-teacher` (same data and settings): no teacher forward."})
    language_column: str | None = field(
        default=None, metadata={"help": "Whisper: column of per-row language codes (mixed-language corpora); each "
                                        "row trains and is decoded with its own language token."})
    timestamp_column: str | None = field(
        default=None, metadata={"help": "Whisper: column of transcripts with timestamp tokens (pseudo-label "
                                        "--timestamps writes <output_column>_timestamps)."})
    timestamp_probability: float = field(
        default=0.2, metadata={"help": "Share of the rows with timestamped text that train with timestamps "
                                       "(distil-whisper: 0.2); used only with --timestamp_column."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes checking the rows (datasets.map)."})

    def prepare_options(self) -> dict:
        return {"language_column": self.language_column, "timestamp_column": self.timestamp_column,
                "timestamp_probability": self.timestamp_probability if self.timestamp_column else 0.0,
                "num_proc": self.num_proc, "audio_column": self.audio_column, "text_column": self.text_column,
                "max_seconds": self.max_seconds, "on_error": self.on_error}


@dataclass
class LanguageArguments:
    language: str | None = field(
        default=None, metadata={"help": "Whisper: the language of every row (a code such as 'de'); multilingual "
                                        "teachers need it or --language_column."})
    language_column: str | None = field(default=None, metadata={"help": "Whisper: column of per-row language codes."})
    task: str | None = field(default=None, metadata={"help": "Whisper: 'transcribe' (default) or 'translate'."})

    def options(self) -> dict:
        return {"language": self.language, "language_column": self.language_column, "task": self.task}


@dataclass
class EvalArguments:
    student: list[str] = field(metadata={"help": "Student(s) to compare with the teacher (Hub ids or paths)."})
    dataset: str = field(metadata={"help": "Hub id, audiofolder, CSV/JSONL manifest, or saved dataset path."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    output_dir: str = field(default="report", metadata={"help": "Where report.json/.md/.png are written."})
    audio_column: str = field(default="audio", metadata={"help": "Column with the audio."})
    text_column: str = field(default="text", metadata={"help": "Column with the transcript."})
    batch_size: int = field(default=8, metadata={"help": "Inference batch size for accuracy and timing."})
    repeats: int = field(default=2, metadata={"help": "Timed passes over the set (the fastest counts)."})
    warmup: int = field(default=1, metadata={"help": "Untimed warm-up batches."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate at most this many rows."})
    english: bool = field(default=True, metadata={"help": "Whisper English normaliser (else the basic one); rows "
                                                          "with a language use their language's normaliser."})
    long_form: bool = field(default=True, metadata={"help": "Decode audio longer than the model's window (Whisper: "
                                                            "30 s) long-form instead of dropping it."})
    device: str = field(default="auto", metadata={"help": "Device: auto (each process's own GPU under accelerate "
                                                          "launch, else the GPU or CPU), cpu, cuda, cuda:1, ..."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding the audio."})
    no_repeat_ngram_size: int | None = field(
        default=None, metadata={"help": "Whisper generation: forbid repeating n-grams of this size (anti-loop)."})
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "Whisper generation: penalty > 1 for repeated tokens (anti-loop)."})
    formats: str = field(
        default="pytorch", metadata={"help": "Deployment forms to measure, comma-separated: pytorch, pytorch-int8, "
                                             "ct2-int8 (faster-whisper), ct2-float32, onnx, onnx-int8, ...; the "
                                             "teacher and the students are each converted and compared per form."})
    assistant: bool = field(
        default=False, metadata={"help": "Whisper: also measure the teacher with the (first) student as its "
                                         "assistant in speculative decoding (identical outputs, speed-up)."})

    def generate_kwargs(self) -> dict:
        names = ("no_repeat_ngram_size", "repetition_penalty")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _parse(dataclasses: tuple, argv: list[str], prog: str = "hf-asr-distill") -> tuple:
    """Parse flags, with `--config FILE` (YAML/JSON) giving defaults; unknown keys or flags are errors."""
    parser = HfArgumentParser(dataclasses, prog=prog)
    if "--config" in argv:
        i = argv.index("--config")
        path, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
        values = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown option(s) {unknown}; see --help for the accepted names.")
        values = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in values.items()}
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # unknown flags and bad values: a message, not a traceback
        raise SystemExit(f"{prog}: {err}") from err


def _limit(ds: Any, n: int | None) -> Any:
    return ds.select(range(min(n, len(ds)))) if n else ds


@dataclass
class OutputArguments:
    output_dir: str = field(metadata={"help": "Where the student is written."})


def cmd_create_student(argv: list[str]) -> None:
    """Shrink a teacher into a student and save it (with the processor and the layer map)."""
    from .student import load_model, make_student

    dataclasses = (TeacherArguments, StudentArguments, OutputArguments)
    teacher_args, student_args, out = _parse(dataclasses, argv, "hf-asr-distill create-student")
    teacher = load_model(teacher_args.teacher)
    student, layer_map = make_student(teacher, freeze_encoder=student_args.freeze_encoder, **student_args.shrink())
    student.save_pretrained(out.output_dir)
    AutoProcessor.from_pretrained(teacher_args.processor or teacher_args.teacher).save_pretrained(out.output_dir)
    print(f"student saved to {out.output_dir}; layers copied from the teacher: {json.dumps(layer_map)}")


def cmd_distill(argv: list[str]) -> None:
    """Distil a student from a teacher on a dataset; evaluate it afterwards when --eval_split is given."""
    from .data import collator_for, load_speech_dataset, prepare_dataset
    from .student import load_model, make_student
    from .trainer import DistillationTrainer

    dataclasses = (TeacherArguments, StudentArguments, DataArguments, DistillationConfig)
    t_args, s_args, d_args, config = _parse(dataclasses, argv, "hf-asr-distill distill")
    processor = AutoProcessor.from_pretrained(t_args.processor or t_args.teacher)
    teacher = load_model(t_args.teacher)
    if s_args.student:
        student = load_model(s_args.student)
    else:
        student, _ = make_student(teacher, freeze_encoder=s_args.freeze_encoder, **s_args.shrink())
    prepare = dict(processor=processor, model=teacher, language=config.language, task=config.task,
                   **d_args.prepare_options())
    raw = load_speech_dataset(d_args.dataset, d_args.train_split, d_args.audio_column, d_args.text_column)
    train, stats = prepare_dataset(_limit(raw, d_args.max_samples), seed=config.seed, **prepare)
    print(f"training on {stats.kept} rows ({stats})")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, processing_class=processor,
                                  train_dataset=train, data_collator=collator_for(processor, student),
                                  teacher_cache=d_args.teacher_cache)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model()
    if d_args.eval_split:
        raw = load_speech_dataset(d_args.dataset, d_args.eval_split, d_args.audio_column, d_args.text_column)
        test, _ = prepare_dataset(_limit(raw, d_args.max_samples), long_form=True,
                                  **{**prepare, "timestamp_probability": 0.0, "max_seconds": None})
        # the saved student and a fresh teacher: whatever the backend did to them (ZeRO-3 partitions), every process
        # evaluates its share of the rows on its device, and the main process writes the report
        device = _device("auto")
        dtype = _eval_dtype(device)
        _report({"teacher": load_model(t_args.teacher, dtype=dtype).to(device),
                 "student": load_model(config.output_dir, dtype=dtype).to(device)},
                processor, test, Path(config.output_dir) / "report", batch_size=config.per_device_eval_batch_size)


def _device(name: str) -> Any:
    """`auto`: this process's device (its own GPU under accelerate launch / torchrun, else the GPU or the CPU)."""
    import torch

    return process_state().device if name == "auto" else torch.device(name)


def _eval_dtype(device: Any) -> Any:
    """fp32 on a CPU for every model compared (a checkpoint saved in fp16 would otherwise run emulated and slow, and
    be timed against an fp32 student); on an accelerator, each model as saved."""
    import torch

    return torch.float32 if device.type == "cpu" else None


def _report(models: dict, processor: Any, dataset: Any, output_dir: Path, meta: dict | None = None,
            **kwargs: Any) -> list:
    from .evaluation import compare, evaluate_model, parity, report_meta, write_report

    results = compare([evaluate_model(name, model, processor, dataset, **kwargs) for name, model in models.items()])
    if not process_state().is_main_process:  # every process has the gathered results; one writes them
        return results
    reference = next(iter(models.values()))
    meta = report_meta(results, reference, len(dataset), **(meta or {}), **parity(results))
    paths = write_report(results, output_dir, meta=meta)
    print(paths["md"].read_text())
    print(f"report written to {', '.join(str(p) for p in paths.values())}")
    return results


def cmd_evaluate(argv: list[str]) -> None:
    """Compare the teacher and student(s): WER, CER, runaways, params, size, latency, RTFx, speed-up."""
    from .data import load_speech_dataset, prepare_dataset
    from .student import load_model

    t_args, e_args, lang = _parse((TeacherArguments, EvalArguments, LanguageArguments), argv,
                                  "hf-asr-distill evaluate")
    processor = AutoProcessor.from_pretrained(t_args.processor or t_args.teacher)
    device = _device(e_args.device)
    dtype = _eval_dtype(device)
    models = {"teacher": load_model(t_args.teacher, dtype=dtype).to(device)}
    for path in e_args.student:
        models[Path(path).name if len(e_args.student) > 1 else "student"] = load_model(path, dtype=dtype).to(device)
    raw = load_speech_dataset(e_args.dataset, e_args.split, e_args.audio_column, e_args.text_column)
    forms = [f.strip() for f in e_args.formats.split(",") if f.strip()]
    dataset, _ = prepare_dataset(_limit(raw, e_args.max_samples), processor, models["teacher"],
                                 e_args.audio_column, e_args.text_column,
                                 long_form=e_args.long_form and forms == ["pytorch"], **lang.options())
    out = Path(e_args.output_dir)
    extra = {"speculative": _speculative(models, processor, dataset)} if e_args.assistant else {}
    _report(_deployed(models, processor, dataset, forms, out / "deployed"), processor, dataset, out,
            batch_size=e_args.batch_size, repeats=e_args.repeats, warmup=e_args.warmup, english=e_args.english,
            generate_kwargs=e_args.generate_kwargs() or None, meta=extra)


def _deployed(models: dict, processor: Any, dataset: Any, forms: list[str], folder: Path) -> dict:
    """Every model in every form asked for (PyTorch as loaded; the others exported into `folder`, by name)."""
    from .data import collator_for
    from .export import deploy

    example = collator_for(processor, models["teacher"])([dataset[i] for i in range(min(2, len(dataset)))])
    out = {}
    for form in forms:
        for name, model in models.items():
            key = name if len(forms) == 1 else f"{name} ({form})"
            out[key] = model if form == "pytorch" else deploy(model, processor, folder / f"{name}-{form}", form,
                                                              example_batch=example, name=key)
    return out


def _speculative(models: dict, processor: Any, dataset: Any) -> dict:
    from .evaluation.speculative import assisted_decoding

    student = next(m for name, m in models.items() if name != "teacher")
    result = assisted_decoding(models["teacher"], student, processor, dataset)
    if process_state().is_main_process:
        print(f"speculative decoding ({result['assistant']}): {result['identical']}/{result['utterances']} outputs "
              f"identical to the teacher's, {result['speedup']:.2f}x ({result['teacher_ms']:.0f} -> "
              f"{result['assisted_ms']:.0f} ms per utterance)")
    return result


@dataclass
class PushArguments:
    student: str = field(metadata={"help": "Folder of the saved student (e.g. the distill --output_dir)."})
    repo_id: str = field(metadata={"help": "Hub repository to create or update, e.g. me/whisper-tiny.en-distil."})
    teacher: str | None = field(
        default=None, metadata={"help": "The teacher's Hub id (default: the one in STUDENT/distillation.json)."})
    report: str | None = field(
        default=None, metadata={"help": "report.json from `evaluate` (default: STUDENT/report/report.json)."})
    train_dataset: str | None = field(default=None, metadata={"help": "Training data (Hub id) for the card."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Evaluation data (Hub id) for the card."})
    student_name: str = field(default="student", metadata={"help": "The student's row name in the report."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    dry_run: bool = field(default=False, metadata={"help": "Write README.md (the card) but upload nothing."})
    deployed: str | None = field(
        default=None, metadata={"help": "Comma-separated folders from `export` (e.g. OUT/ct2-int8) to upload beside "
                                        "the checkpoint, each into a subfolder named after its form."})


def cmd_push(argv: list[str]) -> None:
    """Render the model card from the evaluation report and upload the student (never the teacher)."""
    import shutil

    from transformers import AutoConfig

    from .model_card import build_model_card, deployed_form, push_student, results_from_report

    (a,) = _parse((PushArguments,), argv, "hf-asr-distill push")
    folder = Path(a.student)
    report = Path(a.report) if a.report else folder / "report" / "report.json"
    results, meta = results_from_report(report) if report.exists() else ([], {})
    if report.with_suffix(".png").exists():
        shutil.copy(report.with_suffix(".png"), folder / "report.png")
        meta["chart"] = True
    record_path = folder / "distillation.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    teacher = a.teacher or record.get("teacher")
    if teacher is None:
        raise SystemExit(f"{record_path} not found: pass --teacher (the card's base_model).")
    meta["layer_maps"] = record.get("layer_maps")
    deployed = [d.strip() for d in (a.deployed or "").split(",") if d.strip()]
    card = build_model_card(a.repo_id, teacher, record.get("recipe", {}), AutoConfig.from_pretrained(folder), results,
                            meta, student_name=a.student_name, train_dataset=a.train_dataset,
                            eval_dataset=a.eval_dataset, steps=record.get("steps"),
                            deployed_forms=[deployed_form(d) for d in deployed])
    if a.dry_run:
        card.save(folder / "README.md")
        print(f"card written to {folder / 'README.md'} (dry run: nothing uploaded)")
        return
    print(push_student(folder, a.repo_id, card, private=a.private, deployed=deployed))


@dataclass
class PseudoLabelArguments:
    dataset: str = field(metadata={"help": "Audio to transcribe: Hub id, audiofolder, manifest or saved dataset."})
    output_dir: str = field(metadata={"help": "Where the labelled dataset is saved (load it with --dataset DIR)."})
    split: str = field(default="train", metadata={"help": "Split to transcribe."})
    audio_column: str = field(default="audio", metadata={"help": "Column with the audio."})
    text_column: str | None = field(
        default="text", metadata={"help": "Reference transcripts for the WER filter (absent: unlabelled audio)."})
    output_column: str = field(default="pseudo_text", metadata={"help": "Column for the teacher's transcripts."})
    max_wer: str = field(
        default="0.1", metadata={"help": "Keep rows whose pseudo-label is within this WER of the reference on "
                                         "normalised text (distil-whisper: 0.1); 'none' keeps every row."})
    timestamps: bool = field(
        default=False, metadata={"help": "Whisper: also keep the transcripts with timestamp tokens, as "
                                         "<output_column>_timestamps (train on them with --timestamp_column)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding the audio."})
    batch_size: int = field(default=8, metadata={"help": "Transcription batch size."})
    max_samples: int | None = field(default=None, metadata={"help": "Transcribe at most this many rows."})
    device: str = field(default="auto", metadata={"help": "Device: auto (each process's own GPU under accelerate "
                                                          "launch, else the GPU or CPU), cpu, cuda, ..."})


def cmd_pseudo_label(argv: list[str]) -> None:
    """Transcribe a dataset with the teacher (sequence-level KD targets), keep rows within --max_wer; resumable."""
    from .data import load_speech_dataset
    from .pseudo_label import pseudo_label
    from .student import load_model

    t_args, a, lang = _parse((TeacherArguments, PseudoLabelArguments, LanguageArguments), argv,
                             "hf-asr-distill pseudo-label")
    max_wer = None if a.max_wer.lower() == "none" else float(a.max_wer)
    processor = AutoProcessor.from_pretrained(t_args.processor or t_args.teacher)
    teacher = load_model(t_args.teacher).to(_device(a.device))
    raw = _limit(load_speech_dataset(a.dataset, a.split, a.audio_column, None), a.max_samples)
    labelled, stats = pseudo_label(teacher, processor, raw, a.audio_column, a.text_column, a.output_column,
                                   max_wer, batch_size=a.batch_size, work_dir=Path(a.output_dir) / "progress",
                                   timestamps=a.timestamps, num_workers=a.num_workers, **lang.options())
    if not process_state().is_main_process:  # every process has the merged result; one saves it
        return
    labelled.save_to_disk(str(Path(a.output_dir) / "dataset"))
    print(f"kept {stats.kept} of {stats.transcribed} rows ({stats}); saved to {Path(a.output_dir) / 'dataset'}")


@dataclass
class CacheArguments:
    output_dir: str = field(metadata={"help": "Cache directory (re-run to resume an interrupted cache)."})
    k: int = field(default=8, metadata={"help": "Teacher probabilities kept per position (top-k)."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature of the cached probabilities."})
    hidden_layers: str | None = field(
        default=None, metadata={"help": 'Teacher hidden states to keep, JSON: {"decoder": [4]} or {"encoder": [4, 8]}'})
    encoder_outputs: bool = field(default=False, metadata={"help": "Whisper: keep the final encoder output."})
    batch_size: int = field(default=8, metadata={"help": "Teacher batch size."})
    language: str | None = field(default=None, metadata={"help": "Whisper: as distill --language."})
    task: str | None = field(default=None, metadata={"help": "Whisper: as distill --task."})
    seed: int = field(default=42, metadata={"help": "As distill --seed (it picks the rows trained with timestamps)."})
    shard_mb: int = field(default=1000, metadata={"help": "Size of a cache shard (MB): one file per this much."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding the audio."})
    device: str = field(default="auto", metadata={"help": "Device: auto (each process's own GPU under accelerate "
                                                          "launch, else the GPU or CPU), cpu, cuda, ..."})


def cmd_cache_teacher(argv: list[str]) -> None:
    """Run the teacher once over the training data and store top-k probabilities / hidden states (resumable).

    The data options are distill's: give the same ones, so the cache matches the rows and labels it will serve."""
    from .cache import cache_size_bytes, cache_teacher, encoder_output_bytes
    from .data import load_speech_dataset, prepare_dataset
    from .student import load_model

    t_args, d, a = _parse((TeacherArguments, DataArguments, CacheArguments), argv, "hf-asr-distill cache-teacher")
    processor = AutoProcessor.from_pretrained(t_args.processor or t_args.teacher)
    teacher = load_model(t_args.teacher).to(_device(a.device))
    raw = _limit(load_speech_dataset(d.dataset, d.train_split, d.audio_column, d.text_column), d.max_samples)
    dataset, _ = prepare_dataset(raw, processor, teacher, language=a.language, task=a.task, seed=a.seed,
                                 **d.prepare_options())
    main = process_state().is_main_process
    if a.encoder_outputs and main:  # say what it costs before spending it
        print(f"encoder outputs: {encoder_output_bytes(teacher, len(dataset)) / 1e9:.2f} GB on disk (fp16)")
    layers = {k: list(v) for k, v in json.loads(a.hidden_layers).items()} if a.hidden_layers else None
    cache_teacher(teacher, processor, dataset, a.output_dir, k=a.k, temperature=a.temperature, hidden_layers=layers,
                  encoder_outputs=a.encoder_outputs, batch_size=a.batch_size, shard_bytes=a.shard_mb * 10**6,
                  num_workers=a.num_workers, audio_column=d.audio_column)
    if main:
        print(f"cache complete: {cache_size_bytes(a.output_dir) / 1e6:.1f} MB in {a.output_dir}")


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "The student (or teacher) folder or Hub id; its processor is read from it."})
    output_dir: str = field(metadata={"help": "Where each form is written, one folder per form."})
    forms: str = field(default="ct2-int8", metadata={"help": "Comma-separated: pytorch-int8, ct2-int8, ct2-float32, "
                                                             "ct2-float16, ct2-int8_float16, onnx, onnx-int8."})
    dataset: str | None = field(
        default=None, metadata={"help": "Utterances for the parity check (and for tracing ONNX graphs)."})
    split: str = field(default="test", metadata={"help": "Split of --dataset."})
    max_samples: int = field(default=32, metadata={"help": "Utterances the parity check compares."})
    max_wer_delta: float = field(
        default=0.01, metadata={"help": "Parity bound: the exported form's WER may exceed the PyTorch model's by "
                                        "this much (absolute, 0.01 = 1 point) before it is flagged."})
    strict: bool = field(default=False, metadata={"help": "Fail (exit 1) when a form breaks the parity bound."})


def cmd_export(argv: list[str]) -> None:
    """Export a student to deployment forms (CTranslate2 for faster-whisper, ONNX, int8), each with a parity check."""
    from .data import collator_for, load_speech_dataset, prepare_dataset
    from .export import deploy, parity_check
    from .student import load_model

    a, lang = _parse((ExportArguments, LanguageArguments), argv, "hf-asr-distill export")
    processor = AutoProcessor.from_pretrained(a.model)
    model = load_model(a.model).eval()
    dataset = example = None
    if a.dataset:
        raw = _limit(load_speech_dataset(a.dataset, a.split), a.max_samples)
        dataset, _ = prepare_dataset(raw, processor, model, **lang.options())
        example = collator_for(processor, model)([dataset[i] for i in range(min(2, len(dataset)))])
    failed, report = [], {}
    for form in [f.strip() for f in a.forms.split(",") if f.strip()]:
        deployed = deploy(model, processor, Path(a.output_dir) / form, form, example_batch=example)
        line = f"{form}: {deployed.path} ({deployed.size_bytes() / 1e6:.1f} MB)"
        if dataset is not None:
            result = report[form] = parity_check(model, deployed, processor, dataset, max_wer_delta=a.max_wer_delta)
            line += (f"; parity: {result['identical']}/{result['utterances']} transcripts identical, WER "
                     f"{100 * result['wer_deployed']:.2f}% vs {100 * result['wer_pytorch']:.2f}% (PyTorch)"
                     f"{'' if result['ok'] else ' -- OVER THE BOUND'}")
            failed += [] if result["ok"] else [form]
        print(line)
    if report:
        (Path(a.output_dir) / "parity.json").write_text(json.dumps(report, indent=2))
    if failed and a.strict:
        raise SystemExit(f"parity check failed for {', '.join(failed)} (WER more than {a.max_wer_delta} above PyTorch)")


@dataclass
class PlanArguments:
    teacher: str = field(metadata={"help": "The teacher (folder or Hub id); its processor is read from it."})
    shapes: str = field(metadata={"help": "Candidate students: make_student options per shape, shapes separated by "
                                          "semicolons, e.g. 'encoder_layers=4,decoder_layers=2;encoder_layers=2,"
                                          "decoder_layers=2,d_model=256,encoder_attention_heads=4,"
                                          "decoder_attention_heads=4'."})
    forms: str = field(default="pytorch,pytorch-int8", metadata={
        "help": "Forms to size and time, comma-separated: pytorch, pytorch-int8, ct2-int8 (Whisper, needs [export])."})
    seconds: float = field(default=5.0, metadata={"help": "Length of the clip each candidate transcribes."})
    tokens: int = field(default=24, metadata={"help": "Tokens every Whisper candidate decodes (end-of-text off)."})
    batch_size: int = field(default=1, metadata={"help": "Clips per call."})
    repeats: int = field(default=3, metadata={"help": "Timed calls per candidate and form (median reported)."})


def cmd_plan(argv: list[str]) -> None:
    """Candidate student shapes with parameters, MB per form and latency here: pick one before training it."""
    import torch

    from .plan import parse_shapes, plan_students, plan_table
    from .student import load_model

    (a,) = _parse((PlanArguments,), argv, "hf-asr-distill plan")
    rows = plan_students(load_model(a.teacher), AutoProcessor.from_pretrained(a.teacher), parse_shapes(a.shapes),
                         forms=tuple(f.strip() for f in a.forms.split(",") if f.strip()), seconds=a.seconds,
                         tokens=a.tokens, batch_size=a.batch_size, repeats=a.repeats)
    print(plan_table(rows))
    print(f"latency: median ms per call of {a.batch_size} x {a.seconds:g} s clip(s) on {torch.get_num_threads()} "
          "threads, untrained candidates decoding the same number of tokens")


def cmd_demo(argv: list[str]) -> None:
    """The whole job offline on CPU: synthesise speech, distil the shipped teacher, print the side-by-side table."""
    from .demo import DemoArguments, run_demo

    (args,) = _parse((DemoArguments,), argv, "hf-asr-distill demo")
    run_demo(args)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "create-student": cmd_create_student,
    "demo": cmd_demo,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "plan": cmd_plan,
    "pseudo-label": cmd_pseudo_label,
    "cache-teacher": cmd_cache_teacher,
    "push": cmd_push,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `hf-asr-distill` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:16s}{fn.__doc__.splitlines()[0]}" for name, fn in COMMANDS.items()]
        print("usage: hf-asr-distill <command> [--config FILE] [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"unknown command {argv[0]!r}")
        return
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
