"""Standard zero-cost proxies for the NAS-Bench-NLP RNN space, as zero-cost-nas defines them.

The proxies of Abdelfattah et al. 2021 ("Zero-Cost Proxies for Lightweight NAS",
github.com/SamsungLabs/zero-cost-nas, also in NASLib) — grad_norm, snip, grasp, fisher,
synflow — and NASWOT (Mellor et al. 2021), adapted from image classifiers to the
NAS-Bench-NLP language model:

  * the loss is next-token prediction: L = mean over the T·B tokens of the
    cross-entropy of `model.decode(output)` (the tied decoder) against `batch.targets`;
  * every parameter tensor of the model counts, once: each linear node's per-input
    weights and its bias in every layer, the embedding (which *is* the decoder weight:
    tied, so its gradient has the lookup's and the decoder's parts) and the decoder
    bias. zero-cost-nas scores only Conv2d/Linear weights; in an RNN that would drop
    the biases and the embedding/decoder matrix — often most of the parameters —
    without a word, so we keep them all;
  * the model runs in eval mode (dropout and DropConnect off) from a zero hidden state,
    so a score is a deterministic function of the architecture and the seed, as in the
    paper's own protocol (zero-cost-nas has no dropout to switch off; it removes
    BatchNorm for the same reason);
  * where zero-cost-nas hooks a layer's output (fisher) or a ReLU (naswot), we read
    every *activation node*'s output at every step of every layer through the cell's
    recorder protocol (`recorder.activation(layer, step, node, output)`).

Passes: `loss_grad` (one forward + one backward of L, shared by grad_norm, snip and
fisher), `grasp` (one forward, a backward with create_graph, a Hessian-vector
product), `synflow` (one float64 forward + backward on a |θ| copy), `naswot` (one
forward, no gradient), and `probe`: the model as the generic metrics read any LM
(metrics/capability.py: latency, peak memory, the last hidden state's covariance).

Every proxy is also a pure function of (model, tokens, targets) — `grad_norm_score`,
`snip_score`, `grasp_score`, `fisher_score`, `synflow_score`, `naswot_score` — that
scores a private eval-mode copy and leaves its argument untouched.

Shapes: T steps, B samples, E = emsize, H = hidden size of a layer, V = vocabulary.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfnas_ray.metrics import (
    Direction,
    MetricContext,
    MetricFailure,
    check_finite,
    register_metric,
    register_pass,
)
from tfnas_ray.metrics import rnn_batch  # noqa: F401 — registers the nb-nlp batch
from tfnas_ray.metrics.common import grasp_saliency, hamming_kernel_update, log_abs_det, saliency_sum
from tfnas_ray.spaces.nasbench_nlp.model import NasBenchNlpLM

SPACE = "nb-nlp"


# --------------------------------------------------------------------------- helpers


def _eval_copy(model: NasBenchNlpLM) -> NasBenchNlpLM:
    """A private eval-mode copy: the caller's model (its mode, parameters, .grad) is
    never touched. deepcopy keeps the embedding and decoder weight one tensor."""
    return copy.deepcopy(model).eval()


def _next_token_loss(model: NasBenchNlpLM, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the tied decoder's logits (T·B, V) against targets (T, B)."""
    logits = model.decode(output)  # (T·B, V); output rows are (t, b) in row-major order
    loss = F.cross_entropy(logits, targets.reshape(-1).to(logits.device))
    if not torch.isfinite(loss):
        raise MetricFailure(f"the next-token cross-entropy is {float(loss.detach())}")
    return loss


def _parameters(model: NasBenchNlpLM) -> tuple[list[str], list[torch.nn.Parameter]]:
    """Every parameter tensor once (named_parameters drops the tied decoder.weight)."""
    names, params = zip(*model.named_parameters())
    return list(names), list(params)


class _ActivationCollector:
    """Keeps every activation node's output (B, H), per (layer, node), in step order,
    so that the loss can be differentiated with respect to them."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[int, str], list[torch.Tensor]] = {}  # (layer, node) -> T tensors

    def hidden(self, layer: int, step: int, h: torch.Tensor) -> torch.Tensor:
        return h

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        self.outputs.setdefault((layer, node), []).append(output)


class _CodeKernel:
    """Accumulates the NASWOT kernel K (B, B) from every activation node's output."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.kernel = torch.zeros(batch_size, batch_size, dtype=torch.float64, device=device)

    def hidden(self, layer: int, step: int, h: torch.Tensor) -> torch.Tensor:
        return h

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        hamming_kernel_update(self.kernel, output)


