"""Model cards that carry the student's numbers, and pushing the student (never the teacher) to the Hub."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .config import DistillationConfig
from .evaluation import ModelResult, extras_text, language_table, report_table

logger = logging.getLogger(__name__)

TEMPLATE = resources.files("hf_asr_distill") / "model_cards" / "student_card.md"
# What a student upload may contain: weights, configs, processor/tokenizer files, the card and its chart.
UPLOAD_PATTERNS = [
    "model*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "preprocessor_config.json", "processor_config.json", "tokenizer*", "vocab.json", "merges.txt",
    "normalizer.json", "added_tokens.json", "special_tokens_map.json", "README.md", "report.png", "distillation.json",
]
RECORD_FILE = "distillation.json"
RECIPE_FIELDS = ("alpha_ce", "alpha_kd", "alpha_hidden", "kd_loss", "hidden_loss", "temperature", "projection",
                 "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "language", "task")


def results_from_report(path: str | Path) -> tuple[list[ModelResult], dict]:
    """Read back the results and metadata that `write_report` saved in `report.json`."""
    payload = json.loads(Path(path).read_text())
    return [ModelResult(**r) for r in payload["results"]], payload.get("meta", {})


def hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub repository id (owner/name) rather than a local path, else None."""
    if not name or os.path.exists(name) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    return name


def _eval_results(results: list[ModelResult], student: str, dataset: str | None, name: str) -> list[EvalResult]:
    row = next((r for r in results if r.name == student), None)
    if row is None or dataset is None:
        return []
    local = hub_id(dataset) is None  # a local folder: name it, but do not pretend it is a Hub dataset
    common = dict(task_type="automatic-speech-recognition", dataset_type="custom" if local else dataset,
                  dataset_name=f"{Path(dataset).name} (local)" if local else name)
    return [EvalResult(metric_type="wer", metric_value=round(100 * row.scores["wer"], 2), metric_name="WER", **common),
            EvalResult(metric_type="cer", metric_value=round(100 * row.scores["cer"], 2), metric_name="CER", **common)]


def _settings(teacher: str, recipe: dict, student_config: Any, meta: dict, steps: int | None,
              train_dataset: str | None) -> list[tuple[str, str]]:
    """The "how it was distilled" rows: only what is known (nothing printed as None)."""
    known = {k: v for k, v in recipe.items() if v is not None}
    # layers and widths, each once: configs alias some names (Whisper's hidden_size is its d_model)
    shape = {k: getattr(student_config, k) for k in ("encoder_layers", "decoder_layers", "d_model",
                                                     "num_hidden_layers", "hidden_size")
             if hasattr(student_config, k) and k not in student_config.attribute_map}
    rows = [("teacher", f"`{teacher}`"), ("student shape", ", ".join(f"{k}={v}" for k, v in shape.items()))]
    if {"alpha_ce", "alpha_kd"} <= set(known):
        loss = f"{known['alpha_ce']} * hard-label + {known['alpha_kd']} * {known.get('kd_loss', 'kl')}"
        if known.get("alpha_hidden"):
            loss += f" + {known['alpha_hidden']} * hidden ({known.get('hidden_loss')})"
        rows.append(("loss", f"`{loss}`"))
    for name, key in (("temperature", "temperature"), ("projection", "projection"),
                      ("learning rate", "learning_rate"), ("language", "language"), ("task", "task")):
        if key in known and (key != "projection" or known.get("alpha_hidden")):
            rows.append((name, str(known[key])))
    if "per_device_train_batch_size" in known:
        rows.append(("batch size (per device x accumulation)",
                     f"{known['per_device_train_batch_size']} x {known.get('gradient_accumulation_steps', 1)}"))
    copied = getattr(student_config, "distillation_layer_map", None)
    if copied:
        rows.append(("layers copied from the teacher", f"`{json.dumps(copied)}`"))
    if meta.get("layer_maps"):
        rows.append(("hidden-state layer maps", f"`{json.dumps(meta['layer_maps'])}`"))
    if steps is not None:
        rows.append(("training steps", str(steps)))
    if train_dataset:
        rows.append(("training data", train_dataset))
    return rows if known else []


def _card_languages(meta: dict, recipe: dict, language: str | list[str] | None) -> str | list[str] | None:
    """The languages the card declares: given, else those evaluated, else the one trained on."""
    if language is not None:
        return language
    if meta.get("languages"):
        return meta["languages"]
    return recipe.get("language")


