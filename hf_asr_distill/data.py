"""Data: load speech datasets, decode audio without ffmpeg, extract features lazily, and batch them.

Sources: a Hub dataset id, a saved `datasets` dataset, an audiofolder (a folder with `metadata.csv`/`.jsonl`,
or one such folder per split), or a CSV/JSONL manifest of audio path + text. Audio is decoded with soundfile and
resampled with soxr, so neither ffmpeg nor torchcodec is needed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import soxr
import torch
from datasets import Audio, Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedModel

from .families import CTCCollator, Family, WhisperCollator, family_of, pad_labels

logger = logging.getLogger(__name__)

__all__ = ["AudioError", "CTCCollator", "FeatureTransform", "PrepareStats", "WhisperCollator", "audio_seconds",
           "collator_for", "decode_audio", "load_speech_dataset", "normalize_for_vocab", "pad_labels",
           "prepare_dataset"]


class AudioError(ValueError):
    """An audio file that cannot be decoded, is empty, or holds non-finite samples."""


# ---- loading ---------------------------------------------------------------------------------------------------


def _manifest(path: Path, audio_column: str) -> Dataset:
    """A CSV/JSONL manifest; relative audio paths are taken relative to the manifest's folder."""
    builder = "csv" if path.suffix == ".csv" else "json"
    ds = load_dataset(builder, data_files=str(path), split="train")
    column = "file_name" if audio_column not in ds.column_names and "file_name" in ds.column_names else audio_column
    if column not in ds.column_names:
        raise ValueError(f"{path} has no audio column {audio_column!r}; its columns are {ds.column_names}.")
    base = path.parent
    ds = ds.map(lambda row: {audio_column: str(base / row[column])}, desc="resolving audio paths")
    return ds.remove_columns("file_name") if column == "file_name" and audio_column != "file_name" else ds


def _find_metadata(folder: Path) -> Path | None:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_speech_dataset(
    source: str, split: str = "train", audio_column: str = "audio", text_column: str | None = "text", **kwargs: Any
) -> Dataset:
    """Load one split of a speech dataset; audio stays undecoded (decoded later by `decode_audio`).

    `text_column=None` allows unlabelled audio. Extra keyword arguments go to `datasets.load_dataset` for Hub ids.
    """
    path = Path(source)
    if path.is_file():
        ds = _manifest(path, audio_column)
    elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        ds = loaded[split] if isinstance(loaded, DatasetDict) else loaded
    elif path.is_dir():
        metadata = _find_metadata(path / split) or _find_metadata(path)
        if metadata is None:
            raise ValueError(f"{path} has no metadata.csv or metadata.jsonl (in {path / split} or in itself).")
        ds = _manifest(metadata, audio_column)
    else:
        ds = load_dataset(source, split=split, **kwargs)
    if audio_column not in ds.column_names:
        raise ValueError(f"{source} has no audio column {audio_column!r}; its columns are {ds.column_names}.")
    if text_column is not None and text_column not in ds.column_names:
        raise ValueError(f"{source} has no text column {text_column!r}; its columns are {ds.column_names}.")
    if isinstance(ds.features.get(audio_column), Audio):
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
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples) < 5:
            self.examples.append(message)


def _check_row(row: dict, index: int, audio_column: str, text_column: str | None, tokenize: Callable,
               limits: tuple[float, float, int | None], stats: PrepareStats, on_error: str,
               frames_for: Callable[[float], int] | None = None) -> bool:
    min_s, max_s, max_tokens = limits

    def fail(reason: str, message: str) -> bool:
        if on_error == "raise":
            raise ValueError(f"row {index}: {message} (pass on_error='skip' to drop such rows and count them)")
        stats.skip(reason, f"row {index}: {message}")
        return False

    if text_column is not None and not str(row[text_column] or "").strip():
        return fail("empty_text", f"empty transcript for {_source_name(row[audio_column])}")
    try:
        seconds = audio_seconds(row[audio_column])
    except AudioError as err:
        return fail("bad_audio", str(err))
    if seconds <= 0:
        return fail("bad_audio", f"audio {_source_name(row[audio_column])} is empty (0 samples)")
    if seconds > max_s:
        stats.skip("too_long", f"row {index}: {seconds:.1f} s > {max_s} s")
        return False
    if seconds < min_s:
        stats.skip("too_short", f"row {index}: {seconds:.2f} s < {min_s} s")
        return False
    n_labels = len(tokenize(row[text_column])) if text_column is not None else 0
    if max_tokens is not None and n_labels > max_tokens:
        stats.skip("labels_too_long", f"row {index}: more than {max_tokens} label tokens")
        return False
    if frames_for is not None and n_labels > frames_for(seconds):
        return fail("labels_too_long", f"{n_labels} labels but only {frames_for(seconds)} CTC frames for "
                    f"{_source_name(row[audio_column])}: the CTC loss would be infinite")
    stats.kept += 1
    return True


def prepare_dataset(
    ds: Dataset,
    processor: Any,
    model: PreTrainedModel,
    audio_column: str = "audio",
    text_column: str | None = "text",
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    max_label_tokens: int | None = None,
    on_error: str = "raise",
) -> tuple[Dataset, PrepareStats]:
    """Check and filter every row up front, then extract features lazily (`set_transform`) at batch time.

    The model's family sets the default limits (Whisper: at most 30 s of audio and 448 label tokens; CTC: enough
    output frames for the labels). Bad rows (unreadable or empty audio, empty transcript) raise a `ValueError`
    naming the row, or with `on_error="skip"` are dropped and counted in the returned `PrepareStats`. Features are
    never materialised: a large dataset is not held in memory.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is not supported; choose one of raise, skip.")
    family = family_of(model)
    defaults = family.limits(model, processor)
    max_seconds = max_seconds if max_seconds is not None else defaults.max_seconds
    max_label_tokens = max_label_tokens if max_label_tokens is not None else defaults.max_label_tokens
    stats = PrepareStats()
    limits = (min_seconds, max_seconds, max_label_tokens)
    keep = [
        _check_row(row, i, audio_column, text_column, lambda t: family.label_ids(processor, t), limits, stats,
                   on_error, defaults.frames_for)
        for i, row in enumerate(ds)
    ]
    ds = ds.select([i for i, ok in enumerate(keep) if ok])
    if "example_id" not in ds.column_names:  # the key of cached teacher outputs
        ds = ds.add_column("example_id", list(range(len(ds))))
    if len(ds) == 0:
        raise ValueError(f"No rows left after filtering: {stats}. Check max_seconds/max_label_tokens and the audio.")
    if stats.kept < len(keep):
        logger.warning("prepare_dataset kept %d of %d rows: %s", stats.kept, len(keep), stats)
    ds.set_transform(FeatureTransform(processor, family, audio_column, text_column))
    return ds, stats


@dataclass
class FeatureTransform:
    """Decode, resample and extract features for a batch of rows; tokenise the transcripts into `labels`."""

    processor: Any
    family: Family
    audio_column: str = "audio"
    text_column: str | None = "text"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rate = self.processor.feature_extractor.sampling_rate
        audio = [decode_audio(value, rate) for value in batch[self.audio_column]]
        out = self.family.features(self.processor, audio, rate)
        out["audio_seconds"] = [len(a) / rate for a in audio]
        if "example_id" in batch:
            out["example_id"] = list(batch["example_id"])
        if self.text_column is not None:
            out["text"] = list(batch[self.text_column])
            out["labels"] = [self.family.label_ids(self.processor, text) for text in out["text"]]
        return out


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
