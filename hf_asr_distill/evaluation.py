"""Evaluation: accuracy (WER/CER through `evaluate`), compute cost (latency, RTFx, memory) and storage, side by side."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import evaluate
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import EvalPrediction, PreTrainedModel
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

from .data import collator_for
from .student import frame_mask, model_family

logger = logging.getLogger(__name__)

RUNAWAY_FACTOR = 2.0  # a prediction with more than 2x its reference's words (+4) is a runaway, e.g. a repeat loop
RUNAWAY_MARGIN = 4


# ---- accuracy --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def load_metric(name: str, prefer_hub: bool = False) -> evaluate.EvaluationModule:
    """The `wer` or `cer` evaluate module shipped with the package (works offline).

    With `prefer_hub=True` the Hub's module is tried first. The packaged ones are the default because the Hub's
    `wer` calls jiwer APIs removed in jiwer 4 and rejects empty references.
    """
    if prefer_hub:
        try:
            return evaluate.load(name)
        except Exception as err:  # noqa: BLE001 - any Hub failure falls back to the packaged module
            logger.warning("evaluate.load(%r) failed (%s); using the packaged module", name, err)
    path = resources.files("hf_asr_distill") / "metrics" / name
    return evaluate.load(str(path))


def text_normalizer(tokenizer: Any = None, english: bool = True) -> Callable[[str], str]:
    """Whisper's English normaliser (spelling map from the tokenizer when it has one), else the basic one."""
    if english:
        return EnglishTextNormalizer(getattr(tokenizer, "english_spelling_normalizer", None) or {})
    return BasicTextNormalizer()


def count_runaways(predictions: Iterable[str], references: Iterable[str]) -> int:
    """Predictions much longer than their reference (a student repeating itself up to the token cap)."""
    return sum(
        len(p.split()) > RUNAWAY_FACTOR * len(r.split()) + RUNAWAY_MARGIN for p, r in zip(predictions, references)
    )


def asr_scores(predictions: list[str], references: list[str], normalizer: Callable[[str], str] | None = None) -> dict:
    """WER/CER on normalised text (and `_ortho` on the raw text), the S/D/I split and the runaway count."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    normalizer = normalizer or text_normalizer()
    wer, cer = load_metric("wer"), load_metric("cer")
    norm_p, norm_r = [normalizer(p) for p in predictions], [normalizer(r) for r in references]
    detailed = wer.compute(predictions=norm_p, references=norm_r, detailed=True)
    return {
        "wer": detailed["wer"],
        "cer": cer.compute(predictions=norm_p, references=norm_r)["cer"],
        "wer_ortho": wer.compute(predictions=predictions, references=references)["wer"],
        "cer_ortho": cer.compute(predictions=predictions, references=references)["cer"],
        "substitutions": detailed["substitutions"],
        "deletions": detailed["deletions"],
        "insertions": detailed["insertions"],
        "runaway": count_runaways(norm_p, norm_r),
        "utterances": len(predictions),
    }


def _is_whisper_tokenizer(tokenizer: Any) -> bool:
    return "whisper" in type(tokenizer).__name__.lower()


def wer_metrics(processor: Any, english: bool = True) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for the Trainer: Whisper with `predict_with_generate=True`, CTC by greedy decoding."""
    tokenizer = getattr(processor, "tokenizer", processor)
    normalizer = text_normalizer(tokenizer, english)
    whisper = _is_whisper_tokenizer(tokenizer)
    load_metric("wer"), load_metric("cer")  # fail now, before training, if the metric modules cannot load

    def compute(pred: EvalPrediction) -> dict:
        predictions = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        pad = tokenizer.pad_token_id
        labels = np.where(pred.label_ids == -100, pad, pred.label_ids)
        if whisper:
            texts = tokenizer.batch_decode(np.where(predictions == -100, pad, predictions), skip_special_tokens=True)
            refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        else:
            texts = tokenizer.batch_decode(np.asarray(predictions).argmax(-1))
            refs = tokenizer.batch_decode(labels, group_tokens=False)
        return asr_scores(texts, refs, normalizer)

    return compute


# ---- cost and storage ------------------------------------------------------------------------------------------


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Parameters in total and per component (tied weights counted once)."""
    def unique(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())

    if model_family(model) == "whisper":
        parts = {"encoder": model.model.encoder, "decoder": model.model.decoder}
    else:
        base = model.base_model
        parts = {"feature_encoder": base.feature_extractor, "transformer": base.encoder, "head": model.lm_head}
    return {"total": unique(model), **{name: unique(module) for name, module in parts.items()}}


def size_on_disk(model: PreTrainedModel) -> dict[str, int]:
    """Bytes of the safetensors weights as saved by `save_pretrained`, in fp32 and in fp16."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        files = sorted(Path(tmp).glob("*.safetensors"))
        fp32 = sum(f.stat().st_size for f in files)
        fp16 = 0
        for f in files:
            half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
            save_file(half, os.path.join(tmp, "half.tmp"))
            fp16 += os.path.getsize(os.path.join(tmp, "half.tmp"))
    return {"fp32": fp32, "fp16": fp16}


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


