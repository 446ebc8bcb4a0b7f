"""Data: load speech datasets, decode audio without ffmpeg, extract features lazily, and batch them.

Sources: a Hub dataset id, a saved `datasets` dataset, an audiofolder (a folder with `metadata.csv`/`.jsonl`,
or one such folder per split), or a CSV/JSONL manifest of audio path + text. Audio is decoded with soundfile and
resampled with soxr, so neither ffmpeg nor torchcodec is needed.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import soxr
import torch
from .distributed import process_state
from datasets import Audio, Dataset, DatasetDict, IterableDataset, concatenate_datasets, load_dataset, load_from_disk
from transformers import PreTrainedModel

from .families import CTCCollator, Family, Limits, WhisperCollator, family_of, pad_labels

logger = logging.getLogger(__name__)

__all__ = ["AudioError", "CTCCollator", "FeatureTransform", "LabelOptions", "PrepareStats", "WhisperCollator",
           "audio_seconds", "collator_for", "decode_audio", "load_speech_dataset", "normalize_for_vocab", "pad_labels",
           "prepare_dataset"]


class AudioError(ValueError):
    """An audio file that cannot be decoded, is empty, or holds non-finite samples."""


# ---- loading ---------------------------------------------------------------------------------------------------


@dataclass
class _ResolvePaths:
    """Audio paths relative to the manifest's folder made absolute (a picklable map function)."""

    base: str
    source: str
    target: str

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {self.target: [str(Path(self.base) / name) for name in batch[self.source]]}


def _manifest(path: Path, audio_column: str, streaming: bool = False) -> Dataset | IterableDataset:
    """A CSV/JSONL manifest; relative audio paths are taken relative to the manifest's folder."""
    builder = "csv" if path.suffix == ".csv" else "json"
    ds = load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
    columns = ds.column_names or list(next(iter(ds)))
    column = "file_name" if audio_column not in columns and "file_name" in columns else audio_column
    if column not in columns:
        raise ValueError(f"{path} has no audio column {audio_column!r}; its columns are {columns}.")
    resolve = _ResolvePaths(str(path.parent), column, audio_column)
    ds = ds.map(resolve, batched=True) if streaming else ds.map(resolve, batched=True, desc="resolving audio paths")
    return ds.remove_columns("file_name") if column == "file_name" and audio_column != "file_name" else ds


def _find_metadata(folder: Path) -> Path | None:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_speech_dataset(
    source: str, split: str = "train", audio_column: str = "audio", text_column: str | None = "text",
    streaming: bool = False, **kwargs: Any,
) -> Dataset | IterableDataset:
    """Load one split of a speech dataset; audio stays undecoded (decoded later by `decode_audio`).

    `text_column=None` allows unlabelled audio. `streaming=True` returns an `IterableDataset` that reads rows as
    they are used (a corpus larger than the disk or the patience of a full pass); train on it with `max_steps`.
    Extra keyword arguments go to `datasets.load_dataset` for Hub ids.
    """
    path = Path(source)
    if path.is_file():
        ds = _manifest(path, audio_column, streaming)
    elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        ds = loaded[split] if isinstance(loaded, DatasetDict) else loaded
        ds = ds.to_iterable_dataset() if streaming else ds
    elif path.is_dir():
        metadata = _find_metadata(path / split) or _find_metadata(path)
        if metadata is None:
            raise ValueError(f"{path} has no metadata.csv or metadata.jsonl (in {path / split} or in itself).")
        ds = _manifest(metadata, audio_column, streaming)
    else:
        ds = load_dataset(source, split=split, streaming=streaming, **kwargs)
    columns = ds.column_names
    if columns is not None and audio_column not in columns:
        raise ValueError(f"{source} has no audio column {audio_column!r}; its columns are {columns}.")
    if columns is not None and text_column is not None and text_column not in columns:
        raise ValueError(f"{source} has no text column {text_column!r}; its columns are {columns}.")
    if ds.features is not None and isinstance(ds.features.get(audio_column), Audio):
        ds = ds.cast_column(audio_column, Audio(decode=False))  # decode ourselves: no ffmpeg/torchcodec needed
    return ds


# ---- decoding --------------------------------------------------------------------------------------------------


def _source_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    return str(value)


