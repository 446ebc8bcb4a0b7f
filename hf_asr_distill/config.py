"""`DistillationConfig`: every knowledge-distillation knob, on top of `Seq2SeqTrainingArguments`."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments

from .distributed import has_accelerator

KD_LOSSES = ("kl", "soft_ce", "reverse_kl", "jsd")
HIDDEN_LOSSES = ("mse", "l1", "cosine", "l1_cosine")
PROJECTIONS = ("linear", "mlp", "none")
TEACHER_DTYPES = ("fp32", "bf16", "fp16", "auto")
TASKS = ("transcribe", "translate")
LAYER_MAP_FIELDS = ("hidden_layer_map", "encoder_layer_map", "decoder_layer_map")


def auto_workers(use_cpu: bool = False) -> int:
    """DataLoader workers for feature extraction: the CPU cores per local training process (at most 8) when a GPU
    trains, none on a CPU-only run."""
    if use_cpu or not has_accelerator():
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(8, (os.cpu_count() or 1) // local))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}.")


def parse_layer_map(name: str, value: Any) -> dict[int, int] | None:
    """Turn a layer map given as a dict or a JSON string (keys may be strings) into `dict[int, int]`."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be JSON like '{{\"2\": 4, \"4\": 12}}', got {value!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name} must map student layer -> teacher layer, got {type(value).__name__}.")
    try:
        parsed = {int(s): int(t) for s, t in value.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} keys and values must be integers (layer indices), got {value!r}.") from err
    if any(i < 0 for pair in parsed.items() for i in pair):
        raise ValueError(f"{name} has a negative layer index: {parsed}.")
    return parsed


