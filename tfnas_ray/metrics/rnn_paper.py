"""The paper's RNN columns (Serianni & Kalita 2023), computed as the authors computed them.

../shared/PAPER_METRICS.md describes the protocol; in short, on the NAS-Bench-NLP model
in eval mode and one PTB minibatch x (70 × 50):
  1. Jacobian pass: forward, backward of Σy → J = ∂(Σy)/∂e, e the embedding output;
  2. K pass: forward only;
  3. three noise passes on e + a·var·ε, a ∈ {0.1, 10, 100} → J_a;
  4. synflow pass: zero the gradients, forward, backward of ½‖y‖².
Every pass records h_prev_0 entering each step (gradient retained) and the binary
codes of every activation node's output. One `paper` pass runs all four and feeds
every paper column; `hidden_cov*` alone needs only a gradient-free forward through as
many layers as its layer, which `hidden_states` runs.

Shapes: T = 70 steps, B = 50 samples, E = 400, H = hidden size of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tfnas_ray.metrics import (
    Direction,
    MetricContext,
    MetricFailure,
    check_finite,
    register_metric,
    register_pass,
)
from tfnas_ray.metrics.common import (
    correlation_matrix,
    eigen_score,
    hamming_kernel_update,
    log_abs_det,
)
from tfnas_ray.metrics import rnn_batch  # noqa: F401 — registers the nb-nlp batch
from tfnas_ray.spaces.nasbench_nlp.model import count_parameters

SPACE = "nb-nlp"
NOISE_SCALES = (0.1, 10.0, 100.0)
HIDDEN_COV_LAYER = {"hidden_cov": 1, "hidden_cov_l2": 2, "hidden_cov_l3": 3}
PAPER_PROTOCOL = frozenset(
    {
        "activation_distance",
        "synaptic_saliency",
        "jacobian_cosine",
        "jacobian_noise",
        "jacobian_noise_cosine",
        "jacobian_more_noise",
        "jacobian_more_noise_cosine",
        "hidden_saliency",
        "jacob_cov",
    }
)


class _StepRecorder:
    """Collects h_prev_0 per (layer, step) and, optionally, activation codes into K."""

    def __init__(self, kernel: torch.Tensor | None = None):
        self.kernel = kernel  # (B, B) float64, shared across passes, or None
        self.states: list[tuple[int, int, torch.Tensor]] = []

    def hidden(self, layer: int, step: int, h: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            if h.requires_grad:
                h.retain_grad()
            else:  # the zero initial state: make it a leaf that receives a gradient
                h = h.detach().requires_grad_()
        self.states.append((layer, step, h))
        return h

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        if self.kernel is not None:
            hamming_kernel_update(self.kernel, output)

    def layer_states(self, layer: int) -> np.ndarray:
        """(B, H, T) stack of the states of one layer (0-based), as float64."""
        states = [h.detach() for l, _, h in self.states if l == layer]
        return torch.stack(states, dim=-1).double().cpu().numpy()

    def hidden_saliency(self) -> float:
        """Σ |h ⊙ ∂h| over the recorded states (no gradient counts 0)."""
        total = 0.0
        for _, _, h in self.states:
            if h.grad is not None:
                total += float((h.detach() * h.grad).abs().sum())
        return total


def hidden_covariance(states: np.ndarray, *, what: str = "hidden covariance") -> float:
    """−Σ[log(λ+k) + 1/(λ+k)] over the eigenvalues of the hidden units' correlation.

    Args:
        states: (B, H, T) hidden states of one layer. Each hidden unit is a variable
            observed over the B·T (sample, step) pairs.

    Returns:
        The score (higher predicts lower trained loss in the paper: τ ≈ −0.37 vs loss).

    Raises:
        MetricFailure: a constant unit (undefined correlation) or a non-finite value.
    """
    B, H, T = states.shape
    units = np.transpose(states, (1, 0, 2)).reshape(H, B * T)  # (H, B·T)
    return eigen_score(correlation_matrix(units, what=what), what=what)


def jacobian_rows(jacobian: np.ndarray) -> np.ndarray:
    """(T, B, E) -> (B, T·E): one row per sample (batch column)."""
    T, B, E = jacobian.shape
    return np.transpose(jacobian, (1, 0, 2)).reshape(B, T * E).astype(np.float64)


def jacobian_covariance_score(jacobian: np.ndarray) -> float:
    """Mellor et al.'s Jacobian score: −Σ[log(λ+k)+1/(λ+k)] of the samples' correlation."""
    rows = jacobian_rows(jacobian)
    return eigen_score(correlation_matrix(rows, what="Jacobian"), what="Jacobian covariance")


def jacobian_cosine_score(jacobian: np.ndarray) -> float:
    """1 − (Σ_ij |M_ij|^(1/20) / 2) / (B² − B), M = cosine similarities minus I."""
    rows = jacobian_rows(jacobian)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise MetricFailure("Jacobian cosine: a sample's Jacobian is all zeros")
    unit = rows / norms
    similarity = unit @ unit.T
    # The diagonal is exactly zero (M = cos − I); round-off left there would count
    # as |1e-16|^(1/20) ≈ 0.16 per sample.
    np.fill_diagonal(similarity, 0.0)
    B = rows.shape[0]
    score = 1.0 - (np.sum(np.abs(similarity) ** (1.0 / 20)) / 2.0) / (B * B - B)
    return check_finite(score, "Jacobian cosine")


@dataclass
class PaperPasses:
    """What the four passes of the protocol leave for the columns."""

    states: dict[int, np.ndarray]  # layer (1-based) -> (B, H, T) from the Jacobian pass
    jacobian: np.ndarray  # (T, B, E)
    noisy_jacobians: dict[float, np.ndarray]  # a -> (T, B, E)
    kernel: np.ndarray  # (B, B): activation codes of passes 1 and 2
    synaptic_saliency: float
    hidden_saliency: float
    cache: dict = field(default_factory=dict)  # memoised S(J_a), cosine(J_a)


@register_pass(SPACE, "hidden_states")
def hidden_states_pass(ctx: MetricContext) -> dict[int, np.ndarray]:
    """A gradient-free eval forward through as many layers as the wanted hidden_cov
    metrics need; returns layer (1-based) -> (B, H, T) states."""
    depth = max([HIDDEN_COV_LAYER[m] for m in ctx.wanted if m in HIDDEN_COV_LAYER] or [1])
    model = ctx.model().eval()
    recorder = _StepRecorder()
    with torch.no_grad():
        model(ctx.batch.tokens.to(ctx.device), num_layers=depth, recorder=recorder)
    return {layer + 1: recorder.layer_states(layer) for layer in range(depth)}


@register_pass(SPACE, "paper")
def paper_pass(ctx: MetricContext) -> PaperPasses:
    """The authors' four passes, in their order, on one model (see module docstring)."""
    model = ctx.model().eval()
    tokens = ctx.batch.tokens.to(ctx.device)
    B = tokens.shape[1]
    kernel = torch.zeros(B, B, dtype=torch.float64, device=ctx.device)

    # 1. Jacobian pass: J = ∂(Σy)/∂e.
    first = _StepRecorder(kernel)
    embedded = model.embed(tokens)
    embedded.retain_grad()
    y, _ = model.forward_embedded(embedded, recorder=first)
    y.backward(torch.ones_like(y))
    jacobian = embedded.grad.detach().cpu().numpy()
    hidden_saliency = first.hidden_saliency()
    states = {layer + 1: first.layer_states(layer) for layer in range(len(model.layers))}

    # 2. K pass: forward only; its codes join the first pass's in K.
    with torch.no_grad():
        second = _StepRecorder(kernel)
        clean = model.embed(tokens)
        model.forward_embedded(clean, recorder=second)

    # 3. Noise passes: e₂ + a·var·ε, ε the first numpy normal draw after seeding.
    clean_np = clean.detach().cpu().numpy()
    variance = np.var(clean_np, axis=1, keepdims=True)
    noise = np.random.RandomState(ctx.seed).normal(size=clean_np.shape)
    noisy_jacobians = {}
    for scale in NOISE_SCALES:
        inputs = torch.tensor(
            (clean_np + scale * variance * noise).astype(np.float32), device=ctx.device, requires_grad=True
        )
        recorder = _StepRecorder()
        y, _ = model.forward_embedded(inputs, recorder=recorder)
        y.backward(torch.ones_like(y))
        noisy_jacobians[scale] = inputs.grad.detach().cpu().numpy()
        hidden_saliency += recorder.hidden_saliency()

    # 4. Synflow pass: fresh gradients, backward of ½‖y‖² (gradient y).
    model.zero_grad(set_to_none=True)
    fourth = _StepRecorder()
    y, _ = model(tokens, recorder=fourth)
    y.backward(y.detach())
    hidden_saliency += fourth.hidden_saliency()
    synaptic = 0.0
    for layer in model.layers:
        for linear in layer.linears.values():
            # The authors' sum skips each node's first weight (PAPER_METRICS.md).
            for weight in list(linear.weights)[1:]:
                if weight.grad is not None:
                    synaptic += float((weight.detach() * weight.grad).abs().sum())
    decoder = model.decoder.weight  # tied to the embedding: its gradient is the embedding's
    if decoder.grad is not None:
        synaptic += float((decoder.detach().double() * decoder.grad.double()).abs().sum())

    return PaperPasses(
        states=states,
        jacobian=jacobian,
        noisy_jacobians=noisy_jacobians,
        kernel=kernel.cpu().numpy(),
        synaptic_saliency=synaptic,
        hidden_saliency=hidden_saliency,
    )


