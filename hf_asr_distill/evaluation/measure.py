"""Compute cost and storage: parameters, bytes on disk, peak memory, latency and real-time factor of a model
transcribing a dataset, with its accuracy beside them."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..distributed import process_state, share_of
from ..families import Family, family_of
from ..student import save_quietly
from .metrics import asr_scores, text_normalizer

B1_ROWS = 16  # rows timed one at a time for the batch-1 latency


def family_for(model: Any) -> Family:
    """The family of a PyTorch model, or of a deployed form (`export.Deployed`, which carries its own)."""
    return model.family if hasattr(model, "family") and not isinstance(model, PreTrainedModel) else family_of(model)

# ---- cost and storage ------------------------------------------------------------------------------------------


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Parameters in total and per component (tied weights counted once); a deployed form's PyTorch count."""
    if not isinstance(model, PreTrainedModel):
        return {"total": model.params}

    def unique(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())

    parts = family_of(model).parts(model)
    return {"total": unique(model), **{name: unique(module) for name, module in parts.items()}}


def size_on_disk(model: PreTrainedModel) -> dict[str, int]:
    """Bytes on disk of the form evaluated (`disk`); for a PyTorch model its safetensors weights as saved by
    `save_pretrained`, in fp32 (= `disk`) and in fp16."""
    if not isinstance(model, PreTrainedModel):
        return {"disk": model.size_bytes()}
    with tempfile.TemporaryDirectory() as tmp:
        save_quietly(model, tmp)
        files = sorted(Path(tmp).glob("*.safetensors"))
        fp32 = sum(f.stat().st_size for f in files)
        fp16 = 0
        for f in files:
            half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
            save_file(half, os.path.join(tmp, "half.tmp"))
            fp16 += os.path.getsize(os.path.join(tmp, "half.tmp"))
    return {"disk": fp32, "fp32": fp32, "fp16": fp16}


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator peak on GPU, sampled resident set size on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, base: int) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss() - base)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


# ---- transcription and timing ----------------------------------------------------------------------------------


@torch.inference_mode()
def transcribe_batch(model: PreTrainedModel, processor: Any, batch: dict, generate_kwargs: dict | None = None,
                     timestamps: bool = False) -> list[str]:
    """Greedy transcription of one collated batch, as the model's family does it (Whisper `generate`, CTC argmax);
    `timestamps` keeps Whisper's timestamp tokens in the text. A deployed form (`export.Deployed`) runs itself."""
    if not isinstance(model, PreTrainedModel):
        return model.transcribe(processor, batch, generate_kwargs)
    return family_of(model).transcribe(model, processor, batch, generate_kwargs, timestamps)


@dataclass
class ModelResult:
    """Accuracy, cost and storage of one model on one evaluation set."""

    name: str
    params: dict[str, int]
    size_bytes: dict[str, int]
    scores: dict[str, float]
    latency_ms: float  # compute time per utterance
    rtfx: float  # audio seconds per compute second
    peak_memory_mb: float
    batch_size: int
    speedup: float = 1.0
    long_form: int = 0  # rows longer than the model's window, decoded as long-form audio
    form: str = "pytorch"  # the deployment form measured (export.FORMS)
    latency_b1_ms: float | None = None  # per utterance, decoded one at a time (None: batch_size was 1)
    predictions: list[str] = field(default_factory=list, repr=False)


def _batches(model: PreTrainedModel, processor: Any, rows: list[dict], batch_size: int) -> list[dict]:
    """Collated batches; rows longer than the family's training window (Whisper: 30 s) each make a batch of their
    own, decoded long-form."""
    collate = family_for(model).collator(getattr(processor, "feature_extractor", processor), model)
    window = family_for(model).limits(model, processor).max_seconds
    short = [r for r in rows if r["audio_seconds"] <= window]
    chunks = [short[i: i + batch_size] for i in range(0, len(short), batch_size)]
    chunks += [[r] for r in rows if r["audio_seconds"] > window]
    batches = []
    for chunk in chunks:
        batch = collate(chunk)
        batch["max_seconds"] = max(r["audio_seconds"] for r in chunk)
        batches.append(batch)
    return batches


def _batch_order(rows: list[dict], window: float) -> list[int]:
    """Row indices in the order `_batches` decodes them: rows within the window first, long-form rows last."""
    return ([i for i, r in enumerate(rows) if r["audio_seconds"] <= window]
            + [i for i, r in enumerate(rows) if r["audio_seconds"] > window])