def build_model_card(
    repo_id: str,
    teacher: str,
    recipe: DistillationConfig | dict,
    student_config: Any,
    results: list[ModelResult] | None = None,
    meta: dict | None = None,
    student_name: str = "student",
    train_dataset: str | None = None,
    eval_dataset: str | None = None,
    steps: int | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    deployed_forms: list[str] | None = None,
) -> ModelCard:
    """Render the card: Hub metadata with a `model-index` of WER/CER, the recipe, and the accuracy/cost table.

    Whatever is not known (no report, no recorded recipe) is left out rather than printed as a placeholder.
    `deployed_forms` names the exported forms uploaded beside the checkpoint (one subfolder each, see
    `push_student`): the card shows how to run them.
    """
    results, meta = results or [], meta or {}
    recipe = asdict(recipe) if isinstance(recipe, DistillationConfig) else dict(recipe)
    eval_dataset = eval_dataset or meta.get("dataset")
    train_dataset = train_dataset or meta.get("train_dataset")
    # Only Hub ids go into the metadata: local paths mean nothing to the Hub (and would be rejected there).
    data = ModelCardData(
        language=_card_languages(meta, recipe, language), license=license, library_name="transformers",
        pipeline_tag="automatic-speech-recognition", base_model=hub_id(teacher),
        datasets=sorted({d for d in (train_dataset, eval_dataset) if hub_id(d)}) or None,
        tags=["distillation", "hf-asr-distill", student_config.model_type],
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(results, student_name, eval_dataset, eval_dataset or "") or None,
    )
    long_form = meta.get("long_form")
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], repo_id=repo_id, teacher=teacher,
        teacher_link=f"[{teacher}](https://huggingface.co/{teacher})" if hub_id(teacher) else f"`{Path(teacher).name}`",
        recipe={k: recipe.get(k) for k in RECIPE_FIELDS},
        settings=_settings(teacher, recipe, student_config, meta, steps, train_dataset),
        table=report_table(results) if results else "", language_table=language_table(results) if results else "",
        long_form=(f"{long_form['rows']} recordings longer than the training window were decoded with "
                   f"{long_form['method']}.") if long_form else "",
        chart="report.png" if meta.get("chart") else "", extras=extras_text(meta).strip(),
        deployed=sorted(deployed_forms or []),
        eval_dataset=eval_dataset or "the evaluation set", eval_utterances=meta.get("utterances", "?"),
        device=meta.get("device"), batch_size=results[0].batch_size if results else "?",
    )


def push_student(folder: str | Path, repo_id: str, card: ModelCard | None = None, token: str | None = None,
                 private: bool | None = None, commit_message: str = "Upload distilled student",
                 revision: str | None = None, deployed: list[str | Path] | None = None) -> Any:
    """Upload a saved student: weights, configs, processor, generation config and card only; each folder in
    `deployed` (written by `export_model`, e.g. the CTranslate2 form faster-whisper loads) goes into a subfolder
    named after its form (`ct2-int8/`, `onnx/`).

    Checkpoints, projections, training arguments, optimizer state and the teacher are never uploaded.
    """
    folder = Path(folder)
    if card is not None:
        card.save(folder / "README.md")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    result = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=UPLOAD_PATTERNS,
                               ignore_patterns=["checkpoint-*", "projections.safetensors"],
                               commit_message=commit_message, revision=revision)
    for path in deployed or []:
        form = deployed_form(path)
        result = api.upload_folder(repo_id=repo_id, folder_path=str(path), path_in_repo=form,
                                   commit_message=f"{commit_message} ({form})", revision=revision)
    return result


def deployed_form(path: str | Path) -> str:
    """The form of a folder written by `export_model` (its `deployment.json`); refuses any other folder."""
    from .export import RECORD

    record = Path(path) / RECORD
    if not record.exists():
        raise ValueError(f"{path} is not an exported student (no {RECORD}): make it with `hf-asr-distill export`.")
    return json.loads(record.read_text())["form"]


# ---- from a trainer --------------------------------------------------------------------------------------------


def distillation_record(trainer: Any) -> dict[str, Any]:
    """How a student was made (recipe, teacher, layer maps, steps): saved beside it as `distillation.json`."""
    teacher = trainer.teacher
    return {
        "teacher": (teacher.config._name_or_path or "teacher") if teacher is not None else "none (pseudo-labels)",
        "recipe": {k: getattr(trainer.args, k) for k in RECIPE_FIELDS},
        "layer_maps": {stack: {str(s): t for s, t in m.items()} for stack, m in trainer.layer_maps.items()},
        "shared_encoder": trainer.share_encoder,
        "steps": trainer.state.global_step,
    }


def trainer_card(trainer: Any, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
    """The card of a trainer's student: recipe, layer maps, and `output_dir/report/report.json` if present."""
    output_dir = Path(trainer.args.output_dir)
    report = output_dir / "report" / "report.json"
    results, meta = results_from_report(report) if report.exists() else ([], {})
    record = distillation_record(trainer)
    meta = {**meta, "layer_maps": record["layer_maps"] or None, "chart": report.with_suffix(".png").exists()}
    return build_model_card(
        repo_id=repo_id or trainer.args.hub_model_id or output_dir.name, teacher=record["teacher"],
        recipe=record["recipe"], student_config=trainer.accelerator.unwrap_model(trainer.model).config,
        results=results, meta=meta, steps=record["steps"], **kwargs,
    )


def push_trainer(trainer: Any, commit_message: str | None, token: str | None, private: bool | None,
                 revision: str | None = None, **card_kwargs: Any) -> Any:
    """Save a trainer's student and upload it with its card (only from the main process)."""
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
    card = trainer_card(trainer, repo_id, **card_kwargs)
    chart = Path(args.output_dir) / "report" / "report.png"
    if chart.exists():
        shutil.copy(chart, Path(args.output_dir) / "report.png")
    return push_student(args.output_dir, repo_id, card, token=token or args.hub_token,
                        private=args.hub_private_repo if private is None else private,
                        commit_message=commit_message or "Upload distilled student", revision=revision)