def _states(ctx: MetricContext, layer: int) -> np.ndarray:
    # When the full protocol runs anyway, its Jacobian pass already holds the states
    # (eval mode: identical to a gradient-free forward), so no extra pass is needed.
    if ctx.wanted & PAPER_PROTOCOL:
        return ctx.run_pass("paper").states[layer]
    return ctx.run_pass("hidden_states")[layer]


def _register_hidden_cov(name: str, layer: int) -> None:
    @register_metric(
        name,
        space=SPACE,
        direction=Direction.HIGHER,
        summary=f"layer-{layer} hidden covariance: −Σ[log(λ+k)+1/(λ+k)] of corr(h) over units (Serianni & Kalita 2023)",
        needs=("hidden_states",),
        cost=f"1 forward, {layer} layer(s), no gradient",
    )
    def metric(ctx: MetricContext) -> float:
        return hidden_covariance(_states(ctx, layer), what=f"layer-{layer} hidden covariance")

    metric.__doc__ = (
        f"Hidden covariance of layer {layer}: h_prev_0 entering each of the T steps, "
        "units as variables over B·T observations, C = corr, score −Σ[log(λ+k)+1/(λ+k)], k = 1e-5."
    )


for _name, _layer in HIDDEN_COV_LAYER.items():
    _register_hidden_cov(_name, _layer)


