"""Sequence-level distillation: the teacher transcribes the training audio and those transcripts become targets.

Pseudo-labels carry the teacher's own casing, punctuation and spelling, so the hard-label term and the KD term
pull the same way. With references present, rows whose pseudo-label is too far from the reference (WER on
normalised text above `max_wer`, distil-whisper uses 0.1) are dropped; unlabelled audio is kept as is.
Progress is written batch by batch, so an interrupted run resumes without redoing or losing rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
from datasets import Dataset
from transformers import PreTrainedModel

from .data import FeatureTransform, collator_for
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


def _load_progress(path: Path) -> dict[int, str]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that batch is simply redone
                continue
            done[int(row["index"])] = row["text"]
    return done


def transcribe_dataset(
    teacher: PreTrainedModel,
    processor: Any,
    dataset: Dataset,
    audio_column: str = "audio",
    batch_size: int = 8,
    work_dir: str | Path | None = None,
    generate_kwargs: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """The teacher's transcript of every row (Whisper `generate`, CTC greedy), resumable through `work_dir`."""
    from tqdm.auto import tqdm

    transform = FeatureTransform(processor, family_of(teacher), audio_column, text_column=None)
    collate = collator_for(processor, teacher)
    path = Path(work_dir) / PROGRESS_FILE if work_dir else None
    done = _load_progress(path) if path else {}
    todo = [i for i in range(len(dataset)) if i not in done]
    if done:
        logger.info("pseudo-labelling resumes: %d rows done, %d to go", len(done), len(todo))
    teacher.eval()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") if path else contextlib.nullcontext(io.StringIO()) as log:
        for start in tqdm(range(0, len(todo), batch_size), desc="pseudo-labelling", disable=not progress):
            indices = todo[start : start + batch_size]
            features = transform({audio_column: [dataset[i][audio_column] for i in indices]})
            rows = [{k: v[j] for k, v in features.items()} for j in range(len(indices))]
            batch = collate(rows)
            batch["max_seconds"] = max(r["audio_seconds"] for r in rows)
            for index, text in zip(indices, transcribe_batch(teacher, processor, batch, generate_kwargs)):
                done[index] = text.strip()
                log.write(json.dumps({"index": index, "text": done[index]}) + "\n")
            log.flush()
    return [done[i] for i in range(len(dataset))]


def pseudo_label(
    teacher: PreTrainedModel,
    processor: Any,
    dataset: Dataset,
    audio_column: str = "audio",
    text_column: str | None = "text",
    output_column: str = "pseudo_text",
    max_wer: float | None = None,
    english: bool = True,
    **kwargs: Any,
) -> tuple[Dataset, PseudoLabelStats]:
    """Add the teacher's transcripts as `output_column`, keeping rows within `max_wer` of the reference.

    `text_column=None` (or a dataset without it) means unlabelled audio: every row is kept. With `max_wer` set,
    rows with an empty reference are dropped (their WER is undefined). Extra arguments go to `transcribe_dataset`.
    """
    if max_wer is not None and max_wer < 0:
        raise ValueError(f"max_wer must be >= 0 (a fraction, 0.1 = 10 %), got {max_wer}.")
    texts = transcribe_dataset(teacher, processor, dataset, audio_column, **kwargs)
    stats = PseudoLabelStats(transcribed=len(texts))
    labelled = text_column is not None and text_column in dataset.column_names
    normalizer = text_normalizer(getattr(processor, "tokenizer", None), english)
    keep = []
    for i, text in enumerate(texts):
        if max_wer is None or not labelled:
            keep.append(i)
            continue
        wer = row_wer(text, dataset[i][text_column], normalizer)
        if wer is None:
            stats.dropped_empty_reference += 1
        elif wer > max_wer:
            stats.dropped_wer += 1
        else:
            keep.append(i)
    stats.kept = len(keep)
    out = dataset.add_column(output_column, texts).select(keep)
    logger.info("pseudo-labels: kept %d of %d rows (%s)", stats.kept, stats.transcribed, stats)
    return out, stats
