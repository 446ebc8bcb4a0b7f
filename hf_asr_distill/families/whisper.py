"""Whisper: an encoder-decoder trained token by token on log-mel windows of 30 s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from .base import Family, Limits, config_of, pad_labels, with_example_ids

MAX_SECONDS = 30.0
MAX_LABEL_TOKENS = 448


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
        if "labels" in features[0]:
            labels = pad_labels([list(f["labels"]) for f in features])
            if labels.shape[1] > 0 and bool((labels[:, 0] == self.decoder_start_token_id).all()):
                labels = labels[:, 1:]
            batch["labels"] = labels
        return with_example_ids(dict(batch), features)


def max_new_tokens_for(seconds: float) -> int:
    """A generous bound on Whisper's output from the audio length (speech is ~3-4 tokens/s), capped at 440."""
    return min(440, math.ceil(seconds * 8) + 16)


class WhisperFamily(Family):
    """`WhisperForConditionalGeneration`: token-level KD over label positions; encoder and decoder stacks."""

    name = "whisper"
    title = "Whisper"
    feature_key = "input_features"
    stacks = ("encoder", "decoder")
    depth_fields = {"encoder": "encoder_layers", "decoder": "decoder_layers"}
    layer_map_fields = {"encoder": "encoder_layer_map", "decoder": "decoder_layer_map"}
    width_field = "d_model"
    kd_per_label_token = True
    separate_encoder = True
    depth_option = "decoder_layers"

    def handles(self, model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
        return config_of(model_or_config).model_type == "whisper"

    def handles_tokenizer(self, tokenizer: Any) -> bool:
        return "whisper" in type(tokenizer).__name__.lower()

    def parts(self, model: PreTrainedModel) -> dict[str, nn.Module]:
        return {"encoder": model.model.encoder, "decoder": model.model.decoder}

    # ---- data ----------------------------------------------------------------------------------------------------

    def limits(self, model: PreTrainedModel, processor: Any) -> Limits:
        return Limits(max_seconds=MAX_SECONDS, max_label_tokens=MAX_LABEL_TOKENS)

    def collator(self, feature_extractor: Any, model: PreTrainedModel) -> WhisperCollator:
        return WhisperCollator(feature_extractor, model.config.decoder_start_token_id)

    def check_processor(self, model: PreTrainedModel, processor: Any) -> None:
        extractor = getattr(processor, "feature_extractor", processor)
        frames = getattr(extractor, "nb_max_frames", None)
        accepted = 2 * model.config.max_source_positions
        if frames is not None and frames > accepted:
            raise ValueError(f"The feature extractor makes {frames} log-mel frames, but the student accepts "
                             f"{accepted} (max_source_positions={model.config.max_source_positions}). "
                             "Use the teacher's processor with a student of the same max_source_positions.")

    # ---- training ------------------------------------------------------------------------------------------------

    def model_inputs(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = {"input_features": batch["input_features"]}
        if "decoder_input_ids" in batch:
            inputs["decoder_input_ids"] = batch["decoder_input_ids"]
        elif "labels" in batch:  # teacher forcing on the labels, exactly as the model does when given labels
            config = model.config
            inputs["decoder_input_ids"] = shift_tokens_right(batch["labels"], config.pad_token_id,
                                                             config.decoder_start_token_id)
        return inputs

    def positions(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return batch["labels"].ne(-100)

    def hard_loss(self, model: PreTrainedModel, outputs: Any, batch: dict[str, Any],
                  label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               reduction="sum", label_smoothing=label_smoothing)

    def hidden_states(self, outputs: Any) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"encoder": outputs.encoder_hidden_states, "decoder": outputs.decoder_hidden_states}

    def hidden_masks(self, positions: torch.Tensor) -> dict[str, torch.Tensor | None]:
        # The encoder always sees a full 30 s window; decoder positions count where there is a label.
        return {"encoder": None, "decoder": positions}

    def encoder_positions(self, config: PretrainedConfig) -> int:
        return config.max_source_positions

    def encoder_output(self, outputs: Any) -> torch.Tensor | None:
        return outputs.encoder_last_hidden_state

    def with_encoder_output(self, inputs: dict[str, Any], encoder_output: torch.Tensor) -> dict[str, Any]:
        out = {k: v for k, v in inputs.items() if k != "input_features"}
        out["encoder_outputs"] = (encoder_output,)
        return out

    def can_share_encoder(self, student: PreTrainedModel, teacher: PreTrainedModel) -> tuple[bool, str]:
        s_enc, t_enc = student.model.encoder, teacher.model.encoder
        if any(p.requires_grad for p in s_enc.parameters()):
            return False, "the student's encoder is trainable"
        config = student.config
        if config.apply_spec_augment and (config.mask_time_prob > 0 or config.mask_feature_prob > 0):
            return False, "the student applies SpecAugment, which the teacher must not see"
        noisy = [f"{name}={getattr(config, name)}" for name in ("dropout", "attention_dropout", "activation_dropout")
                 if getattr(config, name, 0) > 0]
        if noisy:  # a frozen encoder still drops out in training mode: its output is not the teacher's
            return False, f"the student's encoder applies dropout in training ({', '.join(noisy)})"
        s_state, t_state = s_enc.state_dict(), t_enc.state_dict()
        same = s_state.keys() == t_state.keys() and all(
            s_state[k].shape == t_state[k].shape and torch.equal(s_state[k].to(t_state[k]), t_state[k])
            for k in s_state)
        if not same:
            return False, "the student's encoder differs from the teacher's"
        return True, "the student's frozen encoder equals the teacher's"

    # ---- transcription and evaluation ----------------------------------------------------------------------------

    def transcribe(self, model: PreTrainedModel, processor: Any, batch: dict[str, Any],
                   generate_kwargs: dict | None = None) -> list[str]:
        features = batch["input_features"].to(model.device, model.dtype)
        seconds = float(batch.get("max_seconds", MAX_SECONDS))
        kwargs = {"max_new_tokens": max_new_tokens_for(seconds), **(generate_kwargs or {})}
        ids = model.generate(features, **kwargs)
        return processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def decode_predictions(self, tokenizer: Any, predictions: Any, label_ids: Any) -> tuple[list[str], list[str]]:
        pad = tokenizer.pad_token_id
        texts = tokenizer.batch_decode(np.where(predictions == -100, pad, predictions), skip_special_tokens=True)
        refs = tokenizer.batch_decode(np.where(label_ids == -100, pad, label_ids), skip_special_tokens=True)
        return texts, refs

    # ---- students ------------------------------------------------------------------------------------------------

    def freeze_encoder(self, student: PreTrainedModel) -> None:
        student.model.encoder.requires_grad_(False)

    def finish_student(self, student: PreTrainedModel, teacher: PreTrainedModel,
                       layer_map: dict[str, dict[int, int]]) -> None:
        import copy

        student.generation_config = copy.deepcopy(teacher.generation_config)