def _paper(ctx: MetricContext) -> PaperPasses:
    return ctx.run_pass("paper")


def _cached(passes: PaperPasses, key, compute):
    if key not in passes.cache:
        passes.cache[key] = compute()
    return passes.cache[key]


def _jacobian_scores(passes: PaperPasses, kind: str) -> dict:
    """S(J) and S(J_a) for every a, S the covariance or cosine score."""
    score = jacobian_covariance_score if kind == "cov" else jacobian_cosine_score
    scores = {0.0: _cached(passes, (kind, 0.0), lambda: score(passes.jacobian))}
    for a, j in passes.noisy_jacobians.items():
        scores[a] = _cached(passes, (kind, a), lambda j=j: score(j))
    return scores


@register_metric(
    "jacob_cov",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="Jacobian covariance: −Σ[log(λ+k)+1/(λ+k)] of corr over samples of ∂(Σy)/∂e (Mellor et al. 2021)",
    needs=("paper",),
    cost="paper protocol (6 forward, 5 backward)",
)
def jacob_cov(ctx: MetricContext) -> float:
    """Rows of J (B, T·E), one per sample; their correlation's eigen score. The same as
    the paper's "Jacobian Covariance" column and as the standard jacob_cov."""
    return _jacobian_scores(_paper(ctx), "cov")[0.0]


