"""Distillation losses as plain functions of tensors.

Every function returns an *unreduced* loss per position (shape `logits.shape[:-1]`), computed in fp32 so that
bf16/fp16 logits cannot overflow the softmax. The trainer reduces with `masked_sum` over valid positions, which
lets it normalise by the number of label tokens across gradient-accumulation steps and processes.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _log_softmax(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Forward KL(teacher_T || student_T) * T^2 per position (Hinton et al.; distil-whisper's KD term)."""
    log_p_s = _log_softmax(student_logits, temperature)
    log_p_t = _log_softmax(teacher_logits, temperature)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl * temperature**2


def soft_ce_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Soft-target cross-entropy L = -sum_i t_i log p_i on softened distributions (no T^2 factor)."""
    log_p_s = _log_softmax(student_logits, temperature)
    p_t = _log_softmax(teacher_logits, temperature).exp()
    return -(p_t * log_p_s).sum(-1)


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Reverse KL(student_T || teacher_T) * T^2 per position (mode-seeking)."""
    return kl_loss(teacher_logits, student_logits, temperature)


def jsd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0, beta: float = 0.5) -> Tensor:
    """Generalised Jensen-Shannon divergence * T^2: beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1-beta) s."""
    log_p_s = _log_softmax(student_logits, temperature)
    log_p_t = _log_softmax(teacher_logits, temperature)
    log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log(1 - beta)]), dim=0)
    kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    return (beta * kl_t + (1 - beta) * kl_s) * temperature**2


KD_LOSS_FNS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "kl": kl_loss,
    "soft_ce": soft_ce_loss,
    "reverse_kl": reverse_kl_loss,
    "jsd": jsd_loss,
}


def mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over features of (t - s)^2; averaged over valid positions this is the seed's 1/N sum (t_i - s_i)^2."""
    return (teacher.float() - student.float()).pow(2).mean(-1)


def l1_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean absolute error over features."""
    return (teacher.float() - student.float()).abs().mean(-1)


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """1 - cosine similarity along the feature axis."""
    return 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)


def l1_cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """DistilHuBERT: L1(pred, target) - log(sigmoid(cos(pred, target)))."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    return l1_loss(student, teacher) - F.logsigmoid(cos)


HIDDEN_LOSS_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": mse_loss,
    "l1": l1_loss,
    "cosine": cosine_loss,
    "l1_cosine": l1_cosine_loss,
}


def masked_sum(values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sum of `values` over positions where `mask` is true, and the count of those positions."""
    if mask is None:
        return values.sum(), torch.tensor(values.numel(), device=values.device)
    mask = mask.to(values.device, torch.bool)
    return values.masked_fill(~mask, 0.0).sum(), mask.sum()


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over valid positions (0 when there are none, never NaN)."""
    total, count = masked_sum(values, mask)
    return total / count.clamp(min=1)


def align_time(x: Tensor, length: int) -> Tensor:
    """Resample a (batch, time, ...) sequence to `length` steps along time.

    Teacher and student can run at different frame rates (another conv stride). Shortening uses adaptive average
    pooling (a teacher at twice the student's rate has each pair of frames averaged); lengthening uses linear
    interpolation. Equal lengths are returned untouched.
    """
    if x.shape[1] == length:
        return x
    batch, steps = x.shape[:2]
    flat = x.reshape(batch, steps, -1).transpose(1, 2).float()
    if steps > length:
        out = F.adaptive_avg_pool1d(flat, length)
    else:
        out = F.interpolate(flat, size=length, mode="linear", align_corners=False)
    return out.transpose(1, 2).reshape(batch, length, *x.shape[2:]).to(x.dtype)


def bucket_logprobs(topk_logprobs: Tensor) -> Tensor:
    """Append the tail bucket: log(1 - sum p_k), computed stably; input (..., k) log-probs, output (..., k + 1)."""
    top = topk_logprobs.float()
    tail = torch.log1p(-torch.logsumexp(top, dim=-1).exp().clamp(max=1 - 1e-6))
    return torch.cat([top, tail.unsqueeze(-1)], dim=-1)


def student_buckets(student_logits: Tensor, indices: Tensor, temperature: float) -> Tensor:
    """The student's softened log-probs on the teacher's top-k tokens plus the tail bucket, (..., k + 1)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return bucket_logprobs(log_q.gather(-1, indices.long()))


def output_kd(kd_loss: str, student_logits: Tensor, temperature: float, teacher_logits: Tensor | None = None,
              topk_logprobs: Tensor | None = None, topk_indices: Tensor | None = None) -> Tensor:
    """Output-layer KD per position against the live teacher's logits (resampled to the student's frame count), or
    against a cache's top-k log-probs and their token ids (k + 1 buckets: the top-k and the tail)."""
    kd_fn = KD_LOSS_FNS[kd_loss]
    if topk_logprobs is not None:
        # in log space already; scaling by T undoes the loss functions' 1/T softening
        student = student_buckets(student_logits, topk_indices, temperature)
        return kd_fn(student * temperature, bucket_logprobs(topk_logprobs) * temperature, temperature)
    return kd_fn(student_logits, align_time(teacher_logits, student_logits.shape[1]), temperature)
