"""Training-free metrics for NAS-Bench-BERT encoders (space `nb-bert`).

The paper's transformer columns (Serianni & Kalita 2023, their `BERT_metrics.ipynb`)
come from ONE pass, `sum_output`: the model in eval mode (dropout off, so values are
deterministic; the authors' notebook left dropout on) runs forward on the metric
minibatch (128 WikiText-2 sequences × 128 tokens, `tfnas_ray.data.tokenizer`), then
backward of R = Σ last_hidden_state (an all-ones output gradient). Every column reads
that pass; `_normalized` divides a column by the number of modules it summed over.

Modules read (shapes: B batch, T tokens, H hidden, F feed-forward width, E = 128):
- *projections* of a layer's operation: the Linear layers into head space — SA: query,
  key, value (+ `weight` for WMA); LT: its input `dense`; DSC: query, key, value,
  conv_out_layer. (The authors selected Linear layers with ≥ 128 outputs, which is this
  set at their hidden size 256; naming them keeps it right at hidden 128.)
- *operation modules*: every Linear of the operation and of its output block.
- *feed-forward modules*: every Linear of the stacked intermediate layers and of the
  down-projection; their GELU outputs are the *activations*.

The standard proxies: `grad_norm` and `snip` use the same pass with L = R = Σ output
(there is no LM head in the encoder); `synflow` has its own pass (|θ|, float64, an
all-ones input embedding of one sequence); `naswot` reads the activations of
`sum_output`. Every parameter counts in those three (embeddings included).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from torch import nn

from tfnas_ray.metrics import (
    Direction,
    MetricContext,
    MetricFailure,
    check_finite,
    register_batch,
    register_metric,
    register_pass,
)

SPACE = "nb-bert"
JACOB_K = 1e-5  # the authors' regulariser in −Σ[log(λ+k) + 1/(λ+k)]


@lru_cache(maxsize=4)
def _cached_batch(batch_size: int, seq_len: int, index: int = 0) -> dict[str, torch.Tensor]:
    from tfnas_ray.data.tokenizer import metric_batch

    return metric_batch(batch_size=batch_size, seq_len=seq_len, index=index)


@register_batch(SPACE)
def nb_bert_batch(options: Mapping) -> dict[str, torch.Tensor]:
    """The metric minibatch: `batch_size` (128) WikiText-2 sequences of `seq_len` (128)
    WordPiece tokens, fixed (cached per process). The tensors are shared: do not mutate.
    Option `index` (0): the index-th block of `batch_size` consecutive sequences (`--batches`)."""
    return _cached_batch(int(options.get("batch_size", 128)), int(options.get("seq_len", 128)), int(options.get("index", 0)))


# ---- the passes ------------------------------------------------------------------------


@dataclass(frozen=True)
class SumOutputPass:
    """Per-module numbers of the `sum_output` pass (forward, backward of Σ output).

    Attributes:
        head_confidence: per projection: mean over (B, features) of the max over T of its output.
        softmax_confidence: per layer: mean of the max over axis 1 of the operation's scores.
        head_importance: per projection: Σ|W ⊙ ∂R/∂W|.
        synaptic_diversity: per operation Linear: ‖W‖_nuc · ‖∂R/∂W‖_nuc.
        synaptic_saliency: per feed-forward Linear: Σ|W ⊙ ∂R/∂W|.
        activation_distance: per activation: Σ_ij K_ij over the first sequence's tokens.
        position_gradient: ∂R/∂(position embeddings) of the T used positions, (T, E).
        naswot_kernel: (B, B) Hamming-agreement kernel over all activations.
        grad_norm: Σ over parameters of ‖∂R/∂θ‖₂.
        snip: Σ over parameters of Σ|θ ⊙ ∂R/∂θ|.
    """

    head_confidence: tuple[float, ...]
    softmax_confidence: tuple[float, ...]
    head_importance: tuple[float, ...]
    synaptic_diversity: tuple[float, ...]
    synaptic_saliency: tuple[float, ...]
    activation_distance: tuple[float, ...]
    position_gradient: np.ndarray
    naswot_kernel: np.ndarray
    grad_norm: float
    snip: float


def _agreement(codes: torch.Tensor) -> torch.Tensor:
    """K = c cᵀ + (1−c)(1−c)ᵀ for 0/1 rows c (n, m), as float64 (n, n).

    Computed as m − sᵢ − sⱼ + 2 c cᵀ (s = row sums): one matrix product instead of two.
    Products of 0/1 values are exact in float32 while m < 2^24.
    """
    m = codes.shape[1]
    s = codes.sum(dim=1, dtype=torch.float64)
    return m - s[:, None] - s[None, :] + 2.0 * (codes @ codes.T).double()


def _linears(*modules: nn.Module | None) -> list[nn.Linear]:
    return [m for module in modules if module is not None for m in module.modules() if isinstance(m, nn.Linear)]


@register_pass(SPACE, "sum_output")
def sum_output_pass(ctx: MetricContext) -> SumOutputPass:
    """Forward on the minibatch with hooks, then backward of R = Σ last_hidden_state."""
    model = ctx.model().eval()
    batch = {k: v.to(ctx.device) for k, v in ctx.batch.items()}
    B = batch["input_ids"].shape[0]

    head_confidence: list[float] = []
    activation_distance: list[float] = []
    naswot_kernel = torch.zeros(B, B, dtype=torch.float64, device=ctx.device)

    def projection_hook(module, inputs, output):  # output (B, T, D)
        head_confidence.append(float(output.detach().max(dim=1).values.mean()))

    def activation_hook(module, inputs, output):  # output (B, T, F), after GELU
        codes = (output.detach() > 0).to(torch.float32)
        # the authors read the first sequence, tokens as rows: (T, F) → K (T, T)
        activation_distance.append(float(_agreement(codes[0]).sum()))
        naswot_kernel.add_(_agreement(codes.reshape(B, -1)))  # (B, T·F) → (B, B)

    handles = []
    projections: list[nn.Linear] = []
    try:
        for layer in model.layers:
            for name in layer.operation.projections:
                projections.append(getattr(layer.operation, name))
                handles.append(projections[-1].register_forward_hook(projection_hook))
            for block in layer.intermediate.layers:
                handles.append(block.register_forward_hook(activation_hook))
        out = model(batch["input_ids"], batch["attention_mask"], output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    # The authors: torch.max(scores, 1) — axis 1 is the head axis of (B, nh, T, ·).
    softmax_confidence = [float(s.detach().max(dim=1).values.mean()) for s in out.attentions]
    out.last_hidden_state.sum().backward()

    def saliency(linear: nn.Linear) -> float:
        return float((linear.weight.detach() * linear.weight.grad).abs().sum())

    def diversity(linear: nn.Linear) -> float:
        w = torch.linalg.matrix_norm(linear.weight.detach().double(), ord="nuc")
        g = torch.linalg.matrix_norm(linear.weight.grad.double(), ord="nuc")
        return float(w * g)

    operation_linears = [l for layer in model.layers for l in _linears(layer.operation, layer.operation_output)]
    ffn_linears = [l for layer in model.layers for l in _linears(layer.intermediate, layer.output)]
    T = batch["input_ids"].shape[1]
    with_grad = [p for p in model.parameters() if p.grad is not None]
    return SumOutputPass(
        head_confidence=tuple(head_confidence),
        softmax_confidence=tuple(softmax_confidence),
        head_importance=tuple(saliency(l) for l in projections),
        synaptic_diversity=tuple(diversity(l) for l in operation_linears),
        synaptic_saliency=tuple(saliency(l) for l in ffn_linears),
        activation_distance=tuple(activation_distance),
        position_gradient=model.embeddings.position_embeddings.weight.grad[:T].detach().double().cpu().numpy(),
        naswot_kernel=naswot_kernel.cpu().numpy(),
        grad_norm=float(sum(p.grad.double().norm() for p in with_grad)),
        snip=float(sum((p.detach().double() * p.grad.double()).abs().sum() for p in with_grad)),
    )


@register_pass(SPACE, "synflow")
def synflow_pass(ctx: MetricContext) -> float:
    """Σ|θ ⊙ ∂R/∂θ| with every θ replaced by |θ|, float64, input embeddings all ones
    (one sequence of the minibatch's length), R = Σ output; eval mode."""
    model = ctx.model().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    T = ctx.batch["input_ids"].shape[1]
    ones = torch.ones(1, T, model.electra_config.embedding_size, dtype=torch.float64, device=ctx.device)
    model(inputs_embeds=ones).last_hidden_state.sum().backward()
    # The word-embedding table is bypassed by the all-ones input: no gradient, no term.
    return float(sum((p.detach() * p.grad).abs().sum() for p in model.parameters() if p.grad is not None))


# ---- the paper's columns ---------------------------------------------------------------


def _total(values: tuple[float, ...], what: str) -> float:
    return check_finite(sum(values), what)


def _mean(values: tuple[float, ...], what: str) -> float:
    if not values:
        raise MetricFailure(f"{what}: the model has no such modules")
    return check_finite(sum(values) / len(values), what)


_PAPER = dict(space=SPACE, direction=Direction.HIGHER, needs=("sum_output",), cost="forward+backward")


@register_metric("head_importance", summary="Σ|W⊙∂R/∂W| over operation projections, R = Σ output (Michel et al.; paper)", **_PAPER)
def head_importance(ctx: MetricContext) -> float:
    """Head importance: Σ over each layer's projections (module doc) of Σ|W ⊙ ∂R/∂W|,
    R = Σ output. Weights only. Every operation has projections (LT: its input dense)."""
    return _total(ctx.run_pass("sum_output").head_importance, "head importance")


@register_metric("head_importance_normalized", summary="head_importance / number of projections (paper)", **_PAPER)
def head_importance_normalized(ctx: MetricContext) -> float:
    """`head_importance` divided by the number of projection Linear layers."""
    return _mean(ctx.run_pass("sum_output").head_importance, "normalised head importance")


@register_metric("head_confidence", summary="Σ over projections of mean(max over sequence of output) (Voita et al.; paper)", **_PAPER)
def head_confidence(ctx: MetricContext) -> float:
    """Head confidence: for each projection output y (B, T, D), mean over (B, D) of
    max_t y; summed over projections (all operations have them). One deviation: the
    authors hooked attributes named query/key/value/input/weight, which missed DSC's
    conv_out_layer; it counts here, as it did in their head importance."""
    return _total(ctx.run_pass("sum_output").head_confidence, "head confidence")


@register_metric("head_confidence_normalized", summary="head_confidence / number of projections (paper)", **_PAPER)
def head_confidence_normalized(ctx: MetricContext) -> float:
    """`head_confidence` divided by the number of projections."""
    return _mean(ctx.run_pass("sum_output").head_confidence, "normalised head confidence")


@register_metric("softmax_confidence", summary="Σ over layers of mean(max over axis 1 of attention scores) (paper)", **_PAPER)
def softmax_confidence(ctx: MetricContext) -> float:
    """Softmax confidence as the authors computed it: for each layer's scores
    (B, nh, T, ·), `torch.max(scores, 1)` — the max over the *head* axis — then the
    mean; summed over layers. SA and DSC give their attention probabilities (DSC: its
    attention half). LT has none: like the authors' hooked softmax, its scores are
    softmax(transform, dim=−1) over the head dimension (operations.py)."""
    return _total(ctx.run_pass("sum_output").softmax_confidence, "softmax confidence")


@register_metric("softmax_confidence_normalized", summary="softmax_confidence / number of layers (paper)", **_PAPER)
def softmax_confidence_normalized(ctx: MetricContext) -> float:
    """`softmax_confidence` divided by the number of layers (every layer has scores)."""
    return _mean(ctx.run_pass("sum_output").softmax_confidence, "normalised softmax confidence")


@register_metric("synaptic_saliency", summary="Σ|W⊙∂R/∂W| over feed-forward Linear layers (Tanaka et al.; paper)", **_PAPER)
def synaptic_saliency(ctx: MetricContext) -> float:
    """Synaptic saliency of the feed-forward networks: Σ|W ⊙ ∂R/∂W| over every stacked
    intermediate dense and the down-projection of every layer. Independent of the operation."""
    return _total(ctx.run_pass("sum_output").synaptic_saliency, "synaptic saliency")


@register_metric("synaptic_saliency_normalized", summary="synaptic_saliency / number of feed-forward Linear layers (paper)", **_PAPER)
def synaptic_saliency_normalized(ctx: MetricContext) -> float:
    """`synaptic_saliency` divided by the number of feed-forward Linear layers."""
    return _mean(ctx.run_pass("sum_output").synaptic_saliency, "normalised synaptic saliency")


@register_metric("synaptic_diversity", summary="Σ ‖W‖_nuc·‖∂R/∂W‖_nuc over operation Linear layers (Zhou et al.; paper)", **_PAPER)
def synaptic_diversity(ctx: MetricContext) -> float:
    """Synaptic diversity: Σ over every Linear of each operation and its output block
    of ‖W‖_* · ‖∂R/∂W‖_* (nuclear norms). DSC's convolutions are not Linear and, as in
    the authors' code, do not count."""
    return _total(ctx.run_pass("sum_output").synaptic_diversity, "synaptic diversity")


@register_metric("synaptic_diversity_normalized", summary="synaptic_diversity / number of operation Linear layers (paper)", **_PAPER)
def synaptic_diversity_normalized(ctx: MetricContext) -> float:
    """`synaptic_diversity` divided by the number of operation Linear layers."""
    return _mean(ctx.run_pass("sum_output").synaptic_diversity, "normalised synaptic diversity")


@register_metric("activation_distance", summary="Σ over FFN activations of Σ_ij[c cᵀ + (1−c)(1−c)ᵀ], first sequence (Mellor et al.; paper)", **_PAPER)
def activation_distance(ctx: MetricContext) -> float:
    """Activation distance as the authors computed it: for each feed-forward GELU output
    of the first sequence, codes c = 1[y > 0] (T, F), K = c cᵀ + (1−c)(1−c)ᵀ (T × T,
    tokens as rows), summed over all entries and all activations — a sum, not a log-det.
    (The authors' value is this times the number of hooks their notebook had left on a
    shared GELU module, which grew with the row index; the normalised column is unaffected.)"""
    return _total(ctx.run_pass("sum_output").activation_distance, "activation distance")


@register_metric("activation_distance_normalized", summary="activation_distance / number of activations (paper)", **_PAPER)
def activation_distance_normalized(ctx: MetricContext) -> float:
    """`activation_distance` divided by the number of feed-forward activations (Σ num_feed_forward)."""
    return _mean(ctx.run_pass("sum_output").activation_distance, "normalised activation distance")


def jacobian_covariance_score(rows: np.ndarray, *, k: float = JACOB_K) -> float:
    """−Σ[log(λ + k) + 1/(λ + k)] over the eigenvalues λ of corrcoef(rows) (Mellor et al.).

    Raises:
        MetricFailure: a constant row (NaN correlation) or a non-finite result.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(rows)
    if not np.all(np.isfinite(corr)):
        raise MetricFailure("Jacobian correlation matrix has NaN entries (a constant row)")
    eigenvalues = np.linalg.eigvalsh(corr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return check_finite(-np.sum(np.log(eigenvalues + k) + 1.0 / (eigenvalues + k)), "jacob_cov")


@register_metric("jacob_cov", summary="−Σ[log(λ+k)+1/(λ+k)] of corrcoef of ∂R/∂(position embeddings), per embedding dim (paper)", **_PAPER)
def jacob_cov(ctx: MetricContext) -> float:
    """Jacobian covariance as the authors computed it: J = ∂R/∂P for the position
    embedding table P, R = Σ output, restricted to the T positions used (the authors'
    batch used all 512), transposed to (E, T): one row per embedding dimension;
    score = −Σ[log(λ+k) + 1/(λ+k)] over the eigenvalues of corrcoef(J), k = 1e-5.
    Every operation contributes (the gradient flows through all of them)."""
    return jacobian_covariance_score(ctx.run_pass("sum_output").position_gradient.T)


@register_metric(
    "params",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="number of parameters, embeddings included",
    cost="none (model only)",
)
def params(ctx: MetricContext) -> float:
    """Every parameter of the encoder once: embeddings, projection, all layers."""
    return float(sum(p.numel() for p in ctx.model().parameters()))


# ---- standard proxies ------------------------------------------------------------------


@register_metric("grad_norm", summary="Σ_θ ‖∂L/∂θ‖₂, L = Σ output (Abdelfattah et al.)", **_PAPER)
def grad_norm(ctx: MetricContext) -> float:
    """Σ over every parameter tensor of the L2 norm of ∂L/∂θ, with L = R = Σ output
    (the encoder has no LM head). All operations alike."""
    return check_finite(ctx.run_pass("sum_output").grad_norm, "grad_norm")


@register_metric("snip", summary="Σ|θ⊙∂L/∂θ|, L = Σ output (Lee et al.)", **_PAPER)
def snip(ctx: MetricContext) -> float:
    """Σ over every parameter of |θ ⊙ ∂L/∂θ|, L = Σ output."""
    return check_finite(ctx.run_pass("sum_output").snip, "snip")


@register_metric(
    "synflow",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="Σ|θ⊙∂R/∂θ| with |θ|, all-ones input, float64, R = Σ output (Tanaka et al.)",
    needs=("synflow",),
    cost="forward+backward (float64, one sequence)",
)
def synflow(ctx: MetricContext) -> float:
    """Synflow: parameters replaced by |θ|, float64, input embeddings all ones (1, T, E),
    R = Σ output, score Σ|θ ⊙ ∂R/∂θ| over every parameter that gets a gradient (all but
    the bypassed word-embedding table). LayerNorm keeps it finite at any depth."""
    return check_finite(ctx.run_pass("synflow"), "synflow")


@register_metric("naswot", summary="log|det K|, K = Hamming agreement of GELU codes between sequences (Mellor et al.)", **_PAPER)
def naswot(ctx: MetricContext) -> float:
    """NASWOT: c_b = 1[y > 0] over every feed-forward GELU output of sequence b
    (flattened over tokens and units); K = Σ_layers [c cᵀ + (1−c)(1−c)ᵀ] (B × B);
    score = log|det K|. Operations without GELU add nothing (only feed-forward layers do).

    Raises:
        MetricFailure: K singular (two sequences with identical codes).
    """
    sign, logdet = np.linalg.slogdet(ctx.run_pass("sum_output").naswot_kernel)
    if sign == 0:
        raise MetricFailure("NASWOT kernel is singular")
    return check_finite(logdet, "naswot")
