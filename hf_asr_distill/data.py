"""Collators that turn extracted features and token ids into padded batches for Whisper and CTC models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .student import model_family


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """Pad label id lists with -100 to the longest in the batch (never to a fixed maximum: that wastes compute)."""
    longest = max(len(ids) for ids in labels)
    out = torch.full((len(labels), longest), -100, dtype=torch.long)
    for row, ids in enumerate(labels):
        out[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return out


@dataclass
class WhisperCollator:
    """Batches `input_features` (log-mel, padded by the feature extractor) and `labels`.

    The tokenizer puts `<|startoftranscript|>` first; the model prepends the decoder start token itself when it
    shifts the labels right, so a leading start token is dropped here (as in the Transformers examples).
    """

    feature_extractor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor.pad(
            [{"input_features": f["input_features"]} for f in features], return_tensors="pt"
        )
        labels = pad_labels([list(f["labels"]) for f in features])
        if labels.shape[1] > 0 and bool((labels[:, 0] == self.decoder_start_token_id).all()):
            labels = labels[:, 1:]
        batch["labels"] = labels
        return dict(batch)


@dataclass
class CTCCollator:
    """Batches raw `input_values` (padded with the attention mask when the feature extractor uses one) and `labels`."""

    feature_extractor: Any

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor.pad(
            [{"input_values": f["input_values"]} for f in features],
            return_tensors="pt",
            return_attention_mask=bool(getattr(self.feature_extractor, "return_attention_mask", True)),
        )
        batch["labels"] = pad_labels([list(f["labels"]) for f in features])
        return dict(batch)


def collator_for(processor: Any, model: PreTrainedModel) -> WhisperCollator | CTCCollator:
    """The right collator for `model`, from a processor or a bare feature extractor."""
    feature_extractor = getattr(processor, "feature_extractor", processor)
    if model_family(model) == "whisper":
        return WhisperCollator(feature_extractor, model.config.decoder_start_token_id)
    return CTCCollator(feature_extractor)
