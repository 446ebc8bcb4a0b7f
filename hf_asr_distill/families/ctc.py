"""CTC models of the Wav2Vec2 family (Wav2Vec2, HuBERT, WavLM, Data2VecAudio, ...): frame-level, one encoder stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .base import Family, Limits, config_of, pad_labels, with_example_ids


@dataclass
class CTCCollator:
    """Batches raw `input_values` (zero-padded) and `labels`, with each row's true length in samples.

    The attention mask is passed only when the feature extractor asks for one: group-norm models such as
    wav2vec2-base were trained on zero-padded input without it. The lengths (`input_lengths`) always travel with
    the batch, so losses and decoding skip padded frames either way.
    """

    feature_extractor: Any

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor.pad(
            [{"input_values": f["input_values"]} for f in features],
            return_tensors="pt",
            return_attention_mask=bool(getattr(self.feature_extractor, "return_attention_mask", True)),
        )
        batch = dict(batch)
        batch["input_lengths"] = torch.tensor([len(f["input_values"]) for f in features])
        if "labels" in features[0]:
            batch["labels"] = pad_labels([list(f["labels"]) for f in features])
        return with_example_ids(batch, features)


@dataclass
class ConvFrames:
    """Output frames of `seconds` of audio through the conv front-end (and adapter), from the config alone: the
    formula of `_get_feat_extract_output_lengths`, kept picklable for `datasets.map(num_proc=...)`."""

    sampling_rate: int
    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    @classmethod
    def of(cls, config: PretrainedConfig, sampling_rate: int) -> "ConvFrames":
        kernels, strides = list(config.conv_kernel), list(config.conv_stride)
        if getattr(config, "add_adapter", False):
            kernels += [1] * config.num_adapter_layers
            strides += [config.adapter_stride] * config.num_adapter_layers
        return cls(sampling_rate, tuple(kernels), tuple(strides))

    def __call__(self, seconds: float) -> int:
        return max(int(self.samples(int(seconds * self.sampling_rate))), 0)

    def samples(self, length: Any) -> Any:
        """Output frames of `length` samples (an int or a tensor of them)."""
        for kernel, stride in zip(self.kernels, self.strides):
            length = (length - kernel) // stride + 1
        return length


class _OnnxLogits(nn.Module):
    """The CTC model as one graph: its inputs (by name) to its logits."""

    def __init__(self, model: PreTrainedModel, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits


def frames_needed(label_ids: list[int]) -> int:
    """Output frames CTC needs for a label sequence: one per label, plus a blank between repeated labels."""
    return len(label_ids) + sum(a == b for a, b in zip(label_ids, label_ids[1:]))


class CTCFamily(Family):
    """`*ForCTC` models: frame-level KD over real (non-padded) frames; one encoder stack."""

    name = "ctc"
    title = "CTC"
    feature_key = "input_values"
    stacks = ("encoder",)
    depth_fields = {"encoder": "num_hidden_layers"}
    layer_map_fields = {"encoder": "hidden_layer_map"}
    width_field = "hidden_size"
    kd_per_label_token = False
    depth_option = "num_hidden_layers"
    long_form_method = "one forward pass over the whole recording"

    def handles(self, model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
        if isinstance(model_or_config, PreTrainedModel):
            names = [type(model_or_config).__name__]
        else:
            names = list(config_of(model_or_config).architectures or [])
        return any(name.endswith("ForCTC") for name in names)

    def handles_tokenizer(self, tokenizer: Any) -> bool:
        return True  # asked last: character tokenizers of any name (Wav2Vec2CTCTokenizer and its relatives)

    def parts(self, model: PreTrainedModel) -> dict[str, nn.Module]:
        base = model.base_model
        return {"feature_encoder": base.feature_extractor, "transformer": base.encoder, "head": model.lm_head}

    # ---- data ----------------------------------------------------------------------------------------------------

    def limits(self, model: PreTrainedModel, processor: Any) -> Limits:
        return Limits(max_seconds=float("inf"), max_label_tokens=None, frames_needed=frames_needed,
                      frames_for=ConvFrames.of(model.config, processor.feature_extractor.sampling_rate))

    def collator(self, feature_extractor: Any, model: PreTrainedModel) -> CTCCollator:
        return CTCCollator(feature_extractor)

    # ---- training ------------------------------------------------------------------------------------------------

    def model_inputs(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = {"input_values": batch["input_values"]}
        if batch.get("attention_mask") is not None:
            inputs["attention_mask"] = batch["attention_mask"]
        return inputs

    def frame_lengths(self, model: PreTrainedModel | PretrainedConfig, batch: dict[str, Any]) -> torch.Tensor:
        """Output frames holding audio, per row: from the true lengths, else the attention mask, else all."""
        values = batch["input_values"]
        if batch.get("input_lengths") is not None:
            samples = batch["input_lengths"]
        elif batch.get("attention_mask") is not None:
            samples = batch["attention_mask"].sum(-1)
        else:
            samples = torch.full((values.shape[0],), values.shape[1])
        return ConvFrames.of(config_of(model), 1).samples(samples.to(values.device)).long()

    def positions(self, model: PreTrainedModel | PretrainedConfig, batch: dict[str, Any]) -> torch.Tensor:
        """Real frames (from the conv front-end's arithmetic on the config: a config serves as well as a model)."""
        values = batch["input_values"]
        frames = int(ConvFrames.of(config_of(model), 1).samples(values.shape[1]))
        lengths = self.frame_lengths(model, batch)
        return torch.arange(frames, device=values.device)[None, :] < lengths[:, None]

    def hard_loss(self, model: PreTrainedModel, outputs: Any, batch: dict[str, Any],
                  label_smoothing: float = 0.0) -> torch.Tensor:
        """CTC summed over the batch, whatever the checkpoint's `ctc_loss_reduction` (wav2vec2-base-960h says "sum",
        which would make the term thousands of times larger than KD): the trainer divides it by the label tokens,
        so it weighs per token like the other terms. Input lengths are the true ones (padding excluded)."""
        if label_smoothing:
            raise ValueError("label_smoothing_factor is not defined for the CTC loss; set it to 0 for CTC students.")
        labels, config = batch["labels"], model.config
        if labels.max() >= config.vocab_size:
            raise ValueError(f"Label id {int(labels.max())} is outside the model's vocabulary of {config.vocab_size}.")
        valid = labels >= 0
        log_probs = F.log_softmax(outputs.logits.float(), dim=-1).transpose(0, 1)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC needs int32 targets on one device
            return F.ctc_loss(log_probs, labels.masked_select(valid), self.frame_lengths(model, batch),
                              valid.sum(-1), blank=config.pad_token_id, reduction="sum",
                              zero_infinity=config.ctc_zero_infinity)

    def hidden_states(self, outputs: Any) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"encoder": outputs.hidden_states}

    def hidden_masks(self, positions: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {"encoder": positions}

    # ---- transcription and evaluation ----------------------------------------------------------------------------

    def transcribe(self, model: PreTrainedModel, processor: Any, batch: dict[str, Any],
                   generate_kwargs: dict | None = None, timestamps: bool = False) -> list[str]:
        if timestamps:
            raise ValueError("Timestamped transcripts come from Whisper teachers; CTC models give plain text.")
        tokenizer = processor.tokenizer
        inputs = self.model_inputs(model, batch)
        inputs = {k: v.to(model.device, model.dtype if k == "input_values" else v.dtype) for k, v in inputs.items()}
        ids = model(**inputs).logits.argmax(-1).cpu()
        valid = self.positions(model.config, {k: v.cpu() for k, v in batch.items() if torch.is_tensor(v)})
        # padded frames were never trained: decode them as blanks
        return tokenizer.batch_decode(ids.masked_fill(~valid, tokenizer.pad_token_id))

    def decode_predictions(self, tokenizer: Any, predictions: Any, label_ids: Any) -> tuple[list[str], list[str]]:
        texts = tokenizer.batch_decode(np.asarray(predictions).argmax(-1))
        refs = tokenizer.batch_decode(np.where(label_ids == -100, tokenizer.pad_token_id, label_ids),
                                      group_tokens=False)
        return texts, refs

    def evaluation_logits(self, model: PreTrainedModel, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """Padded frames become certain blanks, so `compute_metrics` decodes only real audio."""
        valid = self.positions(model, batch)
        blank = torch.full_like(logits, torch.finfo(logits.dtype).min)
        blank[..., model.config.pad_token_id] = 0
        return torch.where(valid[..., None], logits, blank)

    # ---- deployed forms ------------------------------------------------------------------------------------------

    def onnx_graphs(self, model: PreTrainedModel, batch: dict[str, Any], processor: Any) -> dict[str, tuple]:
        inputs = self.model_inputs(model, batch)
        names = list(inputs)
        axes = {name: {0: "batch", 1: "samples"} for name in names}
        return {"model": (_OnnxLogits(model, names), tuple(inputs[n][:1] for n in names), names, ["logits"],
                          {**axes, "logits": {0: "batch", 1: "frames"}})}

    def onnx_transcribe(self, sessions: dict[str, Any], config: PretrainedConfig, generation_config: Any,
                        processor: Any, batch: dict[str, Any]) -> list[str]:
        session = sessions["model"]
        wanted = {i.name for i in session.get_inputs()}
        inputs = {k: v.float().numpy() if k == "input_values" else v.numpy() for k, v in batch.items() if k in wanted}
        ids = torch.from_numpy(session.run(None, inputs)[0]).argmax(-1)
        valid = self.positions(config, batch)  # padded frames decode as blanks, as in PyTorch
        tokenizer = processor.tokenizer
        return tokenizer.batch_decode(ids.masked_fill(~valid[:, : ids.shape[1]], tokenizer.pad_token_id))

    # ---- students ------------------------------------------------------------------------------------------------

    def freeze_encoder(self, student: PreTrainedModel) -> None:
        raise ValueError("freeze_encoder is for Whisper students; for CTC use student.freeze_feature_encoder().")
