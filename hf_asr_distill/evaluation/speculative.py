"""Speculative decoding: the student drafts tokens, the teacher checks them in one pass; the outputs are the
teacher's own greedy outputs, only sooner (distil-whisper reports about 2x)."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import PreTrainedModel

from ..families import family_of
from ..families.whisper import max_new_tokens_for


@torch.inference_mode()
def assisted_decoding(teacher: PreTrainedModel, student: PreTrainedModel, processor: Any, dataset: Any,
                      max_rows: int | None = None, warmup: int = 1) -> dict[str, Any]:
    """The teacher's greedy transcripts with and without the student as its assistant, one utterance at a time
    (assisted generation's batch size): how many are identical, and the speed-up."""
    family = family_of(teacher)
    assistant = family.assistant(student, teacher)
    collate = family.collator(processor.feature_extractor, teacher)
    rows = [dataset[i] for i in range(min(len(dataset), max_rows or len(dataset)))]
    batches = [collate([row]) for row in rows]
    for batch, row in zip(batches, rows):
        batch["max_seconds"] = row["audio_seconds"]

    def generate(batch: dict, **kwargs: Any) -> torch.Tensor:
        features = batch["input_features"].to(teacher.device, teacher.dtype)
        options = family.generation_options(teacher, batch)
        limit = min(max_new_tokens_for(float(batch["max_seconds"])), teacher.config.max_target_positions // 2)
        return teacher.generate(features, max_new_tokens=limit, **options, **kwargs)

    for batch in batches[:warmup]:
        generate(batch), generate(batch, assistant_model=assistant)
    plain, assisted, same = 0.0, 0.0, 0
    for batch in batches:
        start = time.perf_counter()
        alone = generate(batch)
        middle = time.perf_counter()
        helped = generate(batch, assistant_model=assistant)
        plain, assisted = plain + middle - start, assisted + time.perf_counter() - middle
        same += alone.shape == helped.shape and bool((alone == helped).all())
    return {"utterances": len(rows), "identical": same, "teacher_ms": 1000 * plain / len(rows),
            "assisted_ms": 1000 * assisted / len(rows), "speedup": plain / assisted,
            "assistant": "student decoder (shared encoder)" if not assistant.config.is_encoder_decoder
            else "student (own encoder)"}