@register_metric(
    "jacobian_cosine",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="Jacobian cosine: 1 − mean over sample pairs of |cos|^(1/20) / 2 (Serianni & Kalita 2023)",
    needs=("paper",),
    cost="paper protocol",
)
def jacobian_cosine(ctx: MetricContext) -> float:
    """1 − (Σ_ij |M_ij|^(1/20) / 2) / (B² − B), M the rows' cosine similarity minus I."""
    return _jacobian_scores(_paper(ctx), "cos")[0.0]


def _register_noise(name: str, kind: str, combine: str) -> None:
    summary = {
        "large": "1 − |S(J) − S(J₁₀)|, J₁₀ the Jacobian at the embedding + 10·var·noise",
        "more": "S(J)·S(J₀.₁)·S(J₁₀)·S(J₁₀₀)",
    }[combine] + (" (S = Jacobian covariance)" if kind == "cov" else " (S = Jacobian cosine)")

    @register_metric(name, space=SPACE, direction=Direction.HIGHER, summary=summary, needs=("paper",), cost="paper protocol")
    def metric(ctx: MetricContext) -> float:
        scores = _jacobian_scores(_paper(ctx), kind)
        if combine == "large":
            return 1.0 - abs(scores[0.0] - scores[10.0])
        return scores[0.0] * scores[0.1] * scores[10.0] * scores[100.0]

    metric.__doc__ = summary


_register_noise("jacobian_noise", "cov", "large")
_register_noise("jacobian_noise_cosine", "cos", "large")
_register_noise("jacobian_more_noise", "cov", "more")
_register_noise("jacobian_more_noise_cosine", "cos", "more")


@register_metric(
    "activation_distance",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="activation distance: log|det K| of activation codes over passes 1 and 2 (the paper's NASWOT)",
    needs=("paper",),
    cost="paper protocol",
)
def activation_distance(ctx: MetricContext) -> float:
    """K = Σ c cᵀ + (1−c)(1−c)ᵀ over every activation node, step and layer of the
    Jacobian and K passes (so twice one pass's K: log|det| is naswot + B·log 2)."""
    return log_abs_det(_paper(ctx).kernel, what="activation distance")


@register_metric(
    "synaptic_saliency",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="the paper's synflow: Σ|W⊙∂W| after backward of ½‖y‖² on real data (not Tanaka et al.'s)",
    needs=("paper",),
    cost="paper protocol",
)
def synaptic_saliency(ctx: MetricContext) -> float:
    """Σ|W ⊙ ∂W| over each linear node's weights but its first, plus the tied decoder
    (double precision), with gradients of the synflow pass alone. Unlike standard
    synflow: real inputs, real weights (not |θ|), y.backward(y)."""
    return _paper(ctx).synaptic_saliency


@register_metric(
    "hidden_saliency",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="hidden synaptic saliency: Σ|h⊙∂h| over the hidden states of every pass (Serianni & Kalita 2023)",
    needs=("paper",),
    cost="paper protocol",
)
def hidden_saliency(ctx: MetricContext) -> float:
    """Σ over passes 1, 2, 3 (×3), 4 of Σ|h ⊙ ∂h|, h = h_prev_0 entering each step of
    each layer, ∂h what that pass's own backward left (none in pass 2)."""
    return _paper(ctx).hidden_saliency


@register_metric(
    "params",
    space=SPACE,
    direction=Direction.HIGHER,
    summary="number of parameters (tied weights once), as NAS-Bench-NLP's num_params",
    cost="none (counted from the recipe)",
)
def params(ctx: MetricContext) -> float:
    """Every parameter of the model once; equals the published num_params."""
    from tfnas_ray.spaces import get_space

    options = {**getattr(ctx.batch, "model_options", {}), **ctx.options}
    return float(get_space(SPACE).count_parameters(ctx.spec, **options))
