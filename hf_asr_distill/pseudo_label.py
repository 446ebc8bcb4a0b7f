"""Sequence-level distillation: the teacher transcribes the training audio and those transcripts become targets.

Pseudo-labels carry the teacher's own casing, punctuation and spelling, so the hard-label term and the KD term
pull the same way. With references present, rows whose pseudo-label is too far from the reference (WER on
normalised text above `max_wer`, distil-whisper uses 0.1) are dropped; unlabelled audio is kept as is.
Progress is written batch by batch, so an interrupted run resumes without redoing or losing rows; under
`accelerate launch` every process transcribes its own share.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
from .distributed import process_state, share_of
from datasets import Dataset
from transformers import PreTrainedModel

from .data import FeatureTransform, LabelOptions, collator_for, row_loader
from .evaluation import text_normalizer, transcribe_batch
from .families import family_of

logger = logging.getLogger(__name__)

PROGRESS_FILE = "pseudo_labels.jsonl"


@dataclass
class PseudoLabelStats:
    """How many rows were transcribed, kept, and dropped by the WER filter or for an empty reference."""

    transcribed: int = 0
    kept: int = 0
    dropped_wer: int = 0
    dropped_empty_reference: int = 0


def row_wer(prediction: str, reference: str, normalizer: Any) -> float | None:
    """WER of one pseudo-label against its reference on normalised text; None for an empty reference."""
    ref, hyp = normalizer(reference or ""), normalizer(prediction or "")
    if not ref.strip():
        return None
    return jiwer.wer(ref, hyp)


def _load_progress(folder: Path) -> dict[int, dict]:
    """Rows already transcribed, from every process's progress file (any number of processes, any earlier run)."""
    done: dict[int, dict] = {}
    for path in sorted(folder.glob("pseudo_labels*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that batch is simply redone
                continue
            done[int(row["index"])] = row
    return done


def _progress_file(folder: Path, state: Any) -> Path:
    name = PROGRESS_FILE if state.num_processes == 1 else f"pseudo_labels.rank{state.process_index}.jsonl"
    return folder / name


def transcribe_dataset(
    teacher: PreTrainedModel,
    processor: Any,
    dataset: Dataset,
    audio_column: str = "audio",
    batch_size: int = 8,
    work_dir: str | Path | None = None,
    generate_kwargs: dict | None = None,
    progress: bool = True,
    language: str | None = None,
    language_column: str | None = None,
    task: str | None = None,
    timestamps: bool = False,
    num_workers: int = 0,
) -> list[str]:
    """The teacher's transcript of every row (with Whisper's timestamp tokens when `timestamps=True`).

    Under `accelerate launch`/`torchrun` each process transcribes its share of the batches (every n-th) through a
    DataLoader with `num_workers` workers decoding audio; with `work_dir`, each writes its progress batch by batch,
    and a rerun (with any number of processes) resumes without redoing or losing rows. Every process returns the
    whole, merged result (in the dataset's order).
    """
    from tqdm.auto import tqdm

    state = process_state()
    family = family_of(teacher)
    options = LabelOptions(language, language_column, task)
    options.codes = family.language_codes(teacher, language, language_column, task)
    transform = FeatureTransform(processor, family, audio_column, text_column=None, options=options)
    folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="pseudo_labels_"))
    folder.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()  # every process sees the same progress before choosing its rows
    done = _load_progress(folder)
    todo = [i for i in range(len(dataset)) if i not in done]
    if done:
        logger.info("pseudo-labelling resumes: %d rows done, %d to go", len(done), len(todo))
    mine = share_of(todo, batch_size, state)
    teacher.eval()
    loader = row_loader(dataset, mine, transform, collator_for(processor, teacher), batch_size, num_workers)
    with open(_progress_file(folder, state), "a") as log:
        for indices, batch in tqdm(loader, desc="pseudo-labelling", disable=not progress or not state.is_main_process):
            if timestamps:
                texts = transcribe_batch(teacher, processor, batch, generate_kwargs, timestamps=True)
            else:
                texts = transcribe_batch(teacher, processor, batch, generate_kwargs)
            log.write("".join(json.dumps({"index": i, "text": t.strip()}) + "\n" for i, t in zip(indices, texts)))
            log.flush()
    state.wait_for_everyone()
    done = _load_progress(folder)
    missing = [i for i in range(len(dataset)) if i not in done]
    if missing:
        raise RuntimeError(f"pseudo-labelling lost rows {missing[:10]}: rerun with the same work_dir to finish them.")
    return [done[i]["text"] for i in range(len(dataset))]


def strip_timestamps(text: str) -> str:
    """Whisper's `<|1.20|>` tokens removed from a transcript."""
    return " ".join(re.sub(r"<\|\d+\.\d+\|>", " ", text).split())


def pseudo_label(
    teacher: PreTrainedModel,
    processor: Any,
    dataset: Dataset,
    audio_column: str = "audio",
    text_column: str | None = "text",
    output_column: str = "pseudo_text",
    max_wer: float | None = 0.1,
    english: bool = True,
    **kwargs: Any,
) -> tuple[Dataset, PseudoLabelStats]:
    """Add the teacher's transcripts as `output_column`, keeping rows within `max_wer` of the reference.

    The filter is distil-whisper's: WER of the pseudo-label against the reference on normalised text (Whisper's
    English normaliser, or the basic one for other languages) at most `max_wer` (default 0.1, i.e. 10 %; None keeps
    every row). `text_column=None` (or a dataset without it) means unlabelled audio: every row is kept. Rows with
    an empty reference are dropped when filtering (their WER is undefined). With `timestamps=True` the transcripts
    with Whisper's timestamp tokens go to `<output_column>_timestamps` (train on them with `timestamp_column=`).
    Extra arguments go to `transcribe_dataset` (batch_size, work_dir, language, language_column, task, ...).
    """
    if max_wer is not None and max_wer < 0:
        raise ValueError(f"max_wer must be >= 0 (a fraction, 0.1 = 10 %), got {max_wer}.")
    stamped = transcribe_dataset(teacher, processor, dataset, audio_column, **kwargs)
    texts = [strip_timestamps(t) for t in stamped] if kwargs.get("timestamps") else stamped
    stats = PseudoLabelStats(transcribed=len(texts))
    labelled = text_column is not None and text_column in dataset.column_names
    languages = _row_languages(dataset, kwargs.get("language"), kwargs.get("language_column"))
    tokenizer = getattr(processor, "tokenizer", None)
    normalizers = {lang: text_normalizer(tokenizer, english, language=lang) for lang in set(languages)}
    references = dataset[text_column] if labelled and max_wer is not None else None
    keep = []
    for i, text in enumerate(texts):
        if references is None:
            keep.append(i)
            continue
        wer = row_wer(text, references[i], normalizers[languages[i]])
        if wer is None:
            stats.dropped_empty_reference += 1
        elif wer > max_wer:
            stats.dropped_wer += 1
        else:
            keep.append(i)
    stats.kept = len(keep)
    out = dataset.add_column(output_column, texts)
    if kwargs.get("timestamps"):
        out = out.add_column(f"{output_column}_timestamps", stamped)
    out = out.select(keep) if len(keep) < len(out) else out
    logger.info("pseudo-labels: kept %d of %d rows (%s)", stats.kept, stats.transcribed, stats)
    return out, stats


def _row_languages(dataset: Dataset, language: str | None, language_column: str | None) -> list[str | None]:
    if language_column is not None:
        return [str(v) for v in dataset[language_column]]
    return [language] * len(dataset)
