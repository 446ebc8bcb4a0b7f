import math

import pytest
import torch
import torch.nn.functional as F

from hf_asr_distill.losses import (
    HIDDEN_LOSS_FNS,
    KD_LOSS_FNS,
    align_time,
    jsd_loss,
    kl_loss,
    masked_mean,
    masked_sum,
    reverse_kl_loss,
    soft_ce_loss,
)

S = torch.tensor([[1.0, 2.0, 0.5]])
T = torch.tensor([[0.2, 1.5, 2.5]])


def softmax(x, temp):
    e = [math.exp(v / temp) for v in x]
    return [v / sum(e) for v in e]


def test_kl_is_zero_for_identical_logits():
    x = torch.randn(2, 5, 7)
    for name, fn in KD_LOSS_FNS.items():
        if name != "soft_ce":
            assert torch.allclose(fn(x, x, 2.0), torch.zeros(2, 5), atol=1e-6), name


def test_kl_matches_hand_computation_with_t_squared():
    temp = 2.0
    p_t, p_s = softmax(T[0].tolist(), temp), softmax(S[0].tolist(), temp)
    expected = temp**2 * sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    assert kl_loss(S, T, temp).item() == pytest.approx(expected, rel=1e-5)
    # T^2 scaling: the same KL divided by T^2 is the plain KL of the softened distributions.
    plain = F.kl_div(F.log_softmax(S / temp, -1), F.log_softmax(T / temp, -1), log_target=True, reduction="sum")
    assert kl_loss(S, T, temp).item() == pytest.approx(temp**2 * plain.item(), rel=1e-5)


def test_soft_ce_is_the_seed_formula():
    temp = 3.0
    p_t, p_s = softmax(T[0].tolist(), temp), softmax(S[0].tolist(), temp)
    expected = -sum(t * math.log(s) for t, s in zip(p_t, p_s))
    assert soft_ce_loss(S, T, temp).item() == pytest.approx(expected, rel=1e-5)
    # soft CE = KL / T^2 + teacher entropy
    entropy = -sum(t * math.log(t) for t in p_t)
    assert soft_ce_loss(S, T, temp).item() == pytest.approx(kl_loss(S, T, temp).item() / temp**2 + entropy, rel=1e-5)


def test_reverse_kl_and_jsd():
    temp = 1.0
    p_t, p_s = softmax(T[0].tolist(), temp), softmax(S[0].tolist(), temp)
    expected = sum(s * math.log(s / t) for t, s in zip(p_t, p_s))
    assert reverse_kl_loss(S, T, temp).item() == pytest.approx(expected, rel=1e-5)
    m = [(a + b) / 2 for a, b in zip(p_t, p_s)]
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(p_t, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(p_s, m))
    assert jsd_loss(S, T, temp).item() == pytest.approx(js, rel=1e-5)
    assert jsd_loss(S, T, temp).item() == pytest.approx(jsd_loss(T, S, temp).item(), rel=1e-5)


def test_masked_positions_do_not_count():
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    total, count = masked_sum(kl_loss(s, t), mask)
    s2 = s.clone()
    s2[~mask] = 1e4  # garbage in padded positions
    total2, _ = masked_sum(kl_loss(s2, t), mask)
    assert count.item() == 5
    assert torch.allclose(total, total2)
    assert torch.allclose(total, kl_loss(s, t)[mask].sum())


def test_extreme_half_precision_logits_stay_finite():
    s = torch.tensor([[[60000.0, -60000.0, 0.0]]], dtype=torch.float16)
    t = torch.tensor([[[-60000.0, 60000.0, 0.0]]], dtype=torch.bfloat16)
    for fn in KD_LOSS_FNS.values():
        assert torch.isfinite(fn(s, t, 2.0)).all()


def test_mse_is_the_seed_formula_over_valid_positions():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    expected = ((t - s) ** 2)[mask].sum() / (mask.sum() * 4)  # 1/N sum over the N valid elements
    assert masked_mean(HIDDEN_LOSS_FNS["mse"](s, t), mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_l1_cosine_is_distilhubert_formula():
    s = torch.tensor([[[1.0, 0.0, 2.0]]])
    t = torch.tensor([[[0.5, 1.0, 2.0]]])
    l1 = (0.5 + 1.0 + 0.0) / 3
    cos = (0.5 + 0 + 4) / (math.sqrt(5) * math.sqrt(5.25))
    expected = l1 - math.log(1 / (1 + math.exp(-cos)))
    assert HIDDEN_LOSS_FNS["l1_cosine"](s, t).item() == pytest.approx(expected, rel=1e-5)
    assert HIDDEN_LOSS_FNS["l1"](s, t).item() == pytest.approx(l1, rel=1e-5)
    assert HIDDEN_LOSS_FNS["cosine"](s, t).item() == pytest.approx(1 - cos, rel=1e-5)


def test_align_time_average_pools_a_double_rate_teacher():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)
    out = align_time(x, 3)
    assert torch.equal(out, torch.tensor([[[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]]))
    assert align_time(x, 6) is x
    longer = align_time(x, 12)
    assert longer.shape == (1, 12, 2)
    assert longer[0, 0, 0] == 0 and longer[0, -1, 0] == 10  # linear interpolation stays within the range