def decode_audio(value: Any, sampling_rate: int) -> np.ndarray:
    """Decode one audio value (a path, `{"bytes"|"path"}`, or `{"array", "sampling_rate"}`) to mono float32.

    Stereo is averaged to mono; any input rate is resampled to `sampling_rate` with soxr (high quality).
    Raises `AudioError` naming the file for unreadable, empty or non-finite audio.
    """
    name = _source_name(value)
    try:
        if isinstance(value, dict) and value.get("array") is not None:
            array, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
        elif isinstance(value, dict) and value.get("bytes"):
            array, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=False)
        else:
            array, rate = sf.read(value["path"] if isinstance(value, dict) else value, dtype="float32",
                                  always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as err:
        raise AudioError(f"cannot decode audio {name}: {err}") from err
    if array.ndim == 2:
        array = array.mean(axis=1)
    if array.size == 0:
        raise AudioError(f"audio {name} is empty (0 samples)")
    if not np.isfinite(array).all():
        raise AudioError(f"audio {name} contains NaN or infinite samples")
    if rate != sampling_rate:
        array = soxr.resample(array, rate, sampling_rate, quality="HQ").astype(np.float32)
    return array


def audio_seconds(value: Any) -> float:
    """Duration from the file header when possible (cheap), else by decoding."""
    if isinstance(value, dict) and value.get("array") is not None:
        return len(value["array"]) / float(value["sampling_rate"])
    try:
        source = io.BytesIO(value["bytes"]) if isinstance(value, dict) and value.get("bytes") else (
            value["path"] if isinstance(value, dict) else value)
        return sf.info(source).duration
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as err:
        raise AudioError(f"cannot read audio {_source_name(value)}: {err}") from err


# ---- preparation -----------------------------------------------------------------------------------------------

# Rows dropped for these reasons are errors (naming the row) unless on_error="skip"; the others are always dropped
# and counted: audio over the model's window, or too short, is a property of the corpus, not a fault.
FATAL_REASONS = ("bad_audio", "empty_text", "too_few_frames")
CHECK_COLUMNS = ("duration", "skip_reason", "skip_message")


@dataclass
class PrepareStats:
    """What `prepare_dataset` kept and why it dropped the rest."""

    kept: int = 0
    too_long: int = 0
    too_short: int = 0
    labels_too_long: int = 0
    bad_audio: int = 0
    empty_text: int = 0
    examples: list[str] = field(default_factory=list)  # the first few skip reasons, naming the rows

    def skip(self, reason: str, message: str) -> None:
        reason = "labels_too_long" if reason == "too_few_frames" else reason
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples) < 5:
            self.examples.append(message)


@dataclass
class LabelOptions:
    """How a row's text becomes labels: its language (fixed, or a column of per-row codes), the task, and
    timestamps for a share of rows that have timestamped text (drawn once per row from `seed`)."""

    language: str | None = None
    language_column: str | None = None
    task: str | None = None
    timestamp_column: str | None = None
    timestamp_probability: float = 0.0
    seed: int = 0
    codes: dict[str, str] | None = None  # accepted names -> the model's codes; None: no language tokens

    def language_of(self, row: dict, where: str) -> str | None:
        given = row.get(self.language_column) if self.language_column else self.language
        if given is None or self.codes is None:
            return given
        code = self.codes.get(str(given).lower())
        if code is None:
            raise ValueError(f"{where}: language {given!r} is unknown to this model; it knows "
                             f"{', '.join(sorted(set(self.codes.values())))}.")
        return code

    def timestamped(self, row: dict, example_id: int) -> bool:
        if not self.timestamp_column or not row.get(self.timestamp_column):
            return False
        return random.Random(f"{self.seed}:{example_id}").random() < self.timestamp_probability

    def labels(self, family: Family, processor: Any, row: dict, text_column: str, example_id: int,
               where: str) -> list[int]:
        timestamps = self.timestamped(row, example_id)
        text = row[self.timestamp_column] if timestamps else row[text_column]
        return family.label_ids(processor, text, self.language_of(row, where), self.task, timestamps)