def max_new_tokens_for(seconds: float) -> int:
    """A generous bound on Whisper's output from the audio length (speech is ~3-4 tokens/s), capped at 440."""
    return min(440, math.ceil(seconds * 8) + 16)


@torch.inference_mode()
def transcribe_batch(model: PreTrainedModel, processor: Any, batch: dict, generate_kwargs: dict | None = None) -> list[str]:
    """Greedy transcription of one collated batch: `generate` for Whisper, argmax + CTC decoding otherwise."""
    tokenizer = processor.tokenizer
    if model_family(model) == "whisper":
        features = batch["input_features"].to(model.device, model.dtype)
        kwargs = {"max_new_tokens": max_new_tokens_for(float(batch.get("max_seconds", 30.0))), **(generate_kwargs or {})}
        ids = model.generate(features, **kwargs)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)
    inputs = {"input_values": batch["input_values"].to(model.device, model.dtype)}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"].to(model.device)
    ids = model(**inputs).logits.argmax(-1).cpu()
    valid = frame_mask(model, batch.get("attention_mask"), ids.shape[1])
    if valid is not None:  # padded frames were never trained: decode them as blanks
        ids = ids.masked_fill(~valid.cpu(), tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids)


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
    predictions: list[str] = field(default_factory=list, repr=False)


def _batches(model: PreTrainedModel, processor: Any, dataset: Any, batch_size: int) -> tuple[list[dict], list[str], float]:
    collate = collator_for(processor, model)
    rows = [dataset[i] for i in range(len(dataset))]  # features once: extraction is not part of the timed work
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(chunk)
        batch["max_seconds"] = max(r["audio_seconds"] for r in chunk)
        batches.append(batch)
    return batches, [r["text"] for r in rows], float(sum(r["audio_seconds"] for r in rows))


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
    """Transcribe `dataset` (prepared by `prepare_dataset`), score it, and time it (best of `repeats` passes)."""
    from tqdm.auto import tqdm

    model.eval()
    batches, references, audio_seconds = _batches(model, processor, dataset, batch_size)
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
        predictions = predictions or [t for batch in texts for t in batch]
    scores = asr_scores(predictions, references, text_normalizer(processor.tokenizer, english))
    return ModelResult(
        name=name, params=count_parameters(model), size_bytes=size_on_disk(model), scores=scores,
        latency_ms=1000 * best / len(references), rtfx=audio_seconds / best, peak_memory_mb=peak / 2**20,
        batch_size=batch_size, predictions=predictions,
    )


def compare(results: list[ModelResult], reference: str | None = None) -> list[ModelResult]:
    """Set each result's speed-up against the reference (default: the first, usually the teacher)."""
    base = next(r for r in results if r.name == reference) if reference else results[0]
    for r in results:
        r.speedup = base.latency_ms / r.latency_ms
    return results


# ---- the report ------------------------------------------------------------------------------------------------


def report_table(results: list[ModelResult]) -> str:
    """Markdown table: model, params, size, WER, CER, runaways, latency, RTFx, speed-up."""
    lines = [
        "| model | params (M) | size fp32 (MB) | size fp16 (MB) | WER % | CER % | runaway | latency (ms/utt) "
        "| RTFx | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.params['total'] / 1e6:.1f} | {r.size_bytes['fp32'] / 1e6:.1f} "
            f"| {r.size_bytes['fp16'] / 1e6:.1f} | {100 * r.scores['wer']:.2f} | {100 * r.scores['cer']:.2f} "
            f"| {r.scores['runaway']} | {r.latency_ms:.1f} | {r.rtfx:.1f} | {r.speedup:.2f}x |"
        )
    return "\n".join(lines)


def plot_report(results: list[ModelResult], path: str | Path) -> None:
    """Accuracy vs speed: WER (%) against RTFx, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.scatter(r.rtfx, 100 * r.scores["wer"], s=40 + r.params["total"] / 1e6)
        ax.annotate(r.name, (r.rtfx, 100 * r.scores["wer"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("RTFx (audio seconds per compute second, higher is faster)")
    ax.set_ylabel("WER % (lower is better)")
    ax.set_title("Accuracy vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: list[ModelResult], output_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `report.png` into `output_dir`; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    payload = {"meta": meta or {}, "results": [{k: v for k, v in asdict(r).items() if k != "predictions"}
                                               for r in results]}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["md"].write_text(report_table(results) + "\n")
    plot_report(results, paths["png"])
    return paths
