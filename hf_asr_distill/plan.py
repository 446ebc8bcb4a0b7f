"""Pick a student for a latency budget before training it: candidate shapes with their parameters, bytes on disk
per deployment form and latency measured on this machine.

Latency is the cost of the shape, not of its (untrained) outputs: every candidate decodes the same audio for the
same number of tokens (end-of-text suppressed), so the figures compare shapes the way trained students will run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .export import _int8, export_model
from .families import family_of
from .student import make_student


def parse_shapes(text: str) -> list[dict[str, int]]:
    """`"encoder_layers=4,decoder_layers=2;decoder_layers=2"` -> one `make_student` options dict per shape."""
    shapes = []
    for spec in filter(None, (s.strip() for s in text.split(";"))):
        try:
            shapes.append({k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(","))})
        except ValueError as err:
            raise ValueError(f"Bad shape {spec!r}: write config fields as name=integer separated by commas, shapes "
                             "separated by semicolons, e.g. 'encoder_layers=4,decoder_layers=2'.") from err
    return shapes


def _timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _pytorch_call(model: PreTrainedModel, batch: dict[str, Any], tokens: int) -> Any:
    family = family_of(model)
    inputs = {family.feature_key: batch[family.feature_key]}

    @torch.inference_mode()
    def run() -> None:
        if model.can_generate():
            model.generate(inputs[family.feature_key], min_new_tokens=tokens, max_new_tokens=tokens)
        else:
            model(**inputs)
    return run


def _ct2_call(folder: Path, model: PreTrainedModel, batch: dict[str, Any], tokens: int, threads: int) -> Any:
    import ctranslate2

    ct2 = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8", intra_threads=threads)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(batch["input_features"].float().numpy()))
    prompt = [model.config.decoder_start_token_id]
    eot = model.generation_config.eos_token_id
    # CTranslate2 decodes at most max_length / 2 tokens for Whisper; end-of-text suppressed so all shapes decode alike
    return lambda: ct2.generate(features, [prompt] * features.shape[0], beam_size=1, max_length=2 * tokens,
                                suppress_tokens=[eot], suppress_blank=False)


def plan_students(teacher: PreTrainedModel, processor: Any, shapes: list[dict[str, Any]],
                  forms: tuple[str, ...] = ("pytorch", "pytorch-int8"), seconds: float = 5.0, tokens: int = 24,
                  batch_size: int = 1, repeats: int = 3, include_teacher: bool = True) -> list[dict[str, Any]]:
    """One row per candidate (and the teacher first): parameters, MB on disk and latency (ms per batch of
    `batch_size` clips of `seconds`, `tokens` decoded for generating models) in each form.

    Forms measured: `pytorch`, `pytorch-int8` and, for Whisper with `ctranslate2` installed, `ct2-int8`.
    """
    family = family_of(teacher)
    rate = processor.feature_extractor.sampling_rate
    audio = np.random.default_rng(0).normal(0, 0.05, int(seconds * rate)).astype(np.float32)
    rows = [{family.feature_key: family.features(processor, [audio], rate)[family.feature_key][0]}] * batch_size
    batch = family.collator(processor.feature_extractor, teacher)(rows)
    candidates = ([("teacher", teacher)] if include_teacher else []) + [
        # narrower candidates start from the teacher's slices: freshly initialised weights can run far slower on
        # CPUs than any trained model (measured: 47 s instead of ~1 s for 24 tokens of a d_model=256 tiny.en)
        (", ".join(f"{k}={v}" for k, v in shape.items()), make_student(teacher, inherit_width=True, **shape)[0])
        for shape in shapes]
    threads = torch.get_num_threads()
    out = []
    for name, model in candidates:
        model = model.eval().float()
        row = {"shape": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "mb": {}, "ms": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for form in forms:
                if form.startswith("ct2") and not family.ct2_supported:
                    continue
                folder = export_model(model, processor, Path(tmp) / form, form)
                row["mb"][form] = sum(f.stat().st_size for pattern in ("*.safetensors", "model_int8.pt", "model.bin")
                                      for f in folder.glob(pattern)) / 1e6
                if form == "pytorch":
                    call = _pytorch_call(model, batch, tokens)
                elif form == "pytorch-int8":
                    call = _pytorch_call(_int8(model), batch, tokens)
                else:
                    call = _ct2_call(folder, model, batch, tokens, threads)
                row["ms"][form] = _timed(call, repeats)
        out.append(row)
    return out


def plan_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `plan_students` rows: MB and ms per form, and the speed-up over the teacher per form."""
    forms = list(rows[0]["ms"]) if rows else []
    teacher = next((r for r in rows if r["shape"] == "teacher"), None)
    head = "| shape | params (M) | " + " | ".join(f"{f} MB | {f} ms | {f} speed-up" for f in forms) + " |"
    lines = [head, "|---|---:|" + "---:|---:|---:|" * len(forms)]
    for r in rows:
        cells = []
        for f in forms:
            if f not in r["ms"]:
                cells += ["-", "-", "-"]
                continue
            speedup = f"{teacher['ms'][f] / r['ms'][f]:.2f}x" if teacher and f in teacher["ms"] else "-"
            cells += [f"{r['mb'][f]:.1f}", f"{r['ms'][f]:.0f}", speedup]
        lines.append(f"| {r['shape']} | {r['params_m']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
