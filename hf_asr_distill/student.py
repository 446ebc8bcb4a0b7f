"""Student construction: shrink a teacher config and copy maximally spaced teacher layers into it."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, PretrainedConfig, PreTrainedModel

from .families import family_of

logger = logging.getLogger(__name__)

LayerMap = dict[str, dict[int, int]]
_LAYER_KEY = re.compile(r"(?:^|\.)(encoder|decoder)\.layers\.(\d+)\.")


def save_quietly(model: PreTrainedModel, folder: Any) -> None:
    """`save_pretrained` without transformers' "Writing model shards" progress bar, for the package's own temporary
    copies (size measurement, CPU copies for export): they are not the user's progress."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> PreTrainedModel:
    """Load a Whisper or CTC model from the Hub or a local path with the right Auto class.

    Remote code is never trusted implicitly: pass `trust_remote_code=True` yourself if you need it.
    """
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    # encoder-decoders (Whisper) load as speech-to-text models, everything else as CTC; family_of checks the result
    auto_cls = AutoModelForSpeechSeq2Seq if config.is_encoder_decoder else AutoModelForCTC
    model = auto_cls.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    family_of(model)
    return model


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


def _no_inherited_layerdrop(config: PretrainedConfig, shrink: dict[str, Any]) -> None:
    """Turn off layerdrop copied from the teacher (wav2vec2-base-960h has 0.1): a student that drops layers at random
    cannot have them matched to teacher layers, and a 2-layer student has few to spare. Asked for explicitly, it
    stays."""
    for name in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"):
        if getattr(config, name, 0) > 0 and name not in shrink:
            logger.info("make_student: %s=%s copied from the teacher set to 0.0 (pass %s=... to keep one)",
                        name, getattr(config, name), name)
            setattr(config, name, 0.0)


def _copy_weights(teacher: PreTrainedModel, student: PreTrainedModel, layer_map: LayerMap,
                  slice_width: bool = False) -> tuple[int, int]:
    """Copy every teacher tensor whose (layer-remapped) name and shape match; with `slice_width`, a narrower
    student tensor takes the teacher tensor's leading slice in every dimension; the rest keeps its fresh init."""
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
            found = teacher_state.get(source)
            if found is not None and found.shape == tensor.shape:
                tensor.copy_(found)
                copied += 1
            elif (slice_width and found is not None and found.dim() == tensor.dim()
                  and all(s <= t for s, t in zip(tensor.shape, found.shape))):
                tensor.copy_(found[tuple(slice(0, n) for n in tensor.shape)])
                copied += 1
            else:
                fresh += 1
    return copied, fresh


def make_student(
    teacher: PreTrainedModel | str,
    student_config: PretrainedConfig | None = None,
    freeze_encoder: bool = False,
    copy_layers: dict[str, list[int]] | None = None,
    inherit_width: bool = False,
    **shrink: Any,
) -> tuple[PreTrainedModel, LayerMap]:
    """Build a student from the teacher and return `(student, layer_map)`.

    Args:
        teacher: the teacher model, or a Hub id / local path to load it from.
        student_config: an explicit student config (same model class as the teacher); excludes `shrink`.
        freeze_encoder: Whisper only: freeze the student's encoder (distil-whisper's `--freeze_encoder`).
        copy_layers: which teacher layers (0-based) initialise each stack's student layers, e.g.
            `{"decoder": [2, 3]}` (the last two of four); default: maximally spaced, first and last kept.
        inherit_width: a narrower student (smaller `d_model`/`hidden_size`, fewer heads or FFN neurons) still starts
            from the teacher: each narrower tensor takes the leading slice of the teacher's (the first residual
            dimensions, the first attention heads when the head size is kept, the first FFN neurons), as in weight
            subcloning. Off by default: without it narrower tensors start fresh.
        **shrink: teacher config fields to change, e.g. `decoder_layers=2` (Whisper), `num_hidden_layers=4`,
            `hidden_size=384`, `intermediate_size=1536`, `num_attention_heads=6` (CTC), `d_model`,
            `encoder_ffn_dim` (Whisper).

    Tensors whose shapes match are copied from the teacher: embeddings, the conv front-end, and maximally spaced
    layers. `layer_map[stack][student_layer]` is the teacher layer it was copied from (0-based module indices);
    the same map is stored in `student.config.distillation_layer_map` so the trainer can default to it.
    """
    if isinstance(teacher, str):
        teacher = load_model(teacher)
    family = family_of(teacher)
    if student_config is not None and shrink:
        raise ValueError("Pass either student_config or shrink options such as decoder_layers=2, not both.")
    config = copy.deepcopy(student_config) if student_config is not None else _shrunk_config(teacher.config, shrink)
    if student_config is None:
        _no_inherited_layerdrop(config, shrink)
    student = type(teacher)(config)
    teacher_counts, student_counts = family.layer_counts(teacher.config), family.layer_counts(config)
    layer_map = {
        stack: dict(enumerate(spaced_layers(teacher_counts[stack], student_counts[stack]))) for stack in teacher_counts
    }
    for stack, layers in (copy_layers or {}).items():
        if stack not in teacher_counts or len(layers) != student_counts[stack] or not all(
                0 <= t < teacher_counts[stack] for t in layers):
            raise ValueError(f"copy_layers[{stack!r}]={layers} must name {student_counts.get(stack, 0)} teacher "
                             f"layers between 0 and {teacher_counts.get(stack, 0) - 1} (stacks: {list(teacher_counts)}).")
        layer_map[stack] = dict(enumerate(layers))
    copied, fresh = _copy_weights(teacher, student, layer_map, slice_width=inherit_width)
    logger.info("make_student: copied %d tensors from the teacher, %d freshly initialised", copied, fresh)
    family.finish_student(student, teacher, layer_map)
    student.config.distillation_layer_map = {s: {str(k): v for k, v in m.items()} for s, m in layer_map.items()}
    if freeze_encoder:
        family.freeze_encoder(student)
    return student, layer_map