# --------------------------------------------------------------- loss_grad: one backward


@dataclass(frozen=True)
class LossGradients:
    """What one forward + backward of the next-token loss L leaves for grad_norm, snip
    and fisher.

    Attributes:
        names: parameter names, every parameter once (model.named_parameters()).
        weights: the parameters' values (detached), same order.
        gradients: ∂L/∂W per parameter, same order; None where W does not reach L (a
            linear node no output depends on): its gradient is zero.
        fisher_terms: (layer, activation node) -> (H,) float64: ½·mean_b(Σ_t a⊙∂L/∂a)²
            per hidden unit; an activation that does not reach L gives zeros.
        loss: the value of L.
    """

    names: tuple[str, ...]
    weights: tuple[torch.Tensor, ...]
    gradients: tuple[torch.Tensor | None, ...]
    fisher_terms: dict[tuple[int, str], torch.Tensor]
    loss: float


def loss_gradients(model: NasBenchNlpLM, tokens: torch.Tensor, targets: torch.Tensor) -> LossGradients:
    """One eval forward of `tokens` (T, B) from a zero state and one backward of
    L = mean cross-entropy(decode(output), targets), taking ∂L/∂W for every parameter
    and ∂L/∂a for every activation node's output a (B, H) at every step of every layer.

    Uses torch.autograd.grad, so no .grad is written anywhere; runs on a private copy.

    Raises:
        MetricFailure: L is not finite.
    """
    model = _eval_copy(model)
    device = model.encoder.weight.device
    names, params = _parameters(model)
    collector = _ActivationCollector()
    output, _ = model(tokens.to(device), recorder=collector)
    loss = _next_token_loss(model, output, targets)

    keys = list(collector.outputs)
    activations = [a for key in keys for a in collector.outputs[key]]
    grads = torch.autograd.grad(loss, params + activations, allow_unused=True)
    param_grads, activation_grads = grads[: len(params)], grads[len(params):]

    fisher_terms: dict[tuple[int, str], torch.Tensor] = {}
    position = 0
    for key in keys:
        steps = collector.outputs[key]
        g_nk = torch.zeros_like(steps[0], dtype=torch.float64)  # (B, H): Σ_t a ⊙ ∂L/∂a
        for a, grad in zip(steps, activation_grads[position : position + len(steps)]):
            if grad is not None:  # None: this step's activation does not reach L
                g_nk += (a.detach() * grad).double()
        position += len(steps)
        fisher_terms[key] = 0.5 * g_nk.pow(2).mean(dim=0)  # (H,)

    return LossGradients(
        names=tuple(names),
        weights=tuple(p.detach() for p in params),
        gradients=tuple(g.detach() if g is not None else None for g in param_grads),
        fisher_terms=fisher_terms,
        loss=float(loss.detach()),
    )


def grad_norm_from(result: LossGradients) -> float:
    """Σ over parameter tensors of ‖∂L/∂W‖_F (a parameter without gradient adds 0)."""
    total = 0.0
    for grad in result.gradients:
        if grad is not None:
            total += float(grad.double().norm())
    return check_finite(total, "grad_norm")


def snip_from(result: LossGradients) -> float:
    """Σ over every parameter element of |W ⊙ ∂L/∂W|."""
    return check_finite(saliency_sum(result.weights, result.gradients), "snip")


def fisher_from(result: LossGradients) -> float:
    """Σ over layers, activation nodes and hidden units of ½·mean_b(Σ_t a⊙∂L/∂a)²."""
    total = sum(float(term.sum()) for term in result.fisher_terms.values())
    return check_finite(total, "fisher")


