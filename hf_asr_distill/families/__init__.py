"""Model families: `family_of(model)` returns the object that knows everything family-specific about a model.

Adding a family (another encoder-decoder, a transducer) means one new module implementing `Family` and one entry
in `FAMILIES`; nothing else in the package asks which family a model is.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from .base import Family, Limits, config_of, pad_labels, with_example_ids
from .ctc import CTCCollator, CTCFamily
from .whisper import WhisperCollator, WhisperFamily

FAMILIES: tuple[Family, ...] = (WhisperFamily(), CTCFamily())


def family_of(model: PreTrainedModel | PretrainedConfig) -> Family:
    """The family of a model (or config); anything else is refused with the list of what is supported."""
    for family in FAMILIES:
        if family.handles(model):
            return family
    config = config_of(model)
    names = [type(model).__name__] if isinstance(model, PreTrainedModel) else list(config.architectures or [])
    raise ValueError(
        f"Unsupported model {names or config.model_type!r}: hf_asr_distill distils WhisperForConditionalGeneration "
        "and CTC models (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC, Data2VecAudioForCTC, ...)."
    )


def family_of_processor(processor: Any) -> Family:
    """The family whose models a processor (or a bare tokenizer) serves; families are asked in order."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return next(f for f in FAMILIES if f.handles_tokenizer(tokenizer))


__all__ = ["CTCCollator", "CTCFamily", "FAMILIES", "Family", "Limits", "WhisperCollator", "WhisperFamily",
           "config_of", "family_of", "family_of_processor", "pad_labels", "with_example_ids"]
