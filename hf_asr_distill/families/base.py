"""The interface every model family implements: what the rest of the package may ask about a model.

A family is everything that differs between, say, Whisper (an encoder-decoder trained token by token) and a
Wav2Vec2-family CTC model (an encoder trained frame by frame): how a row becomes features and labels, which output
positions count, which hidden-state stacks exist, how the hard-label loss is computed, how a batch is transcribed,
what limits the data has and what `make_student` may shrink. Trainer, data, cache, pseudo-labels, evaluation and
the demo call these methods and never ask which family a model is; a new family is one new module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


def config_of(model_or_config: PreTrainedModel | PretrainedConfig) -> PretrainedConfig:
    """The config of a model, or the config itself."""
    return model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """Pad label id lists with -100 to the longest in the batch (never to a fixed maximum: that wastes compute)."""
    longest = max(len(ids) for ids in labels)
    out = torch.full((len(labels), longest), -100, dtype=torch.long)
    for row, ids in enumerate(labels):
        out[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return out


def with_example_ids(batch: dict, rows: list[dict[str, Any]]) -> dict:
    """Carry `example_id` (the key of cached teacher outputs) and `language` (per-row codes, for generation and
    per-language scores) into the batch when the rows have them."""
    if "example_id" in rows[0]:
        batch["example_id"] = torch.tensor([int(r["example_id"]) for r in rows])
    if rows[0].get("language") is not None:
        batch["language"] = [r["language"] for r in rows]
    return batch


@dataclass
class Limits:
    """What one training row may hold: audio seconds, label tokens, and (CTC) output frames for its labels."""

    max_seconds: float
    max_label_tokens: int | None
    frames_for: Callable[[float], int] | None = None  # output frames of `seconds` of audio, when labels need them
    frames_needed: Callable[[list[int]], int] | None = None  # output frames a label sequence needs


class Family:
    """Base class of the model families. Subclasses set the attributes and implement the methods."""

    name: str = ""  # the family's key in files (cache manifests, reports)
    title: str = ""  # how messages name it
    feature_key: str = ""  # the model's audio input: "input_features" (log-mel) or "input_values" (waveform)
    stacks: tuple[str, ...] = ()  # hidden-state stacks hidden-state KD can match
    depth_fields: dict[str, str] = {}  # stack -> config field holding its number of layers
    layer_map_fields: dict[str, str] = {}  # stack -> DistillationConfig field with an explicit layer map
    width_field: str = ""  # config field with the width of the hidden states
    kd_per_label_token: bool = True  # output-layer KD positions are label tokens (else audio frames)
    hard_loss_per_token: bool = True  # hard_loss is a sum over label tokens (else a per-batch mean)
    separate_encoder: bool = False  # an encoder whose output a teacher may reuse (and a cache may store)
    ct2_supported: bool = False  # CTranslate2 (faster-whisper) converts this family
    depth_option: str = ""  # the make_student option a single "student layers" number means (the demo's)
    long_form_method: str = ""  # how audio longer than the training window is decoded (said in reports)

    # ---- identity and shape ------------------------------------------------------------------------------------

    def handles(self, model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
        """Whether this family knows how to distil `model_or_config`."""
        raise NotImplementedError

    def handles_tokenizer(self, tokenizer: Any) -> bool:
        """Whether `tokenizer` is this family's (for `compute_metrics`, which sees a processor but no model)."""
        raise NotImplementedError

    def layer_counts(self, config: PretrainedConfig) -> dict[str, int]:
        """Number of transformer layers per stack."""
        return {stack: getattr(config, field) for stack, field in self.depth_fields.items()}

    def hidden_size(self, config: PretrainedConfig) -> int:
        """Width of the hidden states that hidden-state distillation compares."""
        return getattr(config, self.width_field)

    def parts(self, model: PreTrainedModel) -> dict[str, nn.Module]:
        """Named components whose parameters the report counts separately."""
        raise NotImplementedError

    # ---- data ----------------------------------------------------------------------------------------------------

    def limits(self, model: PreTrainedModel, processor: Any) -> Limits:
        """The default limits of a training row for this model."""
        raise NotImplementedError

    def language_codes(self, model: PreTrainedModel, language: str | None, language_column: str | None,
                       task: str | None) -> dict[str, str] | None:
        """Check language and task settings against the model before any work. Returns the language names and
        codes the model's labels accept (name -> code), or None when the labels carry no language (then a language
        only chooses the text normaliser). Default: no language tokens, transcription only."""
        if task not in (None, "transcribe"):
            raise ValueError(f"task={task!r}: {self.title} models only transcribe.")
        return None

    def label_ids(self, processor: Any, text: str, language: str | None = None, task: str | None = None,
                  timestamps: bool = False) -> list[int]:
        """Token ids the model is trained to produce for `text` (in `language`, for `task`, with timestamps)."""
        return processor.tokenizer(text).input_ids

    def features(self, processor: Any, audio: list, sampling_rate: int, long_form: bool = False) -> dict[str, list]:
        """Model inputs for a list of waveforms (one entry per row, unpadded). `long_form`: rows longer than the
        model's window keep their full length (evaluation), rather than being refused (training)."""
        extractor = processor.feature_extractor
        return {self.feature_key: list(extractor(audio, sampling_rate=sampling_rate)[self.feature_key])}

    def collator(self, feature_extractor: Any, model: PreTrainedModel) -> Callable[[list[dict]], dict]:
        """The collator that batches this family's rows."""
        raise NotImplementedError

    def check_processor(self, model: PreTrainedModel, processor: Any) -> None:
        """Refuse a processor whose features this model cannot take (default: anything goes)."""

    # ---- training ------------------------------------------------------------------------------------------------

    def model_inputs(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of a forward pass on `batch` (labels and bookkeeping keys removed)."""
        raise NotImplementedError

    def positions(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        """Bool mask (batch, positions) of the output positions output-layer KD counts."""
        raise NotImplementedError

    def hard_loss(self, model: PreTrainedModel, outputs: Any, batch: dict[str, Any],
                  label_smoothing: float = 0.0) -> torch.Tensor:
        """The hard-label loss: summed over the batch's label tokens (the trainer divides by their number), or a
        per-batch mean when `hard_loss_per_token` is False."""
        raise NotImplementedError

    def hidden_states(self, outputs: Any) -> dict[str, tuple[torch.Tensor, ...]]:
        """Hidden states per stack, as `output_hidden_states=True` returns them (0 = embedding output)."""
        raise NotImplementedError

    def hidden_masks(self, positions: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Per stack, which hidden-state positions count (None: all of them)."""
        raise NotImplementedError

    def encoder_positions(self, config: PretrainedConfig) -> int:
        """Positions of the final encoder output of one row (what an encoder-output cache stores per row)."""
        raise ValueError(f"{self.title} models have no separate encoder output to cache.")

    def encoder_output(self, outputs: Any) -> torch.Tensor | None:
        """The final encoder output a teacher may reuse (None: this family never shares an encoder)."""
        return None

    def with_encoder_output(self, inputs: dict[str, Any], encoder_output: torch.Tensor) -> dict[str, Any]:
        """Forward arguments that skip the encoder and use `encoder_output` instead."""
        raise ValueError(f"{self.title} models do not share an encoder with their teacher.")

    def can_share_encoder(self, student: PreTrainedModel, teacher: PreTrainedModel) -> tuple[bool, str]:
        """Whether the teacher may reuse the student's encoder output, and why (or why not)."""
        return False, f"{self.title} models have no separate encoder to share"

    # ---- transcription and evaluation ----------------------------------------------------------------------------

    def transcribe(self, model: PreTrainedModel, processor: Any, batch: dict[str, Any],
                   generate_kwargs: dict | None = None, timestamps: bool = False) -> list[str]:
        """Greedy transcripts of one collated batch (with timestamp tokens in the text when `timestamps`)."""
        raise NotImplementedError

    def set_generation_defaults(self, model: PreTrainedModel, language: str | None, task: str | None) -> None:
        """Make `language` and `task` the model's own defaults for generation (and for the pipeline)."""
        self.language_codes(model, language, None, task)

    def generation_options(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments `generate` needs for this batch (e.g. per-row languages); none by default."""
        return {}

    def languages_of_labels(self, tokenizer: Any, label_ids: Any) -> list[str] | None:
        """Each row's language, when the labels carry it (None: they do not)."""
        return None

    def decode_predictions(self, tokenizer: Any, predictions: Any, label_ids: Any) -> tuple[list[str], list[str]]:
        """Texts of the Trainer's evaluation predictions and of their labels (for `compute_metrics`)."""
        raise NotImplementedError

    def evaluation_logits(self, model: PreTrainedModel, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """Logits as `compute_metrics` should see them (default: unchanged)."""
        return logits

    # ---- deployed forms ------------------------------------------------------------------------------------------

    def onnx_graphs(self, model: PreTrainedModel, batch: dict[str, Any], processor: Any) -> dict[str, tuple]:
        """The model as ONNX graphs: name -> (module, example inputs, input names, output names, dynamic axes)."""
        raise NotImplementedError

    def onnx_transcribe(self, sessions: dict[str, Any], config: PretrainedConfig, generation_config: Any,
                        processor: Any, batch: dict[str, Any]) -> list[str]:
        """Greedy transcripts of a collated batch with ONNX Runtime sessions of `onnx_graphs`."""
        raise NotImplementedError

    def ct2_transcribe(self, model: Any, config: PretrainedConfig, generation_config: Any, processor: Any,
                       batch: dict[str, Any]) -> list[str]:
        """Greedy transcripts of a collated batch with a CTranslate2 model."""
        raise ValueError(f"CTranslate2 exports are for Whisper models, not {self.title} models; use onnx.")

    def assistant(self, student: PreTrainedModel, teacher: PreTrainedModel) -> PreTrainedModel:
        """The student as the teacher's assistant model in speculative decoding."""
        raise ValueError(f"Speculative decoding drafts tokens for a generating model: {self.title} models decode in "
                         "one pass, there is nothing to speed up.")

    # ---- students ------------------------------------------------------------------------------------------------

    def freeze_encoder(self, student: PreTrainedModel) -> None:
        """Freeze the student's encoder (distil-whisper's `--freeze_encoder`)."""
        raise ValueError(f"freeze_encoder is not available for {self.title} students.")

    def finish_student(self, student: PreTrainedModel, teacher: PreTrainedModel,
                       layer_map: dict[str, dict[int, int]]) -> None:
        """Family-specific touches after `make_student` copied the weights (generation config and the like)."""