@dataclass
class DistillationConfig(Seq2SeqTrainingArguments):
    """Training arguments plus the distillation recipe.

    The total loss is `alpha_ce * hard_label_loss + alpha_kd * output_kd_loss + alpha_hidden * hidden_loss`.
    Defaults follow distil-whisper: T = 2, CE weight 0.8, KD weight 1.0, forward KL scaled by T^2.
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Drop dataset columns the model's forward does not take. Off by default: datasets prepared with "
            "prepare_dataset extract features on the fly from their audio and text columns."
        },
    )
    logging_steps: float = field(
        default=10, metadata={"help": "Log every N steps (loss and each loss term); the first step is logged too."}
    )
    logging_first_step: bool = field(default=True, metadata={"help": "Log the first training step."})
    temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature for output-layer KD (> 0). Evaluation always uses T = 1."},
    )
    alpha_ce: float = field(
        default=0.8, metadata={"help": "Weight of the hard-label loss (cross-entropy for Whisper, CTC for CTC models)."}
    )
    alpha_kd: float = field(default=1.0, metadata={"help": "Weight of the output-layer distillation loss."})
    kd_loss: str = field(
        default="kl",
        metadata={
            "help": "Output-layer KD loss: 'kl' = T^2 * KL(teacher || student) (Hinton et al.); 'soft_ce' = "
            "-sum_i t_i log p_i on softened distributions; 'reverse_kl' = T^2 * KL(student || teacher); "
            "'jsd' = T^2 * Jensen-Shannon divergence (beta 0.5)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": "Precision the teacher runs in: fp32, bf16, fp16, or auto (bf16 on GPUs that support it, "
                          "else fp32). Losses are always computed in fp32."},
    )
    alpha_hidden: float = field(
        default=0.0, metadata={"help": "Weight of the intermediate-layer (hidden-state) loss; 0 turns it off."}
    )
    hidden_loss: str = field(
        default="mse",
        metadata={
            "help": "Hidden-state loss: 'mse' (mean squared error), 'l1', 'cosine' (1 - cos), or 'l1_cosine' "
            "(DistilHuBERT: L1 - log sigmoid(cos))."
        },
    )
    hidden_layer_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "CTC models: JSON map student layer -> teacher layer, indices as in output_hidden_states "
            "(0 = embedding output, i = output of layer i). Default: the layers make_student copied, else "
            "uniformly spaced, last to last."
        },
    )
    encoder_layer_map: dict | str | None = field(
        default=None, metadata={"help": "Whisper: JSON map student encoder layer -> teacher encoder layer."}
    )
    decoder_layer_map: dict | str | None = field(
        default=None, metadata={"help": "Whisper: JSON map student decoder layer -> teacher decoder layer."}
    )
    projection: str = field(
        default="linear",
        metadata={
            "help": "Learned map from student to teacher hidden size: 'linear', 'mlp' (linear-GELU-linear), or "
            "'none' (only when both sizes are equal)."
        },
    )
    projection_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the projections (default: learning_rate)."}
    )
    language: str | None = field(
        default=None,
        metadata={"help": "Whisper: the language of the training audio (a code such as 'de', or 'german'); labels, "
                          "teacher forcing and generation start with its token. Needed for multilingual teachers "
                          "unless the data has a language column; refused for English-only (.en) ones."},
    )
    task: str | None = field(
        default=None, metadata={"help": "Whisper: 'transcribe' (default) or 'translate' (speech to English text)."}
    )
    length_column_name: str = field(
        default="duration",
        metadata={"help": "Column with each row's length for group_by_length: prepare_dataset keeps the audio "
                          "duration (seconds) as `duration`."},
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "A batch whose loss is NaN or infinite on any process: 'stop' (every process stops with "
                          "the same message naming the examples) or 'skip' (every process skips it; counted and "
                          "logged as nonfinite_skipped, with the examples)."},
    )
    dataloader_num_workers: int = field(
        default=-1,
        metadata={"help": "DataLoader worker processes decoding audio and extracting features. -1 (auto): on a GPU, "
                          "the CPU cores per training process (at most 8), so a step never waits for log-mel "
                          "features; on a CPU, 0 (workers would take cores from the training itself)."},
    )
    share_frozen_encoder: bool = field(
        default=True,
        metadata={
            "help": "Whisper: when the student's encoder is frozen and equal to the teacher's, run it once and "
            "give its output to the teacher (about halves the teacher's cost)."
        },
    )

    def __getstate__(self) -> dict:
        """Pickled arguments never carry the Hub token: Trainer writes them as training_args.bin into every
        checkpoint and into the folder it uploads (`push_to_hub=True`, every `hub_strategy`)."""
        return {**self.__dict__, "hub_token": None}

    def __deepcopy__(self, memo: dict) -> "DistillationConfig":
        copied = type(self).__new__(type(self))  # an in-memory copy keeps the token (pickling drops it)
        memo[id(self)] = copied
        copied.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return copied

    def __post_init__(self) -> None:
        if self.dataloader_num_workers == -1:
            self.dataloader_num_workers = auto_workers(self.use_cpu)
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not has_accelerator()):
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on each DataLoader without
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        for name in ("alpha_ce", "alpha_kd", "alpha_hidden"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.alpha_ce == self.alpha_kd == self.alpha_hidden == 0:
            raise ValueError("alpha_ce, alpha_kd and alpha_hidden are all 0: nothing to train. Set at least one > 0.")
        _check_choice("kd_loss", self.kd_loss, KD_LOSSES)
        _check_choice("hidden_loss", self.hidden_loss, HIDDEN_LOSSES)
        _check_choice("projection", self.projection, PROJECTIONS)
        _check_choice("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        _check_choice("nonfinite_loss", self.nonfinite_loss, ("stop", "skip"))
        if self.task is not None:
            _check_choice("task", self.task, TASKS)
        if self.projection_learning_rate is not None and not self.projection_learning_rate > 0:
            raise ValueError(f"projection_learning_rate must be > 0, got {self.projection_learning_rate}.")
        for name in LAYER_MAP_FIELDS:
            setattr(self, name, parse_layer_map(name, getattr(self, name)))
