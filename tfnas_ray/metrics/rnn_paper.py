"""The paper's RNN columns (Serianni & Kalita 2023), computed as the authors computed them.

../shared/PAPER_METRICS.md describes the protocol; in short, on the NAS-Bench-NLP model
in eval mode and one PTB minibatch x (70 × 50):
  1. Jacobian pass: forward, backward of Σy → J = ∂(Σy)/∂e, e the embedding output;
  2. K pass: forward only;
  3. three noise passes on e + a·var·ε, a ∈ {0.1, 10, 100} → J_a;
  4. synflow pass: zero the gradients, forward, backward of ½‖y‖².
Every pass records h_prev_0 entering each step (gradient retained) and the binary
codes of every activation node's output. One `paper` pass computes what all four
leave (`paper_passes`: in eval mode passes 1, 2 and 4 are one forward; gradients go to
the inputs only) and feeds every paper column; `hidden_cov*` alone needs only a
gradient-free forward through as many layers as its layer, which `hidden_states` runs
on just those layers.

Shapes: T = 70 steps, B = 50 samples, E = 400, H = hidden size of a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

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
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_nlp import PTB_VOCABULARY
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig, initial_layers
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe

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
    """Collects h_prev_0 per (layer, step) and, optionally, activation codes into K
    (one pass at a time, gradients retained on the states: the literal protocol)."""

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

    def layer_states(self, layer: int, rows: slice = slice(None)) -> np.ndarray:
        """(B, H, T) stack of the states of one layer (0-based), as float64."""
        states = [h.detach()[rows] for l, _, h in self.states if l == layer]
        return torch.stack(states, dim=-1).double().cpu().numpy()

    def hidden_saliency(self) -> float:
        """Σ |h ⊙ ∂h| over the recorded states (no gradient counts 0)."""
        total = 0.0
        for _, _, h in self.states:
            if h.grad is not None:
                total += float((h.detach() * h.grad).abs().sum())
        return total


# Activation codes are flushed into K every this many (B, H) outputs: one matmul per
# chunk instead of one per output, with a bounded buffer.
_CODE_CHUNK = 64


class _GraphRecorder(_StepRecorder):
    """Records, inside one forward of column blocks of B samples, what the protocol's
    columns need from the backward(s) run on it — through tensor hooks, so autograd
    hands over each gradient once and no gradient the size of a parameter is formed:

      * Σ|h ⊙ ∂h| over every recorded h_prev_0, every backward (the hidden saliency);
      * ∂W of every linear input, from the rows `weight_rows` of the backward that sets
        them (pass 4's gradient alone, as synaptic saliency wants), as Σ over rows of
        ∂(projection)ᵀ·(its input) per fused matmul (`RecurrentLayer.readers`);
      * the activation codes of rows `code_rows` into K (float64, exact integer counts).
    """

    def __init__(self, batch_size: int, code_rows: slice | None, device: torch.device):
        super().__init__()
        self.rows = batch_size  # rows of one step (all blocks)
        self.code_rows = code_rows
        self.weight_rows: slice | None = None  # set while the synflow backward runs
        self.kernel = torch.zeros(
            (code_rows.stop - code_rows.start,) * 2 if code_rows else (0, 0), dtype=torch.float64, device=device
        )
        # Σ|h ⊙ ∂h| in float64 on the device (no host sync per state on a GPU); each
        # state's float32 sum is added in double, as a Python float sum would.
        self._saliency = torch.zeros((), dtype=torch.float64, device=device)
        self._codes: list[torch.Tensor] = []  # pending codes, (B, H) bool
        # (layer, source) -> [(∂projection rows, input rows)] of the synflow rows
        self._weight_parts: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def hidden(self, layer: int, step: int, h: torch.Tensor) -> torch.Tensor:
        # Detached: a kept state must not keep the graph (and the hooks' tensors) alive.
        self.states.append((layer, step, h.detach()))
        if step > 0 and h.requires_grad:  # the zero initial state adds |0 ⊙ ∂h| = 0
            h.register_hook(self._saliency_hook(h.detach()))
        return h

    def _saliency_hook(self, value: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            self._saliency += (value * grad).abs().sum().double()

        return hook

    @property
    def hidden_saliency(self) -> float:
        return float(self._saliency)

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        if self.code_rows is None:
            return
        self._codes.append(output.detach()[self.code_rows] > 0)
        if len(self._codes) == _CODE_CHUNK:
            self.flush_codes()

    def flush_codes(self) -> None:
        """K += agreements of the pending codes: with s = ±1 codes (B, N),
        c cᵀ + (1−c)(1−c)ᵀ = (s sᵀ + N) / 2 — integers below 2²⁴, so exact in float32."""
        if not self._codes:
            return
        signs = torch.cat(self._codes, dim=1).float() * 2 - 1  # (B, N)
        self.kernel += ((signs @ signs.t() + signs.shape[1]) / 2).double()
        self._codes = []

    def projection(self, layer: int, source: str, inputs: torch.Tensor, projected: torch.Tensor) -> None:
        if not projected.requires_grad:
            return
        inputs = inputs.detach()
        steps = inputs.shape[0] // self.rows  # T for the input projection "x", else 1
        parts = self._weight_parts.setdefault((layer, source), [])

        def take(tensor: torch.Tensor, rows: slice) -> torch.Tensor:
            if rows == slice(0, self.rows):
                return tensor
            # A copy, not a view: the other blocks' rows are freed with the graph.
            return tensor.view(steps, self.rows, -1)[:, rows].reshape(-1, tensor.shape[-1])

        def hook(grad: torch.Tensor) -> None:
            if self.weight_rows is not None:
                parts.append((take(grad, self.weight_rows), take(inputs, self.weight_rows)))

        projected.register_hook(hook)

    def weight_gradients(self) -> dict[tuple[int, str], torch.Tensor]:
        """(layer, source) -> ∂W (n·H, in) of that source's fused weights from the
        synflow backward; a projection no gradient reached is absent (∂W = 0)."""
        grads = {}
        for key, parts in self._weight_parts.items():
            if parts:
                grad_rows = torch.cat([g for g, _ in parts])  # (N, n·H)
                input_rows = torch.cat([x for _, x in parts])  # (N, in)
                grads[key] = grad_rows.t() @ input_rows
        self._weight_parts = {}  # read once; the rows are freed
        return grads


@dataclass(frozen=True)
class _Backward:
    """One backward on a graph: the cotangent of y is ones except on `y_rows`, where it
    is y itself (∂(½‖y‖²)/∂y, pass 4); weight gradients are taken from `y_rows`."""

    y_rows: slice | None = None


def _run_graph(model, inputs: torch.Tensor, backwards: list[_Backward], *, code_rows: slice | None):
    """Forward `inputs` (T, N, E) once from zero states, then each backward in turn.

    Returns the recorder and, per backward, ∂/∂inputs (T, N, E).
    """
    T, N, _ = inputs.shape
    inputs = inputs.detach().requires_grad_()
    # Zero initial states as leaves, so every value of every step lies on a path the
    # backward walks (a node fed only by h_prev at step 0 still passes its gradient
    # on to the weights that read it).
    hidden = [tuple(s.requires_grad_() for s in layer_state) for layer_state in model.init_hidden(N)]
    leaves = [inputs] + [s for layer_state in hidden for s in layer_state]
    recorder = _GraphRecorder(N, code_rows, inputs.device)
    y, _ = model.forward_embedded(inputs, hidden, recorder=recorder)
    recorder.flush_codes()
    y = y.view(T, N, -1)
    grads = []
    for i, backward in enumerate(backwards):
        cotangent = torch.ones_like(y)
        if backward.y_rows is not None:
            cotangent[:, backward.y_rows] = y[:, backward.y_rows].detach()
        recorder.weight_rows = backward.y_rows
        grad = torch.autograd.grad(y, leaves, cotangent, retain_graph=i + 1 < len(backwards), allow_unused=True)[0]
        grads.append(grad)
    recorder.weight_rows = None
    return recorder, grads


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
    metrics need; returns layer (1-based) -> (B, H, T) states.

    Only those layers and the embedding are built (`initial_layers`: the other draws
    advance the generator without allocating), under the context's seed as
    `ctx.model()` would build them; eval mode has no dropout, so the layers run as the
    model runs them.
    """
    depth = max([HIDDEN_COV_LAYER[m] for m in ctx.wanted if m in HIDDEN_COV_LAYER] or [1])
    options = {**getattr(ctx.batch, "model_options", {}), **ctx.options}
    try:
        config = LMConfig(**{"ntoken": PTB_VOCABULARY, **options})
    except TypeError as err:
        raise TfnasError(f"unknown nb-nlp model option: {err}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        embedding, layers = initial_layers(parse_recipe(ctx.spec), config, depth)
    tokens = ctx.batch.tokens.to(ctx.device)
    recorder = _StepRecorder()
    with torch.no_grad():
        x = F.embedding(tokens, embedding.to(ctx.device))
        for index, layer in enumerate(layers):
            layer.to(ctx.device).eval()
            zeros = tuple(x.new_zeros(x.shape[1], layer.hidden_size) for _ in range(layer.recipe.hidden_tuple_size))
            x, _ = layer(x, zeros, layer_index=index, recorder=recorder)
    return {layer + 1: recorder.layer_states(layer) for layer in range(depth)}


def paper_passes(model, tokens: torch.Tensor, seed: int, *, batched: bool) -> PaperPasses:
    """The authors' four passes (module docstring), with each thing computed once.

    In eval mode passes 1, 2 and 4 run the same forward on the same input: one forward
    serves them, with two backwards (the all-ones cotangent of pass 1; y, pass 4's) and
    K twice pass 1's codes (pass 2 repeats pass 1's forward exactly). The noise passes
    differ only in their input. Every backward asks autograd for ∂/∂input only (J,
    J_a, and pass 4's ∂/∂e, scattered onto the embedding rows the tokens read); Σ|h⊙∂h|
    and pass 4's ∂W come from hooks (`_GraphRecorder`).

    Args:
        model: an eval-mode model; its parameters are frozen here (a private copy).
        tokens: (T, B) token ids on the model's device.
        seed: the numpy seed of the noise ε.
        batched: run every pass as a column block of one forward, B samples each,
            [e (passes 1, 2), e (pass 4), e + a·var·ε for each a], with one backward —
            columns never interact in the recurrence, so every block is its own pass.
            Fewer, larger kernels: for GPUs. Off, each input is its own graph of B
            columns (the same work, and a fifth of the memory, on a CPU).
    """
    for param in model.parameters():  # gradients only to inputs; ∂W from the recorder
        param.requires_grad_(False)
    T, B = tokens.shape
    clean = model.embed(tokens)  # (T, B, E)

    # Noise: e + a·var·ε, ε the first numpy draw after seeding, in the authors' dtypes.
    clean_np = clean.cpu().numpy()
    variance = np.var(clean_np, axis=1, keepdims=True)
    noise = np.random.RandomState(seed).normal(size=clean_np.shape)
    noisy = [
        torch.tensor((clean_np + scale * variance * noise).astype(clean_np.dtype), device=clean.device)
        for scale in NOISE_SCALES
    ]

    first = slice(0, B)
    if batched:
        recorder, (grad,) = _run_graph(
            model, torch.cat([clean, clean, *noisy], dim=1), [_Backward(y_rows=slice(B, 2 * B))], code_rows=first
        )
        blocks = [grad[:, i * B : (i + 1) * B] for i in range(2 + len(noisy))]
        jacobian, noisy_grads = blocks[0], blocks[2:]
        synaptic = _synaptic_saliency(model, recorder, tokens, blocks[1])
        hidden_saliency = recorder.hidden_saliency
    else:
        recorder, (jacobian, embedding_grad) = _run_graph(
            model, clean, [_Backward(), _Backward(y_rows=first)], code_rows=first
        )
        synaptic = _synaptic_saliency(model, recorder, tokens, embedding_grad)  # frees ∂W's parts
        hidden_saliency, noisy_grads = recorder.hidden_saliency, []
        for inputs in noisy:
            noisy_recorder, (grad,) = _run_graph(model, inputs, [_Backward()], code_rows=None)
            hidden_saliency += noisy_recorder.hidden_saliency
            noisy_grads.append(grad)

    return PaperPasses(
        states={layer + 1: recorder.layer_states(layer, first) for layer in range(len(model.layers))},
        jacobian=jacobian.cpu().numpy(),
        noisy_jacobians={a: g.cpu().numpy() for a, g in zip(NOISE_SCALES, noisy_grads)},
        kernel=(2 * recorder.kernel).cpu().numpy(),  # passes 1 and 2: the same codes twice
        synaptic_saliency=synaptic,
        hidden_saliency=hidden_saliency,
    )


def _synaptic_saliency(model, recorder: _GraphRecorder, tokens: torch.Tensor, embedding_grad: torch.Tensor) -> float:
    """Σ|W ⊙ ∂W| over every linear node's weights but its first (PAPER_METRICS.md), then
    the tied decoder, whose gradient is the embedding's: pass 4's ∂/∂e (T, B, E) summed
    into the rows of the tokens read (float32, as the embedding's backward does)."""
    synaptic = 0.0
    for (layer, source), grad in recorder.weight_gradients().items():
        readers = model.layers[layer].readers(source)
        rows = grad.shape[0] // len(readers)
        for i, (_, j, weight) in enumerate(readers):
            if j > 0:
                synaptic += float((weight * grad[i * rows : (i + 1) * rows]).abs().sum())
    used, where = torch.unique(tokens.reshape(-1), return_inverse=True)
    rows_grad = embedding_grad.new_zeros(len(used), embedding_grad.shape[-1])
    rows_grad.index_add_(0, where, embedding_grad.reshape(-1, embedding_grad.shape[-1]))
    return synaptic + float((model.decoder.weight[used].double() * rows_grad.double()).abs().sum())


@register_pass(SPACE, "paper")
def paper_pass(ctx: MetricContext) -> PaperPasses:
    """The authors' four passes on the context's model (`paper_passes`), batched into
    one forward on a GPU."""
    model = ctx.model().eval()
    return paper_passes(model, ctx.batch.tokens.to(ctx.device), ctx.seed, batched=ctx.device.type == "cuda")


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
        reads=("recurrent_steps", "hidden_states"),
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


# The Jacobian columns: ∂(Σ y)/∂e through the cell's steps, e the input embeddings.
_JACOBIAN_READS = ("recurrent_steps", "input_embeddings")


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
    reads=_JACOBIAN_READS,
    direction=Direction.HIGHER,
    summary="Jacobian covariance: −Σ[log(λ+k)+1/(λ+k)] of corr over samples of ∂(Σy)/∂e (Mellor et al. 2021)",
    needs=("paper",),
    cost="paper protocol (4 forwards, 5 backwards to the inputs, 1 weight gradient)",
)
def jacob_cov(ctx: MetricContext) -> float:
    """Rows of J (B, T·E), one per sample; their correlation's eigen score. The same as
    the paper's "Jacobian Covariance" column and as the standard jacob_cov."""
    return _jacobian_scores(_paper(ctx), "cov")[0.0]


@register_metric(
    "jacobian_cosine",
    space=SPACE,
    reads=_JACOBIAN_READS,
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

    @register_metric(name, space=SPACE, reads=_JACOBIAN_READS, direction=Direction.HIGHER, summary=summary, needs=("paper",), cost="paper protocol")
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
    reads=("recurrent_steps", "activations"),
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
    reads=("recurrent_steps", "module"),
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
    reads=("recurrent_steps", "hidden_states"),
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
    reads=("spec",),
    direction=Direction.HIGHER,
    baseline=True,
    summary="number of parameters (tied weights once), as NAS-Bench-NLP's num_params",
    cost="none (counted from the recipe)",
)
def params(ctx: MetricContext) -> float:
    """Every parameter of the model once; equals the published num_params."""
    from tfnas_ray.spaces import get_space

    options = {**getattr(ctx.batch, "model_options", {}), **ctx.options}
    return float(get_space(SPACE).count_parameters(ctx.spec, **options))
