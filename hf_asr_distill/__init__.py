"""hf_asr_distill: distil a large speech-recognition model into a small, fast student with Transformers' Trainer."""

from .config import DistillationConfig
from .data import CTCCollator, WhisperCollator, collator_for, load_speech_dataset, prepare_dataset
from .families import family_of
from .evaluation import asr_scores, evaluate_model, wer_metrics
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
    "asr_scores",
    "collator_for",
    "evaluate_model",
    "family_of",
    "load_speech_dataset",
    "prepare_dataset",
    "wer_metrics",
    "load_model",
    "make_student",
]
