"""hf_asr_distill: distil a large speech-recognition model into a small, fast student with Transformers' Trainer."""

from .config import DistillationConfig
from .data import CTCCollator, WhisperCollator, collator_for
from .losses import HIDDEN_LOSS_FNS, KD_LOSS_FNS
from .student import load_model, make_student
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "CTCCollator",
    "DistillationConfig",
    "DistillationTrainer",
    "HIDDEN_LOSS_FNS",
    "KD_LOSS_FNS",
    "WhisperCollator",
    "collator_for",
    "load_model",
    "make_student",
]
