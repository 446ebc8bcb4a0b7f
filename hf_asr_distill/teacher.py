"""The teacher: loading, precision, freezing, placement on every backend, and whether it may share the student's
encoder.

The teacher is frozen, in evaluation mode, run without gradients and never wrapped for gradient synchronisation.
Under DDP, FSDP and DeepSpeed ZeRO-1/2 it is a full replica on each device (those backends shard gradients and
optimizer state, and a frozen teacher has neither); under ZeRO-3 its weights are partitioned across processes like
the student's, in a DeepSpeed engine of its own.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .families import Family, family_of

logger = logging.getLogger(__name__)

TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(name: str, use_cpu: bool = False) -> torch.dtype:
    """The teacher's precision: the named one, or for "auto" bf16 on a GPU that supports it (a frozen teacher loses
    nothing measurable there and runs 3-4x faster) and fp32 elsewhere (CPUs gain little from bf16)."""
    if name != "auto":
        return TEACHER_DTYPES[name]
    bf16 = not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def check_pair(teacher: PreTrainedModel, student: PreTrainedModel, args: Any) -> Family:
    """Refuse teacher/student pairs that cannot be distilled; return their family."""
    t_family, s_family = family_of(teacher), family_of(student)
    if t_family is not s_family:
        raise ValueError(
            f"Teacher is a {t_family.name} model but the student is a {s_family.name} model: output-layer and "
            "hidden-state KD are unavailable across families and vocabularies. Train on the teacher's pseudo-labels "
            "instead (hf-asr-distill pseudo-label), with teacher_model=None."
        )
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if args.alpha_kd > 0 and t_vocab != s_vocab:
        raise ValueError(
            f"teacher vocab {t_vocab} != student vocab {s_vocab}: output-layer KD compares distributions over the "
            "same vocabulary. Use the teacher's tokenizer for the student, or set alpha_kd=0."
        )
    return t_family


def check_backend(args: Any, deepspeed: bool, fsdp: bool) -> None:
    """Refuse the combinations not verified yet: hidden-state KD under FSDP (accelerate runs FSDP on GPUs only, and
    this path has not been run there), and under DeepSpeed with fp16 (DeepSpeed's own loss scale would reach the
    projections' gradients unseen)."""
    where = "FSDP" if fsdp else "DeepSpeed with fp16" if deepspeed and args.fp16 else None
    if where and args.alpha_hidden > 0:
        raise NotImplementedError(
            f"Hidden-state KD (alpha_hidden > 0) is not available under {where} yet. Use DDP or DeepSpeed (bf16 or "
            f"fp32) for it, or alpha_hidden=0 (output-layer KD, pseudo-labels and teacher caches work under {where}).")


def freeze(teacher: PreTrainedModel) -> PreTrainedModel:
    """Evaluation mode, no gradients: the teacher never trains."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def zero_stage(accelerator: Any) -> int:
    """The DeepSpeed ZeRO stage of the run (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def place_teacher(teacher: PreTrainedModel, accelerator: Any, dtype: torch.dtype) -> nn.Module:
    """Cast, freeze and place the teacher for this run; return what runs it (the model, or a ZeRO-3 engine)."""
    teacher = freeze(teacher.to(dtype))
    if zero_stage(accelerator) == 3:
        return deepspeed_engine(teacher, accelerator)
    # evaluation_mode: no DDP/FSDP wrapper, so no gradient sync. Placement is explicit because prepare_model skips it
    # under FSDP.
    return accelerator.prepare_model(teacher, device_placement=True, evaluation_mode=True)


def teacher_runner(teacher: PreTrainedModel | None, accelerator: Any, args: Any,
                   cache: Any = None) -> nn.Module | None:
    """What runs the teacher in a run: nothing for sequence-level KD alone (no teacher); the frozen model left on
    the CPU, uncast, when a cache of probabilities (and of every hidden state asked for) replaces it, since it is then
    only checked against the cache; otherwise the placed teacher (`place_teacher`). An encoder-output cache leaves
    the teacher's decoder to run live."""
    if teacher is None:
        return None
    replaced = cache is not None and cache.has_probabilities and (
        args.alpha_hidden == 0 or bool(cache.manifest["layers"]))
    if replaced:
        return freeze(teacher)
    return place_teacher(teacher, accelerator, teacher_dtype(args.teacher_dtype, args.use_cpu))


def deepspeed_engine(teacher: PreTrainedModel, accelerator: Any) -> nn.Module:
    """ZeRO-3: the teacher's weights partitioned across processes like the student's, in an engine of its own built
    from the run's DeepSpeed config without optimizer or scheduler; forward passes gather them."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero, width = config["zero_optimization"], family_of(teacher).hidden_size(teacher.config)
    # the sizes Trainer fills from the student's width only when training starts; here from the teacher's
    for key, value in (("reduce_bucket_size", width * width), ("stage3_prefetch_bucket_size", int(0.9 * width**2)),
                       ("stage3_param_persistence_threshold", 10 * width)):
        if zero.get(key) == "auto":
            zero[key] = value
    unresolved = [k for k, v in {**config, **zero}.items() if v == "auto"]
    if unresolved:
        raise ValueError(f"DeepSpeed config values {unresolved} are still 'auto' for the teacher's engine: "
                         "set them explicitly.")
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None
    return engine


def shares_encoder(family: Family, student: PreTrainedModel, teacher: PreTrainedModel | None, allowed: bool,
                   partitioned: bool) -> bool:
    """Whether the teacher reuses the student's encoder output instead of running its own encoder.

    Only when allowed (`share_frozen_encoder`), when the teacher's weights are not partitioned (ZeRO-3 weights
    cannot be compared), and when the family says the student's frozen encoder is exactly the teacher's.
    """
    if teacher is None or not allowed:
        return False
    if partitioned:
        logger.info("The teacher runs its own encoder: its weights are partitioned (ZeRO-3) and cannot be compared.")
        return False
    share, reason = family.can_share_encoder(student, teacher)
    logger.info("The teacher %s the student's encoder output: %s.", "reuses" if share else "does not reuse", reason)
    return share