@dataclass
class RowCheck:
    """Checks a batch of rows from the audio headers (no decoding) and records each row's duration and, when it is
    to be dropped, why. Picklable, so `datasets` can run it with `num_proc` and cache it by fingerprint."""

    family: Family
    processor: Any
    audio_column: str
    text_column: str | None
    options: LabelOptions
    limits: Limits
    min_seconds: float = 0.0

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {"duration": [], "skip_reason": [], "skip_message": [], "example_id": []}
        for j, index in enumerate(indices):
            row = {k: v[j] for k, v in batch.items()}
            example_id = int(row["example_id"]) if row.get("example_id") is not None else index
            seconds, reason, message = self.check(row, index, example_id)
            for key, value in zip(out, (seconds, reason, message, example_id)):
                out[key].append(value)
        return out

    def check(self, row: dict, index: int, example_id: int) -> tuple[float, str, str]:
        """(duration, reason, message); reason '' keeps the row."""
        name = _source_name(row[self.audio_column])
        if self.text_column is not None and not str(row[self.text_column] or "").strip():
            return 0.0, "empty_text", f"row {index}: empty transcript for {name}"
        try:
            seconds = audio_seconds(row[self.audio_column])
        except AudioError as err:
            return 0.0, "bad_audio", f"row {index}: {err}"
        if seconds <= 0:
            return 0.0, "bad_audio", f"row {index}: audio {name} is empty (0 samples)"
        if seconds > self.limits.max_seconds:
            return seconds, "too_long", f"row {index}: {seconds:.1f} s > {self.limits.max_seconds} s"
        if seconds < self.min_seconds:
            return seconds, "too_short", f"row {index}: {seconds:.2f} s < {self.min_seconds} s"
        if self.text_column is None:
            return seconds, "", ""
        labels = self.options.labels(self.family, self.processor, row, self.text_column, example_id, f"row {index}")
        if self.limits.max_label_tokens is not None and len(labels) > self.limits.max_label_tokens:
            return seconds, "labels_too_long", f"row {index}: more than {self.limits.max_label_tokens} label tokens"
        if self.limits.frames_for is not None:
            needed, frames = self.limits.frames_needed(labels), self.limits.frames_for(seconds)
            if needed > frames:
                return seconds, "too_few_frames", (
                    f"row {index}: {len(labels)} labels but only {frames} CTC frames for {name} ({needed} needed: one "
                    "per label and a blank between repeated labels): the CTC loss would be infinite")
        return seconds, "", ""


def _raise_or_count(reason: str, message: str, on_error: str, stats: PrepareStats) -> None:
    if reason in FATAL_REASONS and on_error == "raise":
        raise ValueError(f"{message} (pass on_error='skip' to drop such rows and count them)")
    stats.skip(reason, message)


def _label_options(family: Family, model: PreTrainedModel, ds: Any, text_column: str | None,
                   options: LabelOptions) -> LabelOptions:
    """Check language, task and timestamp settings against the model (and, for map-style data, every language in
    the column) before any row is read."""
    columns = ds.column_names  # None for some streams, whose columns are known only when read
    for name, column in (("language_column", options.language_column), ("timestamp_column", options.timestamp_column)):
        if column is not None and columns is not None and column not in columns:
            raise ValueError(f"{name}={column!r} is not a column of the dataset; its columns are {columns}.")
    if not 0 <= options.timestamp_probability <= 1:
        raise ValueError(f"timestamp_probability must be in [0, 1], got {options.timestamp_probability}.")
    options.codes = family.language_codes(model, options.language, options.language_column, options.task)
    if options.codes is not None and options.language_column is not None and isinstance(ds, Dataset):
        unknown = sorted({str(v) for v in ds.unique(options.language_column)} - set(options.codes),
                         key=str)
        if unknown:
            raise ValueError(f"language_column {options.language_column!r} holds languages this model does not know: "
                             f"{unknown}; it knows {', '.join(sorted(set(options.codes.values())))}.")
    return options


