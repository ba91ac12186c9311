"""The token-mixing operations of NAS-Bench-BERT layers.

Shape letters: B batch, T sequence, H hidden size, nh heads, hs head size (H // nh).

Every operation maps hidden states (B, T, H) to (B, T, H) and returns
`(context, scores)`, where `scores` is what a metric may read as the operation's
"attention map" (None unless `output_attentions`):
- SA (SDP, WMA) and DSC: the attention probabilities (B, nh, T, T) of their softmax.
- LT (DFT, DCT): there are none; the authors' metric code hooked a softmax that their
  LT modules computed over the head dimension of the transform and never used, so
  `scores` is that tensor, softmax(transform, dim=-1), of shape (B, nh, T, hs).

Each operation also names, in `projections`, its Linear layers that project the hidden
states into head space: those are the modules the head metrics read.

Where transformers has the operation (SDP: `ElectraSelfAttention`; DSC:
`ConvBertSelfAttention`) we use it; WMA, DFT and DCT are ours.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import ConvBertConfig, ElectraConfig
from transformers.models.convbert.modeling_convbert import ConvBertSelfAttention
from transformers.models.electra.modeling_electra import ElectraSelfAttention, eager_attention_forward


class ScaledDotProductAttention(ElectraSelfAttention):
    """softmax(Q Kᵀ / √hs) V per head: transformers' ELECTRA self-attention (eager, so the
    probabilities are returned)."""

    projections = ("query", "key", "value")

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        context, probs = super().forward(hidden_states, attention_mask=attention_mask)
        return context, (probs if output_attentions else None)


class WeightedMultiplicativeAttention(ElectraSelfAttention):
    """softmax((Q W) Kᵀ / √hs) V: the query is multiplied by a learned H×H matrix `weight`
    (no bias) before the dot product (FlexiBERT's WMA). With W = I it is SDP."""

    projections = ("query", "key", "value", "weight")

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.weight = nn.Linear(self.all_head_size, self.all_head_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        query = self.weight(self.query(hidden_states)).view(hidden_shape).transpose(1, 2)  # (B, nh, T, hs)
        key = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.value(hidden_states).view(hidden_shape).transpose(1, 2)
        context, probs = eager_attention_forward(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
        )  # context (B, T, nh, hs), probs (B, nh, T, T)
        context = context.reshape(*input_shape, -1).contiguous()  # (B, T, H)
        return context, (probs if output_attentions else None)


def dct_matrix(n: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n, n) DCT-II matrix C with C[k, j] = 2 cos(π k (2j + 1) / (2n)).

    `C @ x` equals `scipy.fft.dct(x, type=2, norm=None, axis=0)` (unnormalised, as
    TensorFlow's `tf.signal.dct` and torch-dct, which the authors used).
    """
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    return (2.0 * torch.cos(math.pi * k * (2.0 * j + 1.0) / (2.0 * n))).to(dtype)


class LinearTransform(nn.Module):
    """A linear projection, then a fixed 2-D transform per head over (sequence, head
    dimension): the real part of the DFT (FNet-style) or the DCT-II. Unnormalised, as in
    the authors' code; the post-LayerNorm that follows rescales it. Ignores the attention
    mask (a fixed transform mixes every position, as FNet does)."""

    projections = ("dense",)

    def __init__(self, hidden_size: int, num_heads: int, transform: str):
        super().__init__()
        if transform not in ("DFT", "DCT"):
            raise ValueError(f"transform must be 'DFT' or 'DCT', got {transform!r}")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.transform = transform
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        B, T, H = hidden_states.shape
        x = self.dense(hidden_states).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if self.transform == "DFT":
            y = torch.fft.fft2(x, dim=(-2, -1)).real  # (B, nh, T, hs)
        else:
            c_t = dct_matrix(T, dtype=x.dtype, device=x.device)  # (T, T)
            c_h = dct_matrix(self.head_size, dtype=x.dtype, device=x.device)  # (hs, hs)
            y = c_t @ x @ c_h.T  # DCT along T, then along hs: (B, nh, T, hs)
        scores = torch.softmax(y, dim=-1) if output_attentions else None
        context = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return context, scores


class DynamicSpanConvolution(ConvBertSelfAttention):
    """ConvBERT's mixed attention (transformers' `ConvBertSelfAttention`, head ratio 2):
    max(1, nh // 2) self-attention heads and as many span-based dynamic convolution heads
    of kernel `k`, each hs = H / (2 · max(1, nh // 2)) wide, concatenated to H."""

    projections = ("query", "key", "value", "conv_out_layer")

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        context, probs = super().forward(hidden_states, attention_mask=attention_mask)
        return context, (probs if output_attentions else None)


def build_operation(
    operation_type: str,
    operation_parameter: str | int,
    *,
    hidden_size: int,
    num_heads: int,
    electra_config: ElectraConfig,
) -> nn.Module:
    """The operation module for one layer (config already validated)."""
    if operation_type == "SA":
        config = electra_config.__class__(**{**electra_config.to_dict(), "num_attention_heads": num_heads})
        config._attn_implementation = "eager"  # the metrics read the probabilities
        if operation_parameter == "SDP":
            return ScaledDotProductAttention(config)
        return WeightedMultiplicativeAttention(config)
    if operation_type == "LT":
        return LinearTransform(hidden_size, num_heads, operation_parameter)
    if operation_type == "DSC":
        config = ConvBertConfig(
            hidden_size=hidden_size,
            num_attention_heads=num_heads,
            head_ratio=2,
            conv_kernel_size=operation_parameter,
            attention_probs_dropout_prob=electra_config.attention_probs_dropout_prob,
            initializer_range=electra_config.initializer_range,
        )
        return DynamicSpanConvolution(config)
    raise ValueError(f"unknown operation_type {operation_type!r}")