def evaluate_model(
    name: str,
    model: PreTrainedModel,
    processor: Any,
    dataset: Any,
    batch_size: int = 8,
    warmup: int = 1,
    repeats: int = 2,
    generate_kwargs: dict | None = None,
    english: bool = True,
    progress: bool = True,
) -> ModelResult:
    """Transcribe `dataset` (prepared by `prepare_dataset`), score it, and time it (best of `repeats` passes).

    Rows with a `language` (prepared with `language=`/`language_column=`) are generated in their language,
    normalised for it, and scored per language too (`scores["per_language"]`). Audio longer than the model's
    window (prepared with `long_form=True`) is decoded long-form, one row at a time, and counted in `long_form`.

    Under `accelerate launch`/`torchrun` each process decodes its share of the batches on its device and
    the predictions are gathered: every process returns the same result, scored on the whole set, with `rtfx` the
    set's audio over the slowest process's time and `latency_ms` the mean time per utterance on one device.
    """
    state = process_state()
    if isinstance(model, PreTrainedModel):
        model.eval()
    share = share_of(list(range(len(dataset))), batch_size, state)
    rows = [dataset[i] for i in share]  # features once: extraction is not part of the timed work
    window = family_for(model).limits(model, processor).max_seconds
    mine = _timed_passes(name, model, processor, rows, window, batch_size, warmup, repeats, generate_kwargs,
                         progress and state.is_main_process)
    parts = gather_object([(share, *mine)]) if state.num_processes > 1 else [(share, *mine)]
    predictions, references, languages = [""] * len(dataset), [""] * len(dataset), [None] * len(dataset)
    for indices, texts, refs, langs, *_ in parts:
        for index, text, ref, lang in zip(indices, texts, refs, langs):
            predictions[index], references[index], languages[index] = text, ref, lang
    scores = asr_scores(predictions, references, text_normalizer(processor.tokenizer, english),
                        languages=languages if languages[0] is not None else None, tokenizer=processor.tokenizer)
    seconds = [part[4] for part in parts]
    single = [part[8] for part in parts if part[8] is not None]
    return ModelResult(
        name=name, params=count_parameters(model), size_bytes=size_on_disk(model), scores=scores,
        latency_ms=1000 * sum(seconds) / len(dataset), rtfx=sum(part[5] for part in parts) / max(seconds),
        peak_memory_mb=max(part[6] for part in parts) / 2**20, batch_size=batch_size,
        long_form=sum(part[7] for part in parts), form=getattr(model, "form", "pytorch"),
        latency_b1_ms=1000 * sum(single) / len(single) if single else None, predictions=predictions,
    )


def _timed_passes(name: str, model: PreTrainedModel, processor: Any, rows: list[dict], window: float,
                  batch_size: int, warmup: int, repeats: int, generate_kwargs: dict | None, progress: bool) -> tuple:
    """Decode `rows` (best of `repeats` timed passes): predictions in the rows' order, references, languages,
    seconds, audio seconds, peak memory (bytes), long-form rows, and seconds per utterance at batch size 1 (on the
    first `B1_ROWS` rows; None when `batch_size` is 1 already)."""
    from tqdm.auto import tqdm

    if not rows:
        return [], [], [], 0.0, 0.0, 0, 0, None
    order = _batch_order(rows, window)
    batches = _batches(model, processor, [rows[i] for i in order], batch_size)
    for _ in range(warmup):
        transcribe_batch(model, processor, batches[0], generate_kwargs)
    best, predictions, peak = float("inf"), [], 0
    for repeat in range(max(1, repeats)):
        with PeakMemory(model.device) as memory:
            start = time.perf_counter()
            texts = [transcribe_batch(model, processor, b, generate_kwargs)
                     for b in tqdm(batches, desc=f"{name} pass {repeat + 1}", disable=not progress)]
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            elapsed = time.perf_counter() - start
        best, peak = min(best, elapsed), max(peak, memory.peak)
        if not predictions:  # back to the rows' order
            decoded = [t for batch in texts for t in batch]
            predictions = [""] * len(rows)
            for position, index in enumerate(order):
                predictions[index] = decoded[position]
    single = _batch_one_seconds(model, processor, [rows[i] for i in order[:B1_ROWS]], generate_kwargs) \
        if batch_size > 1 else None
    return (predictions, [r["text"] for r in rows], [r.get("language") for r in rows], best,
            float(sum(r["audio_seconds"] for r in rows)), peak, sum(r["audio_seconds"] > window for r in rows), single)


def _batch_one_seconds(model: Any, processor: Any, rows: list[dict], generate_kwargs: dict | None) -> float:
    """Seconds per utterance decoded one at a time: the latency an interactive user sees."""
    batches = _batches(model, processor, rows, 1)
    start = time.perf_counter()
    for batch in batches:
        transcribe_batch(model, processor, batch, generate_kwargs)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return (time.perf_counter() - start) / len(batches)


def compare(results: list[ModelResult], reference: str | None = None) -> list[ModelResult]:
    """Set each result's speed-up against the reference in the same deployment form (by default the first result
    of that form, usually the teacher): a student in int8 is compared with the teacher in int8."""
    for r in results:
        same_form = [x for x in results if x.form == r.form]
        base = next((x for x in same_form if x.name == reference), same_form[0]) if reference else same_form[0]
        r.speedup = base.latency_ms / r.latency_ms
    return results
