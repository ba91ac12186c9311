"""Metrics by capability: scored on any model that offers what they read.

A capability metric declares what it reads from a model instead of the space it
belongs to:

- `module`: any `torch.nn.Module` that maps token ids (B, T) to a tensor (or a
  Hugging Face output): params, FLOPs per token, latency, synflow;
- `activations`: the model has activation modules (GELU, ReLU, … — `nn` or
  transformers' own): naswot, activation distance, fisher;
- `input_embeddings`: an `nn.Embedding` the ids go through (HF:
  `get_input_embeddings()`): jacob_cov;
- `hidden_states`: the model returns per-layer hidden states (HF
  `output_hidden_states=True`): hidden covariance;
- `attentions`: it returns attention probabilities (HF `output_attentions=True`, built
  with `attn_implementation="eager"`): head/softmax confidence, head importance;
- `lm_loss`: its output is language-model logits (B, T, V), so a loss exists: causal
  (next token) or masked (BERT's masking, `transformer.mlm_inputs`): grad_norm, snip,
  fisher, grasp, head importance.

(The vocabulary, with `spec` and `recurrent_steps` — which no probe reads — is
`tfnas_ray.spaces.CAPABILITIES`.)

A `Probe` holds one model and one batch, finds what the model offers, and caches the
passes (one forward, one loss backward) that several metrics read. Every metric here is
registered once as its metric's *generic* implementation (`ANY_SPACE`): the engine
scores it on every space that offers what it reads and has no implementation of its
own (nb-nlp and nb-bert keep theirs, values and shard ids), through that space's
`probe` pass — a `Probe` of the space's model on the space's batch (hf: below; nb-bert:
metrics/transformer.py; nb-nlp: metrics/rnn_standard.py). `tfnas_ray.api.score_model`
scores them on any module. A metric that does not apply to a model says why in one line
(`Probe.missing`).

Shapes: B sequences, T tokens, V vocabulary, H hidden width, nh heads.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import (
    ANY_SPACE,
    Direction,
    MetricContext,
    MetricFailure,
    check_finite,
    register_batch,
    register_metric,
    register_pass,
)
from tfnas_ray.metrics.common import (
    EIGEN_OFFSET,
    correlation_matrix,
    eigen_score,
    grasp_saliency,
    hamming_kernel_update,
    log_abs_det,
)
from tfnas_ray.registry import Registry

SPACE = "hf"
# The capabilities a probe finds on a model (`Probe.capabilities`); of the vocabulary,
# `spec` (no model) and `recurrent_steps` (a cell's own recorder) are read by spaces' own
# implementations only.
PROBED = ("module", "activations", "input_embeddings", "hidden_states", "attentions", "lm_loss")
TASKS = ("causal-lm", "masked-lm")
BATCH_DEFAULTS = {"batch_size": 16, "seq_len": 64}  # small: CPU scorers, tiny families
LATENCY_WARMUP = 3  # forwards run before timing (allocator, kernels, caches)
LATENCY_REPEATS = 10  # timed forwards; the median is reported


# ---- the registry ----------------------------------------------------------------------


@dataclass(frozen=True)
class CapabilityMetric:
    """A metric computed from a `Probe`.

    Attributes:
        name: the metric's name (as in the scores table).
        reads: the capabilities it needs (PROBED).
        fn: fn(probe) -> float.
        direction, summary, cost: as for every metric (`tfnas metrics`).
        hardware: a measurement of the device, not a function of the model alone.
    """

    name: str
    reads: tuple[str, ...]
    fn: Callable[["Probe"], float]
    direction: Direction
    summary: str
    cost: str
    hardware: bool = False


CAPABILITY_METRICS: Registry[CapabilityMetric] = Registry("capability metric")


def capability_metric(
    name: str, *, reads: Sequence[str], summary: str, cost: str, direction: Direction = Direction.HIGHER, hardware: bool = False,
    baseline: bool = False,
) -> Callable[[Callable[["Probe"], float]], Callable[["Probe"], float]]:
    """Register `fn(probe) -> float` as a capability metric, and as metric `name`'s
    generic implementation (`ANY_SPACE`: every space that offers `reads` and has none of
    its own; it reads the space's shared `probe` pass). `baseline`: a trivial baseline
    (size or compute, as `params` and `flops_per_token` are on every space)."""
    unknown = sorted(set(reads) - set(PROBED))
    if unknown:
        raise TfnasError(f"metric {name!r} reads capabilities {unknown} that no probe reads; a probe reads: {', '.join(PROBED)}")

    def decorator(fn: Callable[["Probe"], float]) -> Callable[["Probe"], float]:
        metric = CapabilityMetric(name, tuple(reads), fn, direction, summary, cost, hardware)
        CAPABILITY_METRICS.add(name, metric)

        def on_space(ctx: MetricContext) -> float:
            probe: Probe = ctx.run_pass("probe")
            reason = probe.missing(metric)
            if reason is not None:
                raise MetricFailure(reason)
            return check_finite(fn(probe), name)

        on_space.__doc__ = fn.__doc__
        register_metric(
            name, space=ANY_SPACE, direction=direction, summary=summary, reads=reads, needs=("probe",), cost=cost, baseline=baseline
        )(on_space)
        return fn

    return decorator


# ---- the probe -------------------------------------------------------------------------


def _is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover — transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def _activation_types() -> tuple[type, ...]:
    from transformers import activations as hf_activations

    torch_types = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.ReLU6, nn.Hardswish)
    hf_types = tuple(
        cls for cls in vars(hf_activations).values()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == hf_activations.__name__
    )
    return torch_types + hf_types


def activation_modules(model: nn.Module) -> list[nn.Module]:
    """The activation modules of `model` in module order (nn's and transformers')."""
    types = _activation_types()
    return [m for m in model.modules() if isinstance(m, types)]


def input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The embedding the token ids go through: HF's `get_input_embeddings()`, else the
    first `nn.Embedding` in module order."""
    if _is_hf(model):
        emb = model.get_input_embeddings()
        if isinstance(emb, nn.Embedding):
            return emb
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def _first_tensor(out: Any) -> torch.Tensor:
    """The main output: HF logits (or last hidden state), a tensor, or a tuple's first."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise MetricFailure(f"the model's output ({type(out).__name__}) holds no tensor to score")


class LMOutput:
    """What a space's probe wrapper returns (metrics/transformer.py, rnn_standard.py):
    the output a Hugging Face LM would give, for models that are not one.

    Arguments:
        logits: (B, T, V); or give `head` instead, and they are `head(hidden_states[-1])`
            computed when first read — so a forward whose logits nobody reads (latency,
            forward memory) runs the model without an LM head that is no part of it
            (nb-bert's: ELECTRA's generator head, there only for an LM loss).
        hidden_states: per layer read (B, T, H); the last is what `hidden_cov` reads.
    """

    def __init__(
        self,
        *,
        logits: torch.Tensor | None = None,
        hidden_states: tuple[torch.Tensor, ...] | None = None,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if (logits is None) == (head is None) or (head is not None and not hidden_states):
            raise TfnasError("LMOutput needs logits, or a head and the hidden states it reads")
        self._logits, self._head = logits, head
        self.hidden_states = hidden_states

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self._head(self.hidden_states[-1])  # (B, T, V)
        return self._logits


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter once (tied weights once), in module order."""
    return list({id(p): p for p in model.parameters()}.values())


@dataclass(frozen=True)
class ForwardPass:
    """What one no-grad forward on the batch gives (eval mode)."""

    output_shape: tuple[int, ...]
    attentions: tuple[torch.Tensor, ...] | None  # per layer (B, nh, T, T)
    last_hidden: torch.Tensor | None  # (B, T, H)
    naswot_kernel: np.ndarray | None  # (B, B), None without activations
    activation_distance: tuple[float, ...]


@dataclass(frozen=True)
class LossPass:
    """Gradients of the LM loss L on the batch (eval mode)."""

    loss: float
    grad_norm: float
    snip: float
    fisher: float
    head_importance: tuple[float, ...] | None  # per layer and head, None without attentions


class Probe:
    """One model and one batch: what the model offers and the passes metrics share.

    The model is never mutated: every pass runs on a fresh deep copy (eval mode, so
    dropout is off and the values are deterministic).

    Arguments:
        model: any `nn.Module` taking token ids (B, T).
        input_ids: (B, T) int64 token ids.
        attention_mask: (B, T) 1 on tokens, 0 on padding (HF models get it; the causal
            loss and hidden covariance skip padding).
        task: "causal-lm" or "masked-lm"; default: masked for HF `…ForMaskedLM`
            models, else causal.
        device: where the passes run (default: where the model's parameters are).
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, task: str | None = None, device: Any = None):
        if not isinstance(model, nn.Module):
            raise TfnasError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            what = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise TfnasError(f"batch must be a LongTensor of token ids [B, T], got {what}")
        if input_ids.shape[0] < 2 or input_ids.shape[1] < 2:
            raise TfnasError(f"batch must have at least 2 sequences of at least 2 tokens, got {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise TfnasError(f"attention_mask shape {tuple(attention_mask.shape)} differs from the batch's {tuple(input_ids.shape)}")
        self.is_hf = _is_hf(model)
        if task is None:
            task = "masked-lm" if self.is_hf and type(model).__name__.endswith("ForMaskedLM") else "causal-lm"
        if task not in TASKS:
            raise TfnasError(f"task {task!r} is not one of {', '.join(TASKS)}")
        self.task = task
        first = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        self._pristine = model
        self.input_ids = input_ids.to(self.device)
        self.attention_mask = attention_mask.to(self.device) if attention_mask is not None else None
        self._cache: dict[str, Any] = {}

    # -- the model and its forward --

    def model(self) -> nn.Module:
        """A fresh copy of the model, eval mode, on the probe's device."""
        return copy.deepcopy(self._pristine).to(self.device).eval()

    def _kwargs(self, *, attentions: bool, hidden: bool) -> dict:
        if not self.is_hf:
            # a wrapper that says it takes the padding mask gets it (nb-bert's probe)
            if self.attention_mask is not None and getattr(self._pristine, "takes_attention_mask", False):
                return {"attention_mask": self.attention_mask}
            return {}
        kwargs: dict[str, Any] = {"output_hidden_states": hidden}
        if attentions:
            kwargs["output_attentions"] = True
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask
        return kwargs

    def call(self, model: nn.Module, input_ids: torch.Tensor | None = None, **kwargs) -> Any:
        ids = self.input_ids if input_ids is None else input_ids
        return model(ids, **kwargs) if not self.is_hf else model(input_ids=ids, **kwargs)

    def _attentions_supported(self) -> str | None:
        """None when the model can return attention probabilities, else why not."""
        if not self.is_hf:
            return f"{type(self._pristine).__name__} is not a Hugging Face model, so it returns no attention probabilities"
        impl = getattr(self._pristine.config, "_attn_implementation", None)
        if impl not in (None, "eager"):
            return f"the model uses attn_implementation={impl!r}, which returns no attention probabilities; build it with attn_implementation='eager'"
        return None

    # -- capabilities --

    @property
    def capabilities(self) -> frozenset[str]:
        """What this model offers (computed once; runs the forward pass)."""
        if "capabilities" not in self._cache:
            self._cache["capabilities"] = frozenset(c for c in PROBED if self._why_not(c) is None)
        return self._cache["capabilities"]

    def _why_not(self, capability: str) -> str | None:
        name = type(self._pristine).__name__
        if capability == "module":
            return None
        if capability == "activations":
            return None if activation_modules(self._pristine) else f"{name} has no activation module (ReLU, GELU, …) to read"
        if capability == "input_embeddings":
            return None if input_embedding(self._pristine) is not None else f"{name} has no nn.Embedding for the token ids"
        if capability == "attentions":
            reason = self._attentions_supported()
            if reason is None and not self.forward().attentions:
                reason = f"{name} returned no attention probabilities with output_attentions=True"
            return reason
        if capability == "hidden_states":
            if self.forward().last_hidden is not None:
                return None
            if not self.is_hf:
                return f"{name} is not a Hugging Face model and its output has no hidden_states, so it returns no hidden states"
            return f"{name} returned no hidden states"
        if capability == "lm_loss":
            shape = self.forward().output_shape
            vocab = int(self.input_ids.max()) + 1
            if len(shape) != 3 or shape[:2] != tuple(self.input_ids.shape) or shape[2] < vocab:
                return f"{name}'s output {shape} is not language-model logits (B, T, V ≥ {vocab}), so it has no LM loss"
            return None
        raise TfnasError(f"unknown capability {capability!r}")

    def missing(self, metric: CapabilityMetric) -> str | None:
        """None when `metric` applies to the model; else one line saying why not."""
        for capability in metric.reads:
            reason = self._why_not(capability)
            if reason is not None:
                return f"{metric.name} does not apply: it reads {capability}, and {reason}"
        return None

    # -- shared passes --

    def forward(self) -> ForwardPass:
        """One no-grad forward with activation hooks (and attentions, hidden states)."""
        if "forward" in self._cache:
            return self._cache["forward"]
        model = self.model()
        B = self.input_ids.shape[0]
        kernel = torch.zeros(B, B, dtype=torch.float64, device=self.device)
        distance: list[float] = []
        acts = activation_modules(model)

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() < 2 or output.shape[0] != B:
                return  # an activation applied to something other than the batch
            hamming_kernel_update(kernel, output)  # (B, …) → K (B, B)
            first = output[0].reshape(output.shape[1], -1) if output.dim() > 2 else output[0:1]
            tokens = torch.zeros(first.shape[0], first.shape[0], dtype=torch.float64, device=self.device)
            hamming_kernel_update(tokens, first)  # the first sequence, tokens as rows: (T, F) → (T, T)
            distance.append(float(tokens.sum()))

        handles = [m.register_forward_hook(hook) for m in acts]
        want_attn = self._attentions_supported() is None
        try:
            with torch.no_grad():
                out = self.call(model, **self._kwargs(attentions=want_attn, hidden=True))
                # read here: an `LMOutput`'s lazy logits run its head (hooked, no grad) now
                output_shape = tuple(_first_tensor(out).shape)
        finally:
            for h in handles:
                h.remove()
        attentions = getattr(out, "attentions", None) if self.is_hf else None
        hidden = getattr(out, "hidden_states", None)  # HF's, or a space wrapper's `LMOutput`
        result = ForwardPass(
            output_shape=output_shape,
            attentions=tuple(a.detach() for a in attentions) if attentions else None,
            last_hidden=hidden[-1].detach() if hidden else None,
            naswot_kernel=kernel.cpu().numpy() if distance else None,
            activation_distance=tuple(distance),
        )
        self._cache["forward"] = result
        return result

    def lm_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels): causal — the batch and its next tokens (−100 at padding and
        the last position); masked — BERT's masking with the shipped tokenizer's special
        ids (`transformer.mlm_inputs`)."""
        ids, mask = self.input_ids, self.attention_mask
        if self.task == "masked-lm":
            from tfnas_ray.metrics.transformer import mlm_inputs

            vocab = self.forward().output_shape[-1]
            return mlm_inputs(ids, mask, vocab_size=vocab)
        labels = ids.clone()
        if mask is not None:
            labels[mask == 0] = -100
        return ids, labels

    def lm_loss(self, model: nn.Module, *, attentions: bool = False) -> tuple[torch.Tensor, Any]:
        """(mean cross entropy of the model's logits on `lm_inputs`, the raw output)."""
        inputs, labels = self.lm_inputs()
        out = self.call(model, inputs, **self._kwargs(attentions=attentions, hidden=False))
        logits = _first_tensor(out)
        if self.task == "causal-lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100), out

    def loss_pass(self) -> LossPass:
        """∂L/∂θ for every parameter, ∂L/∂a for every activation and ∂L/∂A for every
        attention map, in one autograd.grad."""
        if "loss" in self._cache:
            return self._cache["loss"]
        model = self.model()
        activations: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda m, i, out: activations.append(out)) for m in activation_modules(model)]
        want_attn = "attentions" in self.capabilities
        params = unique_parameters(model)
        try:
            loss, out = self.lm_loss(model, attentions=want_attn)
        finally:
            for h in handles:
                h.remove()
        attentions = list(out.attentions) if want_attn else []
        acts = [a for a in activations if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(loss, params + acts + attentions, allow_unused=True)
        p_grads = grads[: len(params)]
        a_grads = grads[len(params) : len(params) + len(acts)]
        attn_grads = grads[len(params) + len(acts) :]
        reached = [(p, g) for p, g in zip(params, p_grads) if g is not None]
        fisher = 0.0
        for a, g in zip(acts, a_grads):
            if g is None or a.dim() < 2:
                continue
            per_sample = (a.detach() * g).reshape(a.shape[0], -1, a.shape[-1]).sum(dim=1)  # (B, F): Σ over tokens
            fisher += float(0.5 * per_sample.double().pow(2).mean(dim=0).sum())
        importance = None
        if want_attn:
            # ∂L/∂ξ_h of a gate ξ_h on head h's output (Michel et al. 2019) = Σ A_h ⊙ ∂L/∂A_h,
            # since the head's context ξ_h·A_h·V_h is linear in A_h.
            importance = tuple(
                float(v) for a, g in zip(attentions, attn_grads) if g is not None
                for v in (a.detach().double() * g.double()).sum(dim=(0, 2, 3)).abs()
            )
        result = LossPass(
            loss=float(loss.detach()),
            grad_norm=float(sum(g.double().norm() for _, g in reached)),
            snip=float(sum((p.detach().double() * g.double()).abs().sum() for p, g in reached)),
            fisher=fisher,
            head_importance=importance,
        )
        self._cache["loss"] = result
        return result


# ---- metrics reading any module ------------------------------------------------------


@capability_metric("params", reads=("module",), summary="number of parameters, tied weights once (= HF num_parameters())", cost="none (counted from the model)", baseline=True)
def params(probe: Probe) -> float:
    """Σ numel over every parameter tensor once (tied embedding/decoder once)."""
    return float(sum(p.numel() for p in unique_parameters(probe._pristine)))


def flops_per_token_of(model: nn.Module, call: Callable[[nn.Module], Any], tokens: int) -> float:
    """FLOPs of one no-grad forward counted by `torch.utils.flop_counter` (a matmul of
    (m×k)·(k×n) counts 2mkn; attention's two matmuls included, element-wise ops not),
    divided by `tokens`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call(model)
    return counter.get_total_flops() / tokens


@capability_metric(
    "flops_per_token", reads=("module",),
    summary="forward FLOPs per token of the metric batch, matmuls counted as 2mkn (torch.utils.flop_counter)",
    cost="1 forward (counted)", baseline=True,
)
def flops_per_token(probe: Probe) -> float:
    """FLOPs of one forward on the batch (B, T) / (B·T); see `flops_per_token_of`."""
    return flops_per_token_of(probe.model(), lambda m: probe.call(m, **probe._kwargs(attentions=False, hidden=False)), probe.input_ids.numel())


@capability_metric(
    "latency_ms", reads=("module",), hardware=True,
    summary=f"median wall time (ms) of {LATENCY_REPEATS} no-grad forwards on the metric batch after {LATENCY_WARMUP} warm-up, on the scorer's device",
    cost=f"{LATENCY_WARMUP + LATENCY_REPEATS} forwards (timed)",
)
def latency_ms(probe: Probe) -> float:
    """Median of LATENCY_REPEATS timed forwards (eval, no grad) on the whole metric batch
    (B × T as the batch gives it: default 16 × 64 tokens on `hf`) after LATENCY_WARMUP
    untimed ones, on the probe's device (CUDA synchronised around each). A measurement:
    it varies with the machine and its load, unlike every other metric. Declared
    higher-is-better as `params` is: a slower model is a larger one, and larger ones
    usually train to lower loss; as a cost, search with `--max-latency-ms`."""
    model = probe.model()
    kwargs = probe._kwargs(attentions=False, hidden=False)
    cuda = probe.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(LATENCY_WARMUP + LATENCY_REPEATS):
            if cuda:
                torch.cuda.synchronize(probe.device)
            started = time.perf_counter()
            probe.call(model, **kwargs)
            if cuda:
                torch.cuda.synchronize(probe.device)
            if i >= LATENCY_WARMUP:
                times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def peak_bytes(run: Callable[[], Any], device: torch.device) -> int:
    """The most bytes of tensor memory that `run()` held at once beyond what was
    allocated before it. CUDA: `max_memory_allocated` − `memory_allocated` before (the
    caching allocator's own count). CPU: the allocations and frees torch's profiler
    records for every tensor (`profile_memory`, its memory timeline): exact bytes of
    tensors, not the process's resident memory (which the C allocator's reuse blurs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return int(peak)


_MEMORY_SUMMARY = "peak tensor memory (MiB) above the model's own of {what} on the metric batch, on the scorer's device (CUDA: max_memory_allocated; CPU: torch profiler's tensor allocations)"


@capability_metric(
    "peak_memory_mb", reads=("module",), hardware=True,
    summary=_MEMORY_SUMMARY.format(what="a forward and backward (LM loss, else Σ output)"),
    cost="forward+backward (profiled)",
)
def peak_memory_mb(probe: Probe) -> float:
    """Peak tensor memory of one training step's forward and backward on the batch: the
    LM loss where the model has one (else Σ output), gradients of every parameter
    created (a fresh copy has none). Activations, gradients and temporaries count; the
    weights themselves do not (allocated before). MiB = 2^20 bytes. See `peak_bytes`."""
    model = probe.model()

    def step() -> None:
        if "lm_loss" in probe.capabilities:
            loss, _ = probe.lm_loss(model)
        else:
            loss = _first_tensor(probe.call(model, **probe._kwargs(attentions=False, hidden=False))).sum()
        loss.backward()

    return peak_bytes(step, probe.device) / 2**20


@capability_metric(
    "peak_memory_forward_mb", reads=("module",), hardware=True,
    summary=_MEMORY_SUMMARY.format(what="a no-grad forward"),
    cost="1 forward (profiled)",
)
def peak_memory_forward_mb(probe: Probe) -> float:
    """Peak tensor memory of one no-grad forward on the batch (inference), MiB."""
    model = probe.model()

    def forward() -> None:
        with torch.no_grad():
            probe.call(model, **probe._kwargs(attentions=False, hidden=False))

    return peak_bytes(forward, probe.device) / 2**20


@capability_metric(
    "synflow", reads=("module",),
    summary="Σ|θ⊙∂R/∂θ| with |θ|, float64, R = Σ output; HF: all-ones input embeddings of one sequence, else its ids (Tanaka et al.)",
    cost="forward+backward (float64, one sequence)",
)
def synflow(probe: Probe) -> float:
    """Synflow: every parameter replaced by |θ|, float64, eval mode; R = Σ output of one
    sequence of T tokens — HF models: input embeddings all ones (1, T, E), as nb-bert's;
    other modules: the first sequence's ids (their input is discrete). Score
    Σ|θ ⊙ ∂R/∂θ| over every parameter that gets a gradient."""
    model = probe.model().double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    T = probe.input_ids.shape[1]
    emb = input_embedding(model) if probe.is_hf else None
    if emb is not None:
        ones = torch.ones(1, T, emb.embedding_dim, dtype=torch.float64, device=probe.device)
        out = model(inputs_embeds=ones)
    else:
        out = probe.call(model, probe.input_ids[:1])
    _first_tensor(out).sum().backward()
    return float(sum((p.detach() * p.grad).abs().sum() for p in unique_parameters(model) if p.grad is not None))


@capability_metric(
    "jacob_cov", reads=("module", "input_embeddings"),
    summary="−Σ[log(λ+k)+1/(λ+k)] of corrcoef over sequences of ∂(Σ output_b)/∂(input embeddings_b) (Mellor et al.)",
    cost="forward+backward to the input embeddings",
)
def jacob_cov(probe: Probe) -> float:
    """Mellor et al.'s Jacobian covariance on token models: J_b = ∂(Σ output of sequence
    b)/∂(its input embeddings) flattened to (T·E); rows b = 1…B; score
    −Σ[log(λ+k)+1/(λ+k)] over the eigenvalues of corrcoef(J), k = 1e-5
    (`common.eigen_score`)."""
    model = probe.model()
    emb = input_embedding(model)
    captured: list[torch.Tensor] = []

    def keep(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = emb.register_forward_hook(keep)
    try:
        out = probe.call(model, **probe._kwargs(attentions=False, hidden=False))
        # Σ over all outputs: sequence b's output depends on its own embeddings only
        _first_tensor(out).sum().backward()
    finally:
        handle.remove()
    grad = captured[0].grad  # (B, T, E)
    rows = grad.detach().double().reshape(grad.shape[0], -1).cpu().numpy()
    return eigen_score(correlation_matrix(rows, what="input-embedding Jacobian"), what="jacob_cov", k=EIGEN_OFFSET)


# ---- metrics reading activations ------------------------------------------------------


@capability_metric(
    "naswot", reads=("module", "activations"),
    summary="log|det K|, K = Hamming agreement of activation codes 1[a>0] between sequences, all activation modules (Mellor et al.)",
    cost="1 forward, no gradient",
)
def naswot(probe: Probe) -> float:
    """NASWOT: codes c_b = 1[a > 0] of every activation module's output for sequence b
    (flattened over tokens and units); K = Σ [c cᵀ + (1−c)(1−c)ᵀ] (B × B,
    `common.hamming_kernel_update`); score log|det K|.

    Raises:
        MetricFailure: K singular (two sequences with the same codes).
    """
    return log_abs_det(probe.forward().naswot_kernel, what="naswot")


@capability_metric(
    "activation_distance", reads=("module", "activations"),
    summary="Σ over activation modules of Σ_ij[c cᵀ + (1−c)(1−c)ᵀ] over the first sequence's tokens (as nb-bert's)",
    cost="1 forward, no gradient",
)
def activation_distance(probe: Probe) -> float:
    """nb-bert's activation distance on any model: per activation module, codes
    c = 1[a > 0] of the first sequence (T, F), K = c cᵀ + (1−c)(1−c)ᵀ (T × T), summed
    over all entries and modules."""
    return check_finite(sum(probe.forward().activation_distance), "activation distance")


# ---- metrics reading hidden states and attentions ------------------------------------


@capability_metric(
    "hidden_cov", reads=("hidden_states",),
    summary="−Σ[log(λ+k)+1/(λ+k)] of the correlation of the last hidden state's units over the batch's real tokens (one unit dropped after a LayerNorm)",
    cost="1 forward, no gradient",
)
def hidden_cov(probe: Probe) -> float:
    """The paper's hidden covariance on a transformer: the last layer's hidden states
    (B, T, H), each unit a variable observed over the batch's non-padding tokens; score
    −Σ[log(λ+k)+1/(λ+k)] over the eigenvalues of their correlation, k = 1e-5."""
    hidden = probe.forward().last_hidden  # (B, T, H)
    tokens = hidden[probe.attention_mask.bool()] if probe.attention_mask is not None else hidden.reshape(-1, hidden.shape[-1])
    units = tokens.double().T.cpu().numpy()  # (H, N)
    # A LayerNorm output (β = 0 at init, as GPT-2's ln_f and every BERT layer give) has
    # units summing to 0 on every token: one eigenvalue is 0 up to round-off, and its
    # 1/(λ+k) ≈ 1e5 would rank float noise. Drop one unit: the score reads the H−1 free ones.
    if np.all(np.abs(units.mean(axis=0)) <= 1e-5 * (np.abs(units).mean(axis=0) + 1e-12)):
        units = units[:-1]
    return eigen_score(correlation_matrix(units, what="last hidden state"), what="hidden_cov", k=EIGEN_OFFSET)


def _attentions(probe: Probe) -> tuple[torch.Tensor, ...]:
    return probe.forward().attentions


def head_confidences(attentions: Sequence[torch.Tensor]) -> list[float]:
    """Per layer and head: mean over (B, T) of max_s A[b, h, t, s] (Voita et al. 2019)."""
    return [float(v) for a in attentions for v in a.double().max(dim=-1).values.mean(dim=(0, 2))]


@capability_metric(
    "head_confidence", reads=("attentions",),
    summary="Σ over layers and heads of mean over (sequence, query) of the max attention probability (Voita et al.)",
    cost="1 forward (attentions)",
)
def head_confidence(probe: Probe) -> float:
    """Head confidence (Voita et al. 2019): for each head, its attention probabilities
    A (B, T, T) → mean over b, t of max_s A[b, t, s]; summed over layers and heads.
    (nb-bert's column reads its projections' outputs instead, as the paper's code did.)"""
    return check_finite(sum(head_confidences(_attentions(probe))), "head confidence")


@capability_metric(
    "head_confidence_normalized", reads=("attentions",),
    summary="head_confidence / number of heads (all layers)", cost="1 forward (attentions)",
)
def head_confidence_normalized(probe: Probe) -> float:
    values = head_confidences(_attentions(probe))
    return check_finite(sum(values) / len(values), "normalised head confidence")


def softmax_confidences(attentions: Sequence[torch.Tensor]) -> list[float]:
    """Per layer: mean of the max over the head axis of A (B, nh, T, T) — the paper's
    `torch.max(scores, 1)`, as nb-bert's softmax_confidence."""
    return [float(a.double().max(dim=1).values.mean()) for a in attentions]


@capability_metric(
    "softmax_confidence", reads=("attentions",),
    summary="Σ over layers of mean(max over the head axis of the attention probabilities) (paper)",
    cost="1 forward (attentions)",
)
def softmax_confidence(probe: Probe) -> float:
    """The paper's softmax confidence: per layer `torch.max(A, 1)` (over heads), mean; summed."""
    return check_finite(sum(softmax_confidences(_attentions(probe))), "softmax confidence")


@capability_metric(
    "softmax_confidence_normalized", reads=("attentions",),
    summary="softmax_confidence / number of layers", cost="1 forward (attentions)",
)
def softmax_confidence_normalized(probe: Probe) -> float:
    values = softmax_confidences(_attentions(probe))
    return check_finite(sum(values) / len(values), "normalised softmax confidence")


# ---- metrics reading the LM loss -----------------------------------------------------

_LOSS_COST = "forward+backward (LM loss)"


@capability_metric(
    "head_importance", reads=("attentions", "lm_loss"),
    summary="Σ over heads of |∂L/∂ξ_h| = |Σ A_h⊙∂L/∂A_h|, L = LM loss (Michel et al.)", cost=_LOSS_COST,
)
def head_importance(probe: Probe) -> float:
    """Head importance (Michel et al. 2019): |∂L/∂ξ_h| for a gate ξ_h = 1 on each head's
    output, which equals |Σ_{b,t,s} A_h ⊙ ∂L/∂A_h|; summed over layers and heads.
    L: the causal or masked LM loss (`Probe.lm_inputs`)."""
    return check_finite(sum(probe.loss_pass().head_importance), "head importance")


@capability_metric("grad_norm", reads=("lm_loss",), summary="Σ_θ ‖∂L/∂θ‖₂ over every parameter tensor, L = LM loss (Abdelfattah et al.)", cost=_LOSS_COST)
def grad_norm(probe: Probe) -> float:
    """Σ over every parameter tensor (tied weights once) of ‖∂L/∂θ‖₂."""
    return check_finite(probe.loss_pass().grad_norm, "grad_norm")


@capability_metric("snip", reads=("lm_loss",), summary="Σ|θ⊙∂L/∂θ| over every parameter, L = LM loss (Lee et al.)", cost=_LOSS_COST)
def snip(probe: Probe) -> float:
    """Σ over every parameter of |θ ⊙ ∂L/∂θ|."""
    return check_finite(probe.loss_pass().snip, "snip")


@capability_metric(
    "fisher", reads=("lm_loss", "activations"),
    summary="Σ over activation modules and units of ½·mean_b(Σ_t a⊙∂L/∂a)², L = LM loss (Theis et al.; Turner et al.)", cost=_LOSS_COST,
)
def fisher(probe: Probe) -> float:
    """Fisher as zero-cost-nas and nb-bert: per activation output a (B, T, F),
    g = Σ_t a ⊙ ∂L/∂a (B, F), score Σ_units ½·mean_b g², summed over activations."""
    return check_finite(probe.loss_pass().fisher, "fisher")


@capability_metric(
    "grasp", reads=("lm_loss",),
    summary="−Σ θ⊙(H g), g = ∂L/∂θ, every parameter, L = LM loss (Wang et al., as zero-cost-nas)",
    cost="forward + backward with create_graph + Hessian-vector product",
)
def grasp(probe: Probe) -> float:
    """GraSP on the LM loss (`common.grasp_saliency`)."""
    model = probe.model()
    loss, _ = probe.lm_loss(model)
    return grasp_saliency(loss, unique_parameters(model))


# ---- the engine's side: the hf space's batch and probe ---------------------------------


@lru_cache(maxsize=4)
def _cached_batch(batch_size: int, seq_len: int, index: int) -> dict[str, torch.Tensor]:
    from tfnas_ray.data.tokenizer import document_batch

    return document_batch(batch_size=batch_size, seq_len=seq_len, index=index)


@register_batch(SPACE)
def hf_batch(options: Mapping) -> dict:
    """The hf metric minibatch (cached per process; do not mutate): the first
    `batch_size` (16) WikiText-2 train articles, `[CLS] … [SEP]` in the shipped WordPiece
    tokenizer, cut or padded to `seq_len` (64) tokens; `index` (0): the next block.

    Raises:
        TfnasError: an unknown option or a size out of range.
    """
    allowed = [*BATCH_DEFAULTS, "index"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TfnasError(f"hf batch option(s) {unknown} unknown; allowed: {', '.join(allowed)}")
    merged = {**BATCH_DEFAULTS, **options}
    return _cached_batch(int(merged["batch_size"]), int(merged["seq_len"]), int(merged.get("index", 0)))


@register_pass(SPACE, "probe")
def probe_pass(ctx: MetricContext) -> Probe:
    """The probe of the architecture's model (built under its seed) on the hf batch;
    the model's positions must hold the batch's length."""
    from tfnas_ray.spaces.hf import HfSpec

    spec = HfSpec.parse(ctx.spec)
    model = ctx.model()
    positions = getattr(model.config, "max_position_embeddings", None)
    T = ctx.batch["input_ids"].shape[1]
    if positions is not None and positions < T:
        raise TfnasError(f"the metric batch has {T} tokens per sequence but {spec.model_type} max_position_embeddings is {positions}; lower --seq-len or raise it in the space file")
    return Probe(model, ctx.batch["input_ids"], ctx.batch["attention_mask"], task=spec.task, device=ctx.device)
