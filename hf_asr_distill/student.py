"""Student construction: shrink a teacher config and copy maximally spaced teacher layers into it."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

LayerMap = dict[str, dict[int, int]]
_LAYER_KEY = re.compile(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.")


def model_family(model: PreTrainedModel | PretrainedConfig) -> str:
    """'whisper' for Whisper encoder-decoders, 'ctc' for Wav2Vec2-family CTC models; anything else is refused."""
    config = model if isinstance(model, PretrainedConfig) else model.config
    if config.model_type == "whisper":
        return "whisper"
    names = [type(model).__name__] if isinstance(model, PreTrainedModel) else list(config.architectures or [])
    if any(name.endswith("ForCTC") for name in names):
        return "ctc"
    raise ValueError(
        f"Unsupported model {names or config.model_type!r}: hf_asr_distill distils WhisperForConditionalGeneration "
        "and CTC models (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC, Data2VecAudioForCTC, ...)."
    )


def layer_counts(config: PretrainedConfig) -> dict[str, int]:
    """Number of transformer layers per stack ('encoder', and 'decoder' for Whisper)."""
    if config.model_type == "whisper":
        return {"encoder": config.encoder_layers, "decoder": config.decoder_layers}
    return {"encoder": config.num_hidden_layers}


def hidden_size(config: PretrainedConfig) -> int:
    """Width of the hidden states that hidden-state distillation compares."""
    return config.d_model if config.model_type == "whisper" else config.hidden_size


def frame_mask(model: PreTrainedModel, attention_mask: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """Which of a CTC model's `frames` output frames hold audio rather than padding (None: all of them).

    Padded frames are never trained, so losses must skip them and decoding must not read them.
    """
    if attention_mask is None:
        return None
    lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(attention_mask.device)
    return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]


def load_model(name_or_path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> PreTrainedModel:
    """Load a Whisper or CTC model from the Hub or a local path with the right Auto class.

    Remote code is never trusted implicitly: pass `trust_remote_code=True` yourself if you need it.
    """
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    auto_cls = AutoModelForSpeechSeq2Seq if config.model_type == "whisper" else AutoModelForCTC
    return auto_cls.from_pretrained(name_or_path, dtype=dtype, **kwargs)


def spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Maximally spaced teacher layer indices, first and last kept (distil-whisper: 32 -> 2 gives [0, 31])."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(
            f"A student needs between 1 and {teacher_layers} layers to copy from this teacher, got {student_layers}."
        )
    return np.linspace(0, teacher_layers - 1, student_layers).round().astype(int).tolist()


def _shrunk_config(teacher_config: PretrainedConfig, shrink: dict[str, Any]) -> PretrainedConfig:
    config = copy.deepcopy(teacher_config)
    for key, value in shrink.items():
        if not hasattr(config, key):
            raise ValueError(f"{type(config).__name__} has no field {key!r}; check the spelling of make_student's options.")
        setattr(config, key, value)
    return config


def _copy_weights(teacher: PreTrainedModel, student: PreTrainedModel, layer_map: LayerMap) -> tuple[int, int]:
    """Copy every teacher tensor whose (layer-remapped) name and shape match; the rest keeps its fresh init."""
    teacher_state = teacher.state_dict()
    copied = fresh = 0
    with torch.no_grad():
        for key, tensor in student.state_dict().items():
            match = _LAYER_KEY.search(key)
            source = key
            if match:
                stack, index = match.group(1), int(match.group(2))
                teacher_index = layer_map[stack][index]
                source = key.replace(f"{stack}.layers.{index}.", f"{stack}.layers.{teacher_index}.", 1)
            if source in teacher_state and teacher_state[source].shape == tensor.shape:
                tensor.copy_(teacher_state[source])
                copied += 1
            else:
                fresh += 1
    return copied, fresh


def make_student(
    teacher: PreTrainedModel | str,
    student_config: PretrainedConfig | None = None,
    freeze_encoder: bool = False,
    **shrink: Any,
) -> tuple[PreTrainedModel, LayerMap]:
    """Build a student from the teacher and return `(student, layer_map)`.

    Args:
        teacher: the teacher model, or a Hub id / local path to load it from.
        student_config: an explicit student config (same model class as the teacher); excludes `shrink`.
        freeze_encoder: Whisper only: freeze the student's encoder (distil-whisper's `--freeze_encoder`).
        **shrink: teacher config fields to change, e.g. `decoder_layers=2` (Whisper), `num_hidden_layers=4`,
            `hidden_size=384`, `intermediate_size=1536`, `num_attention_heads=6` (CTC), `d_model`,
            `encoder_ffn_dim` (Whisper).

    Tensors whose shapes match are copied from the teacher: embeddings, the conv front-end, and maximally spaced
    layers. `layer_map[stack][student_layer]` is the teacher layer it was copied from (0-based module indices);
    the same map is stored in `student.config.distillation_layer_map` so the trainer can default to it.
    """
    if isinstance(teacher, str):
        teacher = load_model(teacher)
    family = model_family(teacher)
    if student_config is not None and shrink:
        raise ValueError("Pass either student_config or shrink options such as decoder_layers=2, not both.")
    config = copy.deepcopy(student_config) if student_config is not None else _shrunk_config(teacher.config, shrink)
    student = type(teacher)(config)
    teacher_counts, student_counts = layer_counts(teacher.config), layer_counts(config)
    layer_map = {
        stack: dict(enumerate(spaced_layers(teacher_counts[stack], student_counts[stack]))) for stack in teacher_counts
    }
    copied, fresh = _copy_weights(teacher, student, layer_map)
    logger.info("make_student: copied %d tensors from the teacher, %d freshly initialised", copied, fresh)
    if student.can_generate():
        student.generation_config = copy.deepcopy(teacher.generation_config)
    student.config.distillation_layer_map = {s: {str(k): v for k, v in m.items()} for s, m in layer_map.items()}
    if freeze_encoder:
        if family != "whisper":
            raise ValueError("freeze_encoder is for Whisper students; for CTC use student.freeze_feature_encoder().")
        student.model.encoder.requires_grad_(False)
    return student, layer_map
