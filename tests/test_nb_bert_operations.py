"""The nb-bert operations: shapes and known answers (numpy / scipy as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from transformers import ElectraConfig

from tfnas_ray.spaces.nasbench_bert.operations import (
    DynamicSpanConvolution,
    LinearTransform,
    ScaledDotProductAttention,
    WeightedMultiplicativeAttention,
    build_operation,
    dct_matrix,
)

B, T, H = 2, 6, 8


def electra(heads: int) -> ElectraConfig:
    config = ElectraConfig(hidden_size=H, num_attention_heads=heads, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    return config


@pytest.mark.parametrize(
    "op, param, heads, score_shape",
    [
        ("SA", "SDP", 2, (B, 2, T, T)),
        ("SA", "WMA", 4, (B, 4, T, T)),
        ("LT", "DFT", 2, (B, 2, T, H // 2)),
        ("LT", "DCT", 4, (B, 4, T, H // 4)),
        ("DSC", 5, 4, (B, 2, T, T)),  # ConvBERT: half the heads attend
        ("DSC", 9, 2, (B, 1, T, T)),
    ],
)
def test_output_and_score_shapes(op, param, heads, score_shape):
    torch.manual_seed(0)
    module = build_operation(op, param, hidden_size=H, num_heads=heads, electra_config=electra(2)).eval()
    context, scores = module(torch.randn(B, T, H), None, True)
    assert context.shape == (B, T, H)
    assert scores.shape == score_shape
    assert module(torch.randn(B, T, H), None, False)[1] is None
    for name in module.projections:
        assert isinstance(getattr(module, name), torch.nn.Linear)


def test_dft_is_the_real_part_of_numpy_fft2_per_head():
    """Reference: numpy.fft.fft2 over (sequence, head dimension) of each head."""
    torch.manual_seed(1)
    lt = LinearTransform(H, 2, "DFT").eval()
    x = torch.randn(B, T, H, dtype=torch.float64)
    lt = lt.double()
    with torch.no_grad():
        projected = lt.dense(x).numpy().reshape(B, T, 2, H // 2)  # (B, T, nh, hs)
        context, _ = lt(x)
    expected = np.fft.fft2(projected, axes=(1, 3)).real.reshape(B, T, H)
    np.testing.assert_allclose(context.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_dct_matches_scipy_dctn_per_head():
    """Reference: scipy.fft.dctn(type=2, norm=None) over (sequence, head dimension)."""
    torch.manual_seed(2)
    lt = LinearTransform(H, 4, "DCT").double().eval()
    x = torch.randn(B, T, H, dtype=torch.float64)
    with torch.no_grad():
        projected = lt.dense(x).numpy().reshape(B, T, 4, H // 4)
        context, _ = lt(x)
    expected = scipy.fft.dctn(projected, type=2, norm=None, axes=(1, 3)).reshape(B, T, H)
    np.testing.assert_allclose(context.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_dct_matrix_known_values():
    # n = 2: C = 2·[[cos 0, cos 0], [cos(π/4), cos(3π/4)]] = [[2, 2], [√2, −√2]]
    c = dct_matrix(2, dtype=torch.float64, device=torch.device("cpu"))
    np.testing.assert_allclose(c.numpy(), [[2, 2], [np.sqrt(2), -np.sqrt(2)]], atol=1e-15)


def test_wma_with_identity_weight_is_sdp():
    torch.manual_seed(3)
    sdp = ScaledDotProductAttention(electra(2)).eval()
    wma = WeightedMultiplicativeAttention(electra(2)).eval()
    wma.load_state_dict({**sdp.state_dict(), "weight.weight": torch.eye(H)})
    x = torch.randn(B, T, H)
    (c1, p1), (c2, p2) = sdp(x, None, True), wma(x, None, True)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(p1, p2)
    with torch.no_grad():
        wma.weight.weight.mul_(3.0)  # a different matrix changes the attention
    assert not torch.allclose(wma(x, None, True)[1], p1)


def test_sdp_matches_a_hand_written_attention():
    """softmax(Q Kᵀ/√hs) V per head, written out."""
    torch.manual_seed(4)
    sdp = ScaledDotProductAttention(electra(2)).eval()
    x = torch.randn(B, T, H)
    q, k, v = (m(x).view(B, T, 2, H // 2).transpose(1, 2) for m in (sdp.query, sdp.key, sdp.value))
    probs = torch.softmax(q @ k.transpose(-1, -2) / (H // 2) ** 0.5, dim=-1)
    expected = (probs @ v).transpose(1, 2).reshape(B, T, H)
    context, scores = sdp(x, None, True)
    torch.testing.assert_close(context, expected)
    torch.testing.assert_close(scores, probs)


def test_attention_mask_hides_padding_from_sdp_and_dsc():
    torch.manual_seed(5)
    mask = torch.zeros(B, 1, 1, T)
    mask[..., -2:] = torch.finfo(torch.float32).min
    for module in (ScaledDotProductAttention(electra(2)), build_operation(
        "DSC", 5, hidden_size=H, num_heads=2, electra_config=electra(2)
    )):
        _, probs = module.eval()(torch.randn(B, T, H), mask, True)
        assert torch.all(probs[..., -2:] == 0)


def test_dsc_is_transformers_convbert():
    module = build_operation("DSC", 9, hidden_size=H, num_heads=4, electra_config=electra(2))
    assert isinstance(module, DynamicSpanConvolution)
    assert module.conv_kernel_size == 9 and module.num_attention_heads == 2