def grad_norm_score(model: NasBenchNlpLM, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """grad_norm (Abdelfattah et al. 2021): Σ_W ‖∂L/∂W‖₂ (Frobenius), over **every**
    parameter tensor of the model once — linear weights per input, biases, the tied
    embedding/decoder weight, the decoder bias. Higher is better (as declared there).

    L = mean next-token cross-entropy of the tied decoder's logits on tokens (T, B)
    against targets (T, B); eval mode, zero initial state. zero-cost-nas sums only
    Conv/Linear weights; an RNN's biases and embedding would vanish that way.
    """
    return grad_norm_from(loss_gradients(model, tokens, targets))


def snip_score(model: NasBenchNlpLM, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """SNIP (Lee et al. 2019, as in zero-cost-nas): Σ|W ⊙ ∂L/∂W| over every element of
    **every** parameter tensor (weights, biases, tied embedding/decoder, decoder bias),
    L the mean next-token cross-entropy (see `grad_norm_score`). Higher is better.

    zero-cost-nas takes ∂L/∂m of a mask m = 1 multiplying each weight, which is W⊙∂L/∂W.
    """
    return snip_from(loss_gradients(model, tokens, targets))


def fisher_score(model: NasBenchNlpLM, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """Fisher (Theis et al. 2018; Turner et al. 2020; as in zero-cost-nas), per
    activation node n of each layer: for its outputs a_t (B, H) at the T steps,
    g = Σ_t a_t ⊙ ∂L/∂a_t (B, H); score = Σ_layers Σ_n Σ_units ½·mean_b g².
    Higher is better.

    zero-cost-nas sums a⊙∂L/∂a over the non-batch, non-channel dimensions (here: the
    steps, the dimension along which an RNN shares its weights), squares, averages over
    the batch, halves, and sums over channels (here: hidden units). It reads the outputs
    of Conv/Linear layers; the cell's recorder gives us its activation nodes' outputs
    instead (the tensors NASWOT codes), so the activations are those. The parameters
    enter only through the activations (every one of them that reaches L).
    """
    return fisher_from(loss_gradients(model, tokens, targets))


# -------------------------------------------------------------------------------- grasp


def grasp_score(model: NasBenchNlpLM, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """GraSP (Wang et al. 2020, as in zero-cost-nas): −Σ W ⊙ (H g) over **every**
    parameter tensor (weights, biases, tied embedding/decoder, decoder bias), with
    g = ∂L/∂W (detached), H the Hessian of L, L the mean next-token cross-entropy
    (see `grad_norm_score`). Higher is better, as zero-cost-nas ranks it.

    zero-cost-nas runs a first forward for g, then a second forward with create_graph,
    z = Σ g·∂L/∂W, Hg = ∂z/∂W. In eval mode on one whole batch the second forward
    computes the same graph as the first, so this runs one forward with create_graph
    and takes both g and Hg from it — the same numbers, one forward fewer.

    Raises:
        MetricFailure: L or the score is not finite.
    """
    model = _eval_copy(model)
    device = model.encoder.weight.device
    _, params = _parameters(model)
    output, _ = model(tokens.to(device))
    loss = _next_token_loss(model, output, targets)
    return check_finite(grasp_saliency(loss, params), "grasp")


# ------------------------------------------------------------------------------ synflow


def synflow_score(model: NasBenchNlpLM, steps: int) -> float:
    """SynFlow (Tanaka et al. 2020, as in zero-cost-nas): on a float64 copy with every
    parameter replaced by |θ|, feed an all-ones embedded input (steps, 1, E) — the
    embedding lookup is bypassed (`forward_embedded`), as synflow feeds ones to the
    first layer — from a zero state, R = Σ of the logits `decode(output)` (steps, V);
    score = Σ|θ ⊙ ∂R/∂θ| over **every** parameter. Higher is better.

    The decoder is part of R on purpose: it is the model's last layer, and its weight
    is the tied embedding, which the bypassed lookup would otherwise leave without a
    gradient. The decoder bias starts at 0, so it adds 0 at initialisation.

    Raises:
        MetricFailure: R or the score overflows double precision (unbounded
            activations such as leaky ReLU can grow geometrically over the steps).
    """
    model = _eval_copy(model).double()  # .double() keeps the Parameter objects: still tied
    with torch.no_grad():
        for param in model.parameters():
            param.abs_()
    _, params = _parameters(model)
    ones = torch.ones(steps, 1, model.config.emsize, dtype=torch.float64, device=params[0].device)
    output, _ = model.forward_embedded(ones)
    total_output = model.decode(output).sum()
    if not torch.isfinite(total_output):
        raise MetricFailure(f"synflow: R = Σ logits is {float(total_output.detach())} in float64")
    grads = torch.autograd.grad(total_output, params, allow_unused=True)
    return check_finite(saliency_sum(params, grads), "synflow")


# ------------------------------------------------------------------------------- naswot


def naswot_kernel(model: NasBenchNlpLM, tokens: torch.Tensor):
    """K (B, B) float64 = Σ over every activation node, step and layer of
    c cᵀ + (1−c)(1−c)ᵀ, c = 1[output > 0] per sample (B, H), after one gradient-free
    eval forward of tokens (T, B) from a zero state."""
    model = _eval_copy(model)
    device = model.encoder.weight.device
    codes = _CodeKernel(tokens.shape[1], device)
    with torch.no_grad():
        model(tokens.to(device), recorder=codes)
    return codes.kernel.cpu().numpy()


def naswot_score(model: NasBenchNlpLM, tokens: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): log|det K|, K = `naswot_kernel` (one pass). Higher
    is better. Sigmoid outputs are always positive, so their codes are all ones.

    The paper's `activation_distance` accumulates the same K over two identical eval
    passes, i.e. 2K, so activation_distance = naswot + B·log 2 exactly.

    Raises:
        MetricFailure: K is singular (two samples with identical codes everywhere).
    """
    return log_abs_det(naswot_kernel(model, tokens), what="naswot")


# ----------------------------------------------------------------- passes and metrics


@register_pass(SPACE, "loss_grad")
def loss_grad_pass(ctx: MetricContext) -> LossGradients:
    """One forward + backward of the next-token loss, shared by grad_norm, snip, fisher."""
    return loss_gradients(ctx.model(), ctx.batch.tokens, ctx.batch.targets)


@register_pass(SPACE, "grasp")
def grasp_pass(ctx: MetricContext) -> float:
    """One forward with create_graph, two gradients (g, then H g)."""
    return grasp_score(ctx.model(), ctx.batch.tokens, ctx.batch.targets)


@register_pass(SPACE, "synflow")
def synflow_pass(ctx: MetricContext) -> float:
    """One float64 forward + backward on |θ| with all-ones input of the batch's length."""
    return synflow_score(ctx.model(), steps=ctx.batch.tokens.shape[0])


@register_pass(SPACE, "naswot")
def naswot_pass(ctx: MetricContext) -> float:
    """One gradient-free forward, activation codes into K — or, when a paper column
    runs the paper's passes anyway, their K halved: it is two identical eval passes'
    codes, so K/2 is exactly (integer counts) this forward's K."""
    from tfnas_ray.metrics.rnn_paper import PAPER_PROTOCOL

    if ctx.wanted & PAPER_PROTOCOL:
        return log_abs_det(ctx.run_pass("paper").kernel / 2, what="naswot")
    return naswot_score(ctx.model(), ctx.batch.tokens)


class TokenLM(nn.Module):
    """An nb-nlp language model as the generic metrics probe a model: token ids (B, T),
    batch-major, in; next-token logits (B, T, V) out, through the tied decoder, from a
    zero hidden state. The LM itself runs time-major (T, B) with a hidden state.

    Returns a `capability.LMOutput` whose `hidden_states` holds the last layer's output
    (B, T, E) (its dropout is off in eval mode, as every probe runs)."""

    def __init__(self, lm: NasBenchNlpLM):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor):
        from tfnas_ray.metrics.capability import LMOutput

        B, T = input_ids.shape
        output, _ = self.lm(input_ids.T)  # (T·B, E), rows time-major
        logits = self.lm.decode(output)  # (T·B, V)
        return LMOutput(
            logits=logits.reshape(T, B, -1).transpose(0, 1),  # (B, T, V)
            hidden_states=(output.reshape(T, B, -1).transpose(0, 1),),  # (B, T, E)
        )


@register_pass(SPACE, "probe")
def probe_pass(ctx: MetricContext):
    """A `Probe` of the architecture's LM (built under its seed, wrapped by `TokenLM`) on
    the metric batch read batch-major (B, T), causal-LM task: what the generic metrics read."""
    from tfnas_ray.metrics.capability import Probe

    return Probe(TokenLM(ctx.model()), ctx.batch.tokens.T.contiguous(), task="causal-lm", device=ctx.device)


_LOSS = "nb-nlp: L = mean next-token cross-entropy through the tied decoder"
_EVERY = "every parameter tensor once"


@register_metric(
    "grad_norm",
    space=SPACE,
    reads=("lm_loss",),
    direction=Direction.HIGHER,
    summary=f"Σ_W ‖∂L/∂W‖₂ over {_EVERY} (Abdelfattah et al. 2021; {_LOSS})",
    needs=("loss_grad",),
    cost="forward+backward (shared with snip, fisher)",
)
def grad_norm(ctx: MetricContext) -> float:
    """Σ over every parameter tensor (weights, biases, tied embedding/decoder) of
    ‖∂L/∂W‖_F; see `grad_norm_score`."""
    return grad_norm_from(ctx.run_pass("loss_grad"))


@register_metric(
    "snip",
    space=SPACE,
    reads=("lm_loss",),
    direction=Direction.HIGHER,
    summary=f"Σ|W⊙∂L/∂W| over {_EVERY} (Lee et al. 2019; {_LOSS})",
    needs=("loss_grad",),
    cost="forward+backward (shared with grad_norm, fisher)",
)
def snip(ctx: MetricContext) -> float:
    """Σ|W ⊙ ∂L/∂W| over every parameter (weights, biases, tied embedding/decoder);
    see `snip_score`."""
    return snip_from(ctx.run_pass("loss_grad"))


@register_metric(
    "fisher",
    space=SPACE,
    reads=("lm_loss", "recurrent_steps", "activations"),
    direction=Direction.HIGHER,
    summary=f"Σ_nodes Σ_units ½·mean_b(Σ_t a⊙∂L/∂a)² over activation outputs a (Turner et al. 2020; {_LOSS})",
    needs=("loss_grad",),
    cost="forward+backward (shared with grad_norm, snip)",
)
def fisher(ctx: MetricContext) -> float:
    """Per activation node of every layer, ½·mean over samples of (Σ_t a⊙∂L/∂a)²,
    summed over hidden units, nodes and layers; see `fisher_score`."""
    return fisher_from(ctx.run_pass("loss_grad"))


@register_metric(
    "grasp",
    space=SPACE,
    reads=("lm_loss",),
    direction=Direction.HIGHER,
    summary=f"−Σ W⊙(H g), g = ∂L/∂W, over {_EVERY} (Wang et al. 2020, as zero-cost-nas ranks it; {_LOSS})",
    needs=("grasp",),
    cost="forward + backward with create_graph + Hessian-vector product",
)
def grasp(ctx: MetricContext) -> float:
    """−Σ W ⊙ Hg over every parameter (weights, biases, tied embedding/decoder);
    see `grasp_score`."""
    return check_finite(ctx.run_pass("grasp"), "grasp")


@register_metric(
    "synflow",
    space=SPACE,
    reads=("module", "input_embeddings"),
    direction=Direction.HIGHER,
    summary="Σ|θ⊙∂R/∂θ| with |θ|, all-ones input, float64, R = Σ output (Tanaka et al. 2020; nb-nlp: R = Σ tied-decoder logits)",
    needs=("synflow",),
    cost="forward+backward (float64, one sequence)",
)
def synflow(ctx: MetricContext) -> float:
    """Σ|θ ⊙ ∂R/∂θ| over every parameter of a |θ| float64 copy, ones(T, 1, E) fed past
    the embedding, R = Σ logits (the tied decoder included); see `synflow_score`."""
    return check_finite(ctx.run_pass("synflow"), "synflow")


@register_metric(
    "naswot",
    space=SPACE,
    reads=("recurrent_steps", "activations"),
    direction=Direction.HIGHER,
    summary="log|det K|, K = Hamming agreement of activation codes between samples (Mellor et al. 2021; one pass)",
    needs=("naswot",),
    cost="1 forward, no gradient",
)
def naswot(ctx: MetricContext) -> float:
    """log|det K| of the activation codes of every activation node, step and layer of
    one eval pass; equals activation_distance − B·log 2. See `naswot_score`."""
    return check_finite(ctx.run_pass("naswot"), "naswot")