def prepare_dataset(
    ds: Dataset | IterableDataset,
    processor: Any,
    model: PreTrainedModel,
    audio_column: str = "audio",
    text_column: str | None = "text",
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    max_label_tokens: int | None = None,
    on_error: str = "raise",
    language: str | None = None,
    language_column: str | None = None,
    task: str | None = None,
    timestamp_column: str | None = None,
    timestamp_probability: float = 0.0,
    long_form: bool = False,
    num_proc: int | None = None,
    seed: int = 0,
    features: bool = True,
) -> tuple[Dataset | IterableDataset, PrepareStats]:
    """Check and filter every row, keep its duration, then extract features lazily at batch time.

    The model's family sets the default limits (Whisper: 30 s of audio and 448 label tokens; CTC: enough output
    frames for the labels, a blank between repeated labels counted). Bad rows (unreadable or empty audio, empty
    transcript, labels CTC cannot align) raise a `ValueError` naming the row, or with `on_error="skip"` are dropped
    and counted in the returned `PrepareStats`; audio outside the length limits is always dropped and counted.

    Map-style datasets are checked with `datasets.map` (audio headers only, `num_proc` processes, cached by
    fingerprint, run by the main process first under `accelerate launch`) and filtered through an index, so the
    audio is never rewritten; the `duration` column (seconds) serves `group_by_length`. An `IterableDataset`
    (streaming) is checked as it streams: bad rows raise naming the row, or are skipped and counted.

    Whisper: `language` (a code such as "de", for every row) or `language_column` (per-row codes) and `task`
    ("transcribe"/"translate") make the label prompt `<|startoftranscript|><|de|><|transcribe|><|notimestamps|>`,
    which teacher forcing and generation then share; multilingual models need one of them, English-only ones take
    neither. `timestamp_probability` of the rows with text in `timestamp_column` (e.g. pseudo-labels with
    `<|0.00|>` tokens) train with timestamps. `long_form=True` (evaluation) keeps audio over 30 s whole.

    `features=False` leaves the audio unread at batch time (labels and ids only): for training a student whose
    frozen encoder is shared with the teacher from an encoder-output cache, where the features would go unused.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is not supported; choose one of raise, skip.")
    family = family_of(model)
    # the seed matters only where it draws the rows trained with timestamps (and so changes the fingerprint)
    options = _label_options(family, model, ds, text_column, LabelOptions(
        language, language_column, task, timestamp_column, timestamp_probability,
        seed if timestamp_column and timestamp_probability else 0))
    limits = family.limits(model, processor)
    limits = replace(limits, max_seconds=max_seconds if max_seconds is not None else (
        float("inf") if long_form else limits.max_seconds),
        max_label_tokens=max_label_tokens if max_label_tokens is not None else limits.max_label_tokens)
    check = RowCheck(family, processor, audio_column, text_column, options, limits, min_seconds)
    transform = FeatureTransform(processor, family, audio_column, text_column, options, long_form, features)
    if isinstance(ds, IterableDataset):
        return _prepare_stream(ds, check, transform, on_error)
    return _prepare_map_style(ds, check, transform, on_error, num_proc)


def _prepare_map_style(ds: Dataset, check: RowCheck, transform: "FeatureTransform", on_error: str,
                       num_proc: int | None) -> tuple[Dataset, PrepareStats]:
    if len(ds) == 0:
        raise ValueError("The dataset has no rows.")
    needed = [c for c in (check.audio_column, check.text_column, check.options.language_column,
                          check.options.timestamp_column, "example_id") if c is not None and c in ds.column_names]
    old = [c for c in CHECK_COLUMNS if c in ds.column_names]  # a dataset prepared before: checked again
    ds = ds.remove_columns(old) if old else ds
    with process_state().main_process_first():
        # Only the new columns are written: the audio (paths or embedded bytes) is read, never copied.
        checked = ds.select_columns(needed).map(check, batched=True, with_indices=True, num_proc=num_proc,
                                                remove_columns=needed, desc="checking rows")
    stats = PrepareStats()
    skipped = checked.filter(lambda reason: bool(reason), input_columns="skip_reason")  # usually a few rows
    for reason, message in zip(skipped["skip_reason"], skipped["skip_message"]):
        _raise_or_count(reason, message, on_error, stats)
    if "example_id" in ds.column_names:
        ds = ds.remove_columns("example_id")
    ds = concatenate_datasets([ds, checked], axis=1)
    with process_state().main_process_first():
        ds = ds.filter(lambda reason: not reason, input_columns="skip_reason", num_proc=num_proc,
                       desc="dropping skipped rows")
    ds = ds.remove_columns(["skip_reason", "skip_message"])
    stats.kept = len(ds)
    if len(ds) == 0:
        raise ValueError(f"No rows left after filtering: {stats}. Check max_seconds/max_label_tokens and the audio.")
    if stats.kept < len(checked):
        logger.warning("prepare_dataset kept %d of %d rows: %s", stats.kept, len(checked), stats)
    ds.set_transform(transform)
    return ds, stats


def _prepare_stream(ds: IterableDataset, check: RowCheck, transform: "FeatureTransform",
                    on_error: str) -> tuple[IterableDataset, PrepareStats]:
    stats = PrepareStats()

    def keep(reason: str, message: str) -> bool:
        if not reason:
            stats.kept += 1
            return True
        _raise_or_count(reason, message, on_error, stats)
        if sum(getattr(stats, f) for f in ("too_long", "too_short", "labels_too_long", "bad_audio",
                                             "empty_text")) <= 5:
            logger.warning("skipped %s", message)
        return False

    ds = ds.map(check, batched=True, with_indices=True)
    ds = ds.filter(keep, input_columns=["skip_reason", "skip_message"])
    return ds.map(transform, batched=True, remove_columns=["skip_reason", "skip_message"]), stats


@dataclass
class FeatureTransform:
    """Decode, resample and extract features for a batch of rows; turn the transcripts into `labels`."""

    processor: Any
    family: Family
    audio_column: str = "audio"
    text_column: str | None = "text"
    options: LabelOptions = field(default_factory=LabelOptions)
    long_form: bool = False
    features: bool = True  # False: labels and ids only, the audio is not read

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.audio_column not in batch:  # a column read on its own (e.g. `duration` for group_by_length)
            return batch
        size = len(batch[self.audio_column])
        if self.features:
            rate = self.processor.feature_extractor.sampling_rate
            audio = [decode_audio(value, rate) for value in batch[self.audio_column]]
            out = self.family.features(self.processor, audio, rate, self.long_form)
            out["audio_seconds"] = [len(a) / rate for a in audio]
        else:
            out = {"audio_seconds": list(batch["duration"]) if "duration" in batch else [0.0] * size}
        rows = [{k: v[j] for k, v in batch.items()} for j in range(size)]
        ids = [int(r["example_id"]) if r.get("example_id") is not None else j for j, r in enumerate(rows)]
        if "example_id" in batch:
            out["example_id"] = list(batch["example_id"])
        if self.options.language_column or self.options.language:
            out["language"] = [self.options.language_of(r, f"example {i}") for r, i in zip(rows, ids)]
        if self.text_column is not None:
            out["text"] = list(batch[self.text_column])
            out["labels"] = [self.options.labels(self.family, self.processor, r, self.text_column, i, f"example {i}")
                             for r, i in zip(rows, ids)]
        return out


class _Rows(torch.utils.data.Dataset):
    """Rows `indices` of a dataset, each through `transform` (audio decoded in the DataLoader's workers)."""

    def __init__(self, dataset: Any, indices: list[int], transform: Callable | None) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        row = self.dataset[index]
        if self.transform is not None:
            row = {k: v[0] for k, v in self.transform({k: [v] for k, v in row.items()}).items()}
        return {**row, "_index": index}


def row_loader(dataset: Any, indices: list[int], transform: Callable | None, collate: Callable, batch_size: int,
               num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches of the rows `indices` as `(indices, batch)`: decoding and feature extraction run in `num_workers`
    DataLoader workers, so a teacher pass never waits on audio. `batch["max_seconds"]` is the longest row."""

    def collate_rows(rows: list[dict]) -> tuple[list[int], dict]:
        batch = collate(rows)
        batch["max_seconds"] = max(r["audio_seconds"] for r in rows)
        return [r["_index"] for r in rows], batch

    return torch.utils.data.DataLoader(_Rows(dataset, indices, transform), batch_size=batch_size,
                                       num_workers=num_workers, collate_fn=collate_rows)


def normalize_for_vocab(text: str, tokenizer: Any) -> str:
    """Map free text (e.g. a Whisper transcript) onto a character CTC vocabulary.

    Case follows the vocabulary (upper or lower), characters it lacks are dropped (letters) or turned into spaces
    (punctuation), and runs of spaces collapse; the tokenizer turns spaces into its word delimiter.
    """
    symbols = {t for t in tokenizer.get_vocab() if len(t) == 1}
    letters = [c for c in symbols if c.isalpha()]
    text = text.upper() if letters and all(c.isupper() for c in letters) else text.lower()
    kept = "".join(c if c in symbols else (" " if not c.isalnum() else "") for c in text)
    return " ".join(kept.split())


# ---- batching --------------------------------------------------------------------------------------------------


def collator_for(processor: Any, model: PreTrainedModel) -> WhisperCollator | CTCCollator:
    """The right collator for `model`, from a processor or a bare feature extractor."""
    return family_of(model).collator(getattr(processor, "feature_extractor", processor), model)
