"""Training-free metrics for NAS-Bench-BERT encoders (space `nb-bert`).

The paper's transformer columns (Serianni & Kalita 2023, their `BERT_metrics.ipynb`)
come from ONE pass, `sum_output`: the model runs forward on the metric minibatch
(`tfnas_ray.data.tokenizer.document_batch`: 128 WikiText-2 articles cut or padded to
`seq_len` tokens), then backward of R = Σ last_hidden_state (an all-ones output
gradient). Every column reads that pass; `_normalized` divides a column by the number of
modules it summed over. The batch's `mode` says how the model runs: "train" is the
authors' (dropout on, drawn from a generator seeded with the architecture's seed so the
values are reproducible; the padding mask not applied), "eval" is dropout off with the
padding mask.

R is degenerate: the last LayerNorm (γ = 1, β = 0 at init) makes Σ output = H·Σβ for
every input, so ∂R/∂θ = 0 for every parameter under it, and the paper's gradient columns
(head importance, synaptic saliency and diversity, the Jacobian score) rank float32
round-off. `gradient_degeneracy` shows it in float64. The `_mlm` variants compute the
same formulas on a gradient that measures something: the masked-language-model loss of
ELECTRA's generator head (`tfnas_ray.training.mlm.MLMHead`, tied to the word embeddings)
on the same batch, 15 % of its tokens masked with a fixed generator (`mlm` pass). The
standard proxies `grad_norm`, `snip`, `fisher`, `grasp` use that loss too.

Modules read (shapes: B batch, T tokens, H hidden, F feed-forward width, E = 128):
- *projections* of a layer's operation: the Linear layers into head space — SA: query,
  key, value (+ `weight` for WMA); LT: its input `dense`; DSC: query, key, value,
  conv_out_layer. (The authors selected Linear layers with ≥ 128 outputs, which is this
  set at their hidden size 256; naming them keeps it right at hidden 128.)
- *operation modules*: every Linear of the operation and of its output block.
- *feed-forward modules*: every Linear of the stacked intermediate layers and of the
  down-projection; their GELU outputs are the *activations*.

The standard proxies: `grad_norm`, `snip`, `fisher` read the `mlm` pass, `grasp` its own
(a Hessian-vector product of the MLM loss); `synflow` has its own pass (|θ|, float64, an
all-ones input embedding of one sequence); `naswot` reads the activations of
`sum_output`. Every parameter counts (embeddings and the MLM head included).

A pass computes only what the metrics scored with it need (`MetricContext.wanted`; all
when empty): NASWOT's B × B kernel, activation distance and the nuclear norms are each
skipped when no requested metric reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from tfnas_ray.metrics import (
    Direction,
    MetricContext,
    MetricFailure,
    check_finite,
    register_batch,
    register_metric,
    register_pass,
)
from tfnas_ray.metrics.common import grasp_saliency

SPACE = "nb-bert"
JACOB_K = 1e-5  # the authors' regulariser in −Σ[log(λ+k) + 1/(λ+k)]


MODES = ("train", "eval")
BATCH_DEFAULTS = {"batch_size": 128, "seq_len": 512, "mode": "train"}  # the authors' protocol
# Rows per forward of the gradient passes; None: the whole batch in one forward (13.4 GiB
# at the protocol). Micro-batches give the same sums (module doc, "Micro-batches").
MICRO_BATCH_DEFAULT = None
MLM_MASK_PROB = 0.15  # BERT's and ELECTRA's
MLM_MASK_SEED = 0  # the masked positions are fixed: every architecture sees the same ones


@lru_cache(maxsize=4)
def _cached_batch(batch_size: int, seq_len: int, index: int = 0) -> dict[str, torch.Tensor]:
    from tfnas_ray.data.tokenizer import document_batch

    return document_batch(batch_size=batch_size, seq_len=seq_len, index=index)


@register_batch(SPACE)
def nb_bert_batch(options: Mapping) -> dict:
    """The metric minibatch (cached per process; the tensors are shared, do not mutate):

    - batch_size (128), seq_len (512): the first `batch_size` WikiText-2 train articles,
      `[CLS] … [SEP]`, cut or padded to `seq_len` (`document_batch`);
    - mode: "train" (the authors': dropout on, padding mask ignored) or "eval";
    - index (0): minibatch `index` is the next `batch_size` articles after minibatch
      index−1's (`--batches`);
    - micro_batch (None): rows per forward of the gradient passes (`sum_output`, `mlm`,
      `grasp`); None runs the whole batch at once. Values are the whole batch's (the same
      sums, to round-off; dropout masks are the whole batch's rows), memory ~1/k of it.

    Raises:
        TfnasError: an unknown option or mode.
    """
    from tfnas_ray.errors import TfnasError

    allowed = [*BATCH_DEFAULTS, "index", "micro_batch"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TfnasError(f"nb-bert batch option(s) {unknown} unknown; allowed: {', '.join(allowed)}")
    merged = {**BATCH_DEFAULTS, **options}
    if merged["mode"] not in MODES:
        raise TfnasError(f"--mode {merged['mode']!r} is not one of {', '.join(MODES)}")
    micro_batch = merged.get("micro_batch", MICRO_BATCH_DEFAULT)
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1):
        raise TfnasError(f"--micro-batch must be a positive number of rows, got {micro_batch!r}")
    batch = _cached_batch(int(merged["batch_size"]), int(merged["seq_len"]), int(merged.get("index", 0)))
    return {**batch, "mode": merged["mode"], "micro_batch": micro_batch}


def _inputs(ctx: MetricContext) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(input_ids, attention mask or None, mode) of the context's batch, on its device.
    In train mode the mask is dropped, as the authors' layers ignored it."""
    mode = ctx.batch.get("mode", "eval")
    ids = ctx.batch["input_ids"].to(ctx.device)
    mask = ctx.batch.get("attention_mask")
    return ids, (mask.to(ctx.device) if mask is not None and mode == "eval" else None), mode


_DROPOUT_SIGNATURES = {
    torch.nn.functional.dropout: (("input", "p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False}),
    torch.dropout: (("input", "p", "train"), {}),
}
# Dropout kinds whose masks this module cannot draw on the CPU (none of nb-bert's models
# call them): refused rather than drawn from a device generator without a word.
_OTHER_DROPOUTS = tuple(
    getattr(torch.nn.functional, name)
    for name in ("dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
)


class CpuDropout(TorchFunctionMode):
    """Every `F.dropout` run inside draws its mask from torch's global CPU generator and
    moves it to the input's device, so a GPU run draws the masks a CPU run draws (the
    CUDA generator would give other masks, not round-off).

    The mask is what CPU dropout makes (ATen `_dropout_impl`):
    noise = empty_like(x).bernoulli_(1 − p) ÷ (1 − p), output x · noise — on the CPU the
    values are exactly those of `F.dropout`.

    Micro-batches (`batch_size` given, then `rows(...)` before each forward): the masks
    are the whole batch's. The first forward draws, at each dropout call, the mask of all
    `batch_size` rows (as the whole batch's forward would, in the same order; one bit an
    element is kept) and every forward uses its rows of it, so a micro-batched pass sees
    the same masks as the whole batch. A later forward of the same rows (GraSP's second
    round) sees them again.

    Args:
        batch_size: rows of the whole batch; None: each forward is the whole batch.

    Raises:
        MetricFailure: a dropout kind without a CPU mask here, or (micro-batches) a
            non-contiguous input or call sites that differ between forwards.
    """

    def __init__(self, batch_size: int | None = None):
        super().__init__()
        self._batch_size = batch_size
        self._rows: slice | None = None  # rows of the forward running now (micro-batches)
        self._site = 0  # index of the next dropout call in that forward
        self._keep: list[tuple[tuple[int, ...], torch.Tensor]] = []  # per call site: (row shape, the whole batch's 0/1 mask, bits packed)

    def rows(self, rows: slice) -> None:
        """The next forward runs `rows` of the whole batch."""
        if self._batch_size is None:
            raise ValueError("rows() needs the whole batch's size (CpuDropout(batch_size=...))")
        self._rows, self._site = rows, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUT_SIGNATURES:
            names, defaults = _DROPOUT_SIGNATURES[func]
            bound = {**defaults, **dict(zip(names, args)), **kwargs}
            training = bound.get("training", bound.get("train"))
            return self._dropout(bound["input"], float(bound["p"]), bool(training), bool(bound.get("inplace", False)))
        if func in _OTHER_DROPOUTS:
            raise MetricFailure(f"{func.__name__} has no CPU-drawn mask here; only F.dropout is supported")
        return func(*args, **kwargs)

    def _dropout(self, x: torch.Tensor, p: float, training: bool, inplace: bool) -> torch.Tensor:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        if p == 0.0 or not training or x.numel() == 0:
            return x
        if p == 1.0:
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            return x.mul_(zero) if inplace else x * zero
        if self._rows is None:
            noise = torch.empty_like(x, device="cpu").bernoulli_(1 - p).div_(1 - p)
        else:
            noise = self._site_rows(x, p).to(x.dtype).div_(1 - p)
        noise = noise.to(x.device)
        return x.mul_(noise) if inplace else x * noise

    def _site_rows(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Rows `rows(...)` of the whole batch's 0/1 mask of the next call site (float32, CPU)."""
        site, self._site = self._site, self._site + 1
        if site == len(self._keep):
            if not x.is_contiguous():
                # the whole batch's input would be laid out otherwise: its draws differ
                raise MetricFailure(f"dropout input {tuple(x.shape)} is not contiguous: no micro-batched mask")
            # One draw for the whole batch, as its forward makes. Bernoulli draws do not
            # depend on the dtype they are written in (torch's CPU kernel draws into an
            # int32 buffer, then casts), so int32 avoids a second buffer; kept packed, 8
            # to a byte, packed a few rows at a time.
            drawn = torch.empty((self._batch_size, *x.shape[1:]), dtype=torch.int32).bernoulli_(1 - p)
            flat = drawn.view(self._batch_size, -1)
            step = max(1, (1 << 24) // max(1, flat.shape[1]))
            packed = torch.cat([_pack_codes(flat[i : i + step]) for i in range(0, self._batch_size, step)])
            del drawn, flat
            self._keep.append((tuple(x.shape[1:]), packed))
        shape, packed = self._keep[site]
        if shape != tuple(x.shape[1:]):
            raise MetricFailure(f"dropout call {site} has shape {tuple(x.shape[1:])} here, {shape} before")
        return _unpack_codes(packed[self._rows], math.prod(shape), torch.device("cpu")).view(-1, *shape)


class _Mode:
    """Put the model in the batch's mode; in train mode, draw dropout on the CPU
    (`CpuDropout`) from torch's generator seeded with the architecture's seed (the
    caller's random state is restored), so the same architecture gets the same values on
    every worker and every device.

    `rows(r)` before each forward when the pass runs in micro-batches (`batch_size`)."""

    def __init__(self, model: nn.Module, mode: str, ctx: MetricContext, *, batch_size: int | None = None):
        self._model, self._mode, self._ctx = model, mode, ctx
        self._fork = None
        self._dropout = CpuDropout(batch_size) if mode == "train" else None

    def rows(self, rows: slice) -> None:
        if self._dropout is not None:
            self._dropout.rows(rows)

    def __enter__(self):
        self._model.train(self._mode == "train")
        # the device's generator is forked too: nothing here should draw from it, and if
        # anything does, the caller's state still comes back
        devices = [self._ctx.device] if self._ctx.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self._ctx.seed)
        if self._dropout is not None:
            self._dropout.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self._dropout is not None:
                self._dropout.__exit__(*exc)
        finally:
            return self._fork.__exit__(*exc)


def _row_blocks(batch_size: int, micro_batch: int | None) -> list[slice]:
    """The row ranges of the forwards of a pass: the whole batch, or micro-batches."""
    if micro_batch is None or micro_batch >= batch_size:
        return [slice(0, batch_size)]
    return [slice(start, min(start + micro_batch, batch_size)) for start in range(0, batch_size, micro_batch)]


def _rows_of(tensor: torch.Tensor | None, rows: slice, blocks: list[slice]) -> torch.Tensor | None:
    return tensor if tensor is None or len(blocks) == 1 else tensor[rows]


def _weighted_mean(parts: list[tuple[float, int]]) -> float:
    """Mean of per-micro-batch means weighted by their rows; one part is returned as is."""
    if len(parts) == 1:
        return parts[0][0]
    return sum(value * rows for value, rows in parts) / sum(rows for _, rows in parts)


def _add_grads(total: list | None, grads) -> list:
    if total is None:
        return list(grads)
    return [t if g is None else (g if t is None else t + g) for t, g in zip(total, grads)]


def _wants(ctx: MetricContext, *metrics: str) -> bool:
    """Does any metric scored in this context read this part of a pass? (all when unknown)"""
    return not ctx.wanted or any(m in ctx.wanted for m in metrics)


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
        naswot_kernel: (B, B) Hamming-agreement kernel over all activations (None when
            no requested metric reads it).
    """

    head_confidence: tuple[float, ...]
    softmax_confidence: tuple[float, ...]
    head_importance: tuple[float, ...]
    synaptic_diversity: tuple[float, ...]
    synaptic_saliency: tuple[float, ...]
    activation_distance: tuple[float, ...]
    position_gradient: np.ndarray
    naswot_kernel: np.ndarray | None


def _agreement(codes: torch.Tensor) -> torch.Tensor:
    """K = c cᵀ + (1−c)(1−c)ᵀ for 0/1 rows c (n, m), as float64 (n, n).

    Computed as m − sᵢ − sⱼ + 2 c cᵀ (s = row sums): one matrix product instead of two.
    Products of 0/1 values are exact in float32 while m < 2^24.
    """
    m = codes.shape[1]
    # Row sums in float32 are exact integers (m < 2^24) and avoid a float64 copy of codes.
    s = codes.sum(dim=1).double()
    return m - s[:, None] - s[None, :] + 2.0 * (codes @ codes.T).double()


def _linears(*modules: nn.Module | None) -> list[nn.Linear]:
    return [m for module in modules if module is not None for m in module.modules() if isinstance(m, nn.Linear)]


def _paper_modules(model: nn.Module) -> tuple[list[nn.Linear], list[nn.Linear], list[nn.Linear]]:
    """(projections, operation Linear layers, feed-forward Linear layers), layer order."""
    projections = [getattr(layer.operation, name) for layer in model.layers for name in layer.operation.projections]
    operation = [l for layer in model.layers for l in _linears(layer.operation, layer.operation_output)]
    ffn = [l for layer in model.layers for l in _linears(layer.intermediate, layer.output)]
    return projections, operation, ffn


def _saliency(weight: torch.Tensor, grad: torch.Tensor) -> float:
    return float((weight.detach() * grad).abs().sum())


def _diversity(weight: torch.Tensor, grad: torch.Tensor) -> float:
    w = torch.linalg.matrix_norm(weight.detach().double(), ord="nuc")
    g = torch.linalg.matrix_norm(grad.double(), ord="nuc")
    return float(w * g)


_DIVERSITY = ("synaptic_diversity", "synaptic_diversity_normalized")
_DISTANCE = ("activation_distance", "activation_distance_normalized")


_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_UNPACK = ((torch.arange(256, dtype=torch.uint8)[:, None] & _BITS) != 0).to(torch.float32)  # (256, 8)


def _pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """0/1 rows (b, m) packed 8 to a byte (b, ⌈m/8⌉), on the CPU: the micro-batched
    NASWOT kernel keeps every row's codes (1/32 of float32) until all rows have run."""
    b, m = codes.shape
    padded = nn.functional.pad(codes.to(torch.uint8), (0, (-m) % 8)).view(b, -1, 8)
    return (padded * _BITS.to(codes.device)).sum(dim=-1, dtype=torch.uint8).cpu()


def _unpack_codes(packed: torch.Tensor, m: int, device: torch.device) -> torch.Tensor:
    return _UNPACK.to(device)[packed.to(device).long()].reshape(packed.shape[0], -1)[:, :m]


def _blocked_agreement(packed: list[torch.Tensor], blocks: list[slice], m: int, out: torch.Tensor) -> None:
    """out += `_agreement` of the rows packed per micro-batch, one block pair at a time.
    Every entry is an integer below 2^24 in float32, so the blocks give exactly the
    whole matrix's values."""
    for i, (rows_i, packed_i) in enumerate(zip(blocks, packed)):
        codes_i = _unpack_codes(packed_i, m, out.device)
        s_i = codes_i.sum(dim=1).double()
        for rows_j, packed_j in list(zip(blocks, packed))[i:]:
            codes_j = codes_i if rows_j == rows_i else _unpack_codes(packed_j, m, out.device)
            s_j = codes_j.sum(dim=1).double()
            block = m - s_i[:, None] - s_j[None, :] + 2.0 * (codes_i @ codes_j.T).double()
            out[rows_i, rows_j] += block
            if rows_j != rows_i:
                out[rows_j, rows_i] += block.T


@register_pass(SPACE, "sum_output")
def sum_output_pass(ctx: MetricContext) -> SumOutputPass:
    """Forward on the minibatch with hooks, then ∂R/∂θ of R = Σ last_hidden_state for the
    weights the paper's columns read (autograd.grad: no gradient is accumulated for the
    word embeddings or any parameter no column reads). In micro-batches (the batch's
    `micro_batch`): gradients summed, means weighted by rows, the first sequence's
    activation distance from the first micro-batch, NASWOT's codes kept packed until the
    B × B kernel is formed."""
    model = ctx.model()
    ids, mask, mode = _inputs(ctx)
    B = ids.shape[0]
    blocks = _row_blocks(B, ctx.batch.get("micro_batch"))
    want_kernel = _wants(ctx, "naswot")
    want_distance = _wants(ctx, *_DISTANCE)

    # per micro-batch: one value per hook call, in call order
    head_confidence: list[list[float]] = []
    softmax_confidence: list[list[float]] = []
    activation_distance: list[float] = []
    packed_codes: list[list[torch.Tensor]] = []  # per activation, per micro-batch
    code_width: list[int] = []
    naswot_kernel = torch.zeros(B, B, dtype=torch.float64, device=ctx.device) if want_kernel else None
    rows = blocks[0]
    activation_index = 0

    def projection_hook(module, inputs, output):  # output (B, T, D)
        head_confidence[-1].append(float(output.detach().max(dim=1).values.mean()))

    def activation_hook(module, inputs, output):  # output (B, T, F), after GELU
        nonlocal activation_index
        codes = (output.detach() > 0).to(torch.float32)
        if want_distance and rows.start == 0:
            # the authors read the first sequence, tokens as rows: (T, F) → K (T, T)
            activation_distance.append(float(_agreement(codes[0]).sum()))
        if want_kernel:
            if len(blocks) == 1:
                naswot_kernel.add_(_agreement(codes.reshape(B, -1)))  # (B, T·F) → (B, B)
            else:
                if rows.start == 0:
                    packed_codes.append([])
                    code_width.append(codes[0].numel())
                packed_codes[activation_index].append(_pack_codes(codes.reshape(codes.shape[0], -1)))
        activation_index += 1

    projections, operation_linears, ffn_linears = _paper_modules(model)
    handles = [p.register_forward_hook(projection_hook) for p in projections]
    if want_distance or want_kernel:
        handles += [block.register_forward_hook(activation_hook) for layer in model.layers for block in layer.intermediate.layers]
    position = model.embeddings.position_embeddings.weight
    weights = [l.weight for l in projections + operation_linears + ffn_linears]
    unique = list({id(w): w for w in weights}.values())
    grads = None
    try:
        with _Mode(model, mode, ctx, batch_size=B if len(blocks) > 1 else None) as run:
            for rows in blocks:
                if len(blocks) > 1:
                    run.rows(rows)
                head_confidence.append([])
                activation_index = 0
                out = model(_rows_of(ids, rows, blocks), _rows_of(mask, rows, blocks), output_attentions=True)
                # The authors: torch.max(scores, 1) — axis 1 is the head axis of (B, nh, T, ·).
                softmax_confidence.append([float(s.detach().max(dim=1).values.mean()) for s in out.attentions])
                grads = _add_grads(grads, torch.autograd.grad(out.last_hidden_state.sum(), unique + [position]))
                del out
    finally:
        for handle in handles:
            handle.remove()
    if want_kernel and len(blocks) > 1:
        for packed, width in zip(packed_codes, code_width):
            _blocked_agreement(packed, blocks, width, naswot_kernel)
    sizes = [r.stop - r.start for r in blocks]
    grad_of = {id(w): g for w, g in zip(unique, grads)}
    want_diversity = _wants(ctx, *_DIVERSITY)
    T = ids.shape[1]
    return SumOutputPass(
        head_confidence=tuple(_weighted_mean(list(zip(v, sizes))) for v in zip(*head_confidence)),
        softmax_confidence=tuple(_weighted_mean(list(zip(v, sizes))) for v in zip(*softmax_confidence)),
        head_importance=tuple(_saliency(l.weight, grad_of[id(l.weight)]) for l in projections),
        synaptic_diversity=tuple(_diversity(l.weight, grad_of[id(l.weight)]) for l in operation_linears) if want_diversity else (),
        synaptic_saliency=tuple(_saliency(l.weight, grad_of[id(l.weight)]) for l in ffn_linears),
        activation_distance=tuple(activation_distance),
        position_gradient=grads[-1][:T].detach().double().cpu().numpy(),
        naswot_kernel=naswot_kernel.cpu().numpy() if want_kernel else None,
    )


def mlm_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of the metric batch, drawn from a fixed generator (MLM_MASK_SEED):
    15 % of the real tokens (never [CLS], [SEP] or padding) are chosen; 80 % of those
    become [MASK], 10 % a random token, 10 % stay. Returns (inputs, labels with −100
    where not chosen). A batch without a chosen token gets its first body token chosen."""
    from tfnas_ray.data.tokenizer import CLS, MASK, PAD, SEP

    g = torch.Generator().manual_seed(MLM_MASK_SEED)
    ids = input_ids.cpu()
    eligible = (ids != CLS) & (ids != SEP) & (ids != PAD)
    if attention_mask is not None:
        eligible &= attention_mask.cpu().bool()
    chosen = (torch.rand(ids.shape, generator=g) < MLM_MASK_PROB) & eligible
    if not chosen.any() and eligible.any():  # tiny batches: the loss needs a target
        b, t = eligible.nonzero()[0].tolist()
        chosen[b, t] = True
    roll = torch.rand(ids.shape, generator=g)
    random_ids = torch.randint(5, vocab_size, ids.shape, generator=g)  # never a special token
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs.to(input_ids.device), labels.to(input_ids.device)


def _with_head(ctx: MetricContext, model: nn.Module) -> nn.Module:
    """The encoder with ELECTRA's generator head (tied decoder), the head drawn from a
    generator seeded with the architecture's seed (reproducible, caller's state kept)."""
    from tfnas_ray.training.mlm import MLMModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return MLMModel(model).to(ctx.device)


def _mlm_loss(
    mlm: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None, labels: torch.Tensor, *, chosen_in_batch: int | None = None
) -> torch.Tensor:
    """Mean cross entropy of the head's logits at the chosen positions. For a micro-batch,
    `chosen_in_batch` is the whole batch's number of chosen positions: the micro-batch's
    sum over that, so that the micro-batches' losses add up to the whole batch's."""
    hidden = mlm.encoder(inputs, mask).last_hidden_state  # (B, T, H)
    chosen = labels != -100
    if chosen_in_batch is None:
        return nn.functional.cross_entropy(mlm.head(hidden[chosen]), labels[chosen])
    return nn.functional.cross_entropy(mlm.head(hidden[chosen]), labels[chosen], reduction="sum") / chosen_in_batch


def _micro_losses(mlm, run: "_Mode", blocks: list[slice], inputs, mask, labels):
    """The MLM loss of each forward of a pass (one, or one per micro-batch), computed as
    the iteration reaches it."""
    if len(blocks) == 1:
        yield blocks[0], _mlm_loss(mlm, inputs, mask, labels)
        return
    chosen = int((labels != -100).sum())
    for rows in blocks:
        run.rows(rows)
        yield rows, _mlm_loss(mlm, inputs[rows], _rows_of(mask, rows, blocks), labels[rows], chosen_in_batch=chosen)


@dataclass(frozen=True)
class MlmPass:
    """Gradients of the MLM loss L (see the module doc) on the same batch.

    Attributes:
        head_importance, synaptic_saliency, synaptic_diversity: as in `SumOutputPass`,
            with ∂L/∂W in place of ∂R/∂W.
        position_gradient: ∂L/∂(position embeddings) of the T used positions, (T, E).
        grad_norm: Σ over every parameter tensor of ‖∂L/∂θ‖₂.
        snip: Σ over every parameter of |θ ⊙ ∂L/∂θ|.
        fisher: Σ over FFN activations a (B, T, F) of Σ_units ½·mean_b(Σ_t a ⊙ ∂L/∂a)².
    """

    head_importance: tuple[float, ...]
    synaptic_saliency: tuple[float, ...]
    synaptic_diversity: tuple[float, ...]
    position_gradient: np.ndarray
    grad_norm: float
    snip: float
    fisher: float


@register_pass(SPACE, "mlm")
def mlm_pass(ctx: MetricContext) -> MlmPass:
    """Forward of the encoder and its MLM head on the masked batch, ∂L/∂θ for every
    parameter and ∂L/∂a for every feed-forward activation, in one autograd.grad."""
    mlm = _with_head(ctx, ctx.model())
    ids, mask, mode = _inputs(ctx)
    inputs, labels = mlm_inputs(ids, ctx.batch.get("attention_mask"), vocab_size=mlm.head.decoder.out_features)
    B = ids.shape[0]
    blocks = _row_blocks(B, ctx.batch.get("micro_batch"))
    activations: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda m, i, out: activations.append(out))
        for layer in mlm.encoder.layers
        for block in layer.intermediate.layers
    ]
    params = list(mlm.parameters())  # the tied embedding/decoder weight once
    param_grads_list = None
    fisher = 0.0
    fisher_sums: list[torch.Tensor] = []  # micro-batches: per activation, Σ_b (Σ_t a ⊙ ∂L/∂a)², (F,)
    try:
        with _Mode(mlm, mode, ctx, batch_size=B if len(blocks) > 1 else None) as run:
            for _, loss in _micro_losses(mlm, run, blocks, inputs, mask, labels):
                grads = torch.autograd.grad(loss, params + activations, allow_unused=True)
                param_grads_list = _add_grads(param_grads_list, grads[: len(params)])
                for index, (a, g) in enumerate(zip(activations, grads[len(params):])):
                    per_sample = (a.detach() * g).sum(dim=1)  # (B, F): Σ over tokens
                    if len(blocks) == 1:
                        fisher += float(0.5 * per_sample.double().pow(2).mean(dim=0).sum())
                    elif index == len(fisher_sums):
                        fisher_sums.append(per_sample.double().pow(2).sum(dim=0))
                    else:
                        fisher_sums[index] += per_sample.double().pow(2).sum(dim=0)
                activations.clear()
                del loss, grads
    finally:
        for handle in handles:
            handle.remove()
    for sums in fisher_sums:
        fisher += float(0.5 * (sums / B).sum())
    grads = param_grads_list
    param_grads = dict(zip(map(id, params), grads))
    projections, operation_linears, ffn_linears = _paper_modules(mlm.encoder)

    def grad(p):
        g = param_grads[id(p)]
        return torch.zeros_like(p) if g is None else g

    reached = [(p, g) for p, g in zip(params, grads) if g is not None]
    T = ids.shape[1]
    return MlmPass(
        head_importance=tuple(_saliency(l.weight, grad(l.weight)) for l in projections),
        synaptic_saliency=tuple(_saliency(l.weight, grad(l.weight)) for l in ffn_linears),
        synaptic_diversity=tuple(_diversity(l.weight, grad(l.weight)) for l in operation_linears)
        if _wants(ctx, "synaptic_diversity_mlm", "synaptic_diversity_mlm_normalized")
        else (),
        position_gradient=grad(mlm.encoder.embeddings.position_embeddings.weight)[:T].detach().double().cpu().numpy(),
        grad_norm=float(sum(g.double().norm() for _, g in reached)),
        snip=float(sum((p.detach().double() * g.double()).abs().sum() for p, g in reached)),
        fisher=fisher,
    )


@register_pass(SPACE, "grasp")
def grasp_pass(ctx: MetricContext) -> float:
    """−Σ θ ⊙ (H g) over every parameter, g = ∂L/∂θ (detached), H the Hessian of the MLM
    loss: one forward with create_graph, z = Σ g·∂L/∂θ, Hg = ∂z/∂θ (as zero-cost-nas)."""
    mlm = _with_head(ctx, ctx.model())
    ids, mask, mode = _inputs(ctx)
    inputs, labels = mlm_inputs(ids, ctx.batch.get("attention_mask"), vocab_size=mlm.head.decoder.out_features)
    params = list(mlm.parameters())
    blocks = _row_blocks(ids.shape[0], ctx.batch.get("micro_batch"))
    with _Mode(mlm, mode, ctx, batch_size=ids.shape[0] if len(blocks) > 1 else None) as run:
        if len(blocks) == 1:
            return grasp_saliency(_mlm_loss(mlm, inputs, mask, labels), params)
        # Micro-batches: g = Σ_k ∂L_k/∂θ first, then H g = Σ_k ∂(g·∂L_k/∂θ)/∂θ (H is
        # linear in the loss), each micro-batch's forward run once per round.
        g = None
        for _, loss in _micro_losses(mlm, run, blocks, inputs, mask, labels):
            g = _add_grads(g, torch.autograd.grad(loss, params, allow_unused=True))
        reached = [(p, gp.detach()) for p, gp in zip(params, g) if gp is not None]
        hessian_g = None
        for _, loss in _micro_losses(mlm, run, blocks, inputs, mask, labels):
            first = torch.autograd.grad(loss, [p for p, _ in reached], create_graph=True, allow_unused=True)
            terms = [(gp * f).sum() for (_, gp), f in zip(reached, first) if f is not None and f.requires_grad]
            if terms:
                hg = torch.autograd.grad(sum(terms), [p for p, _ in reached], allow_unused=True)
                hessian_g = _add_grads(hessian_g, hg)
    total = 0.0
    for (weight, _), hg in zip(reached, hessian_g or []):
        if hg is not None:
            total -= float((weight.detach().double() * hg.double()).sum())
    return total


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


class EncoderLM(nn.Module):
    """An nb-bert encoder with ELECTRA's generator head (`MLMModel`) as the generic
    metrics probe a model: token ids (B, T) (and the padding mask) in, masked-LM logits
    (B, T, V) out, with the last hidden state (B, T, H). The encoder itself returns
    `NasBertOutput` and has no vocabulary logits.

    The head runs only when the logits are read (`LMOutput(head=…)`): it is no part of
    the architecture (ELECTRA discards the generator; GLUE fine-tunes the encoder), so
    latency and forward memory measure the encoder alone; the LM-loss metrics (and
    `peak_memory_mb`, a training step of that loss) include it."""

    takes_attention_mask = True  # the probe passes the batch's mask (`Probe._kwargs`)

    def __init__(self, mlm: nn.Module):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        from tfnas_ray.metrics.capability import LMOutput

        if attention_mask is not None and attention_mask.shape[0] != input_ids.shape[0]:
            attention_mask = None  # a probe's one-sequence call (synflow): no padding to skip
        hidden = self.mlm.encoder(input_ids, attention_mask).last_hidden_state  # (B, T, H)
        return LMOutput(head=self.mlm.head, hidden_states=(hidden,))  # logits (B, T, V) when read


@register_pass(SPACE, "probe")
def probe_pass(ctx: MetricContext):
    """A `Probe` of the architecture's encoder with its MLM head (`EncoderLM`; head drawn
    as the `mlm` pass draws it) on the metric batch, masked-LM task: what the generic
    metrics read. The probe runs in eval mode; the padding mask applies in "eval" mode
    only, as in every nb-bert pass."""
    from tfnas_ray.metrics.capability import Probe

    ids, mask, _ = _inputs(ctx)
    return Probe(EncoderLM(_with_head(ctx, ctx.model())), ids, mask, task="masked-lm", device=ctx.device)


# ---- the paper's columns ---------------------------------------------------------------


def _total(values: tuple[float, ...], what: str) -> float:
    return check_finite(sum(values), what)


def _mean(values: tuple[float, ...], what: str) -> float:
    if not values:
        raise MetricFailure(f"{what}: the model has no such modules")
    return check_finite(sum(values) / len(values), what)


_PAPER = dict(space=SPACE, direction=Direction.HIGHER, needs=("sum_output",), cost="forward+backward")


@register_metric("head_importance", reads=("module", "attentions"), summary="Σ|W⊙∂R/∂W| over operation projections, R = Σ output (Michel et al.; paper)", **_PAPER)
def head_importance(ctx: MetricContext) -> float:
    """Head importance: Σ over each layer's projections (module doc) of Σ|W ⊙ ∂R/∂W|,
    R = Σ output. Weights only. Every operation has projections (LT: its input dense)."""
    return _total(ctx.run_pass("sum_output").head_importance, "head importance")


@register_metric("head_importance_normalized", reads=("module", "attentions"), summary="head_importance / number of projections (paper)", **_PAPER)
def head_importance_normalized(ctx: MetricContext) -> float:
    """`head_importance` divided by the number of projection Linear layers."""
    return _mean(ctx.run_pass("sum_output").head_importance, "normalised head importance")


@register_metric("head_confidence", reads=("attentions",), summary="Σ over projections of mean(max over sequence of output) (Voita et al.; paper)", **_PAPER)
def head_confidence(ctx: MetricContext) -> float:
    """Head confidence: for each projection output y (B, T, D), mean over (B, D) of
    max_t y; summed over projections (all operations have them). One deviation: the
    authors hooked attributes named query/key/value/input/weight, which missed DSC's
    conv_out_layer; it counts here, as it did in their head importance."""
    return _total(ctx.run_pass("sum_output").head_confidence, "head confidence")


@register_metric("head_confidence_normalized", reads=("attentions",), summary="head_confidence / number of projections (paper)", **_PAPER)
def head_confidence_normalized(ctx: MetricContext) -> float:
    """`head_confidence` divided by the number of projections."""
    return _mean(ctx.run_pass("sum_output").head_confidence, "normalised head confidence")


@register_metric("softmax_confidence", reads=("attentions",), summary="Σ over layers of mean(max over axis 1 of attention scores) (paper)", **_PAPER)
def softmax_confidence(ctx: MetricContext) -> float:
    """Softmax confidence as the authors computed it: for each layer's scores
    (B, nh, T, ·), `torch.max(scores, 1)` — the max over the *head* axis — then the
    mean; summed over layers. SA and DSC give their attention probabilities (DSC: its
    attention half). LT has none: like the authors' hooked softmax, its scores are
    softmax(transform, dim=−1) over the head dimension (operations.py)."""
    return _total(ctx.run_pass("sum_output").softmax_confidence, "softmax confidence")


@register_metric("softmax_confidence_normalized", reads=("attentions",), summary="softmax_confidence / number of layers (paper)", **_PAPER)
def softmax_confidence_normalized(ctx: MetricContext) -> float:
    """`softmax_confidence` divided by the number of layers (every layer has scores)."""
    return _mean(ctx.run_pass("sum_output").softmax_confidence, "normalised softmax confidence")


@register_metric("synaptic_saliency", reads=("module",), summary="Σ|W⊙∂R/∂W| over feed-forward Linear layers (Tanaka et al.; paper)", **_PAPER)
def synaptic_saliency(ctx: MetricContext) -> float:
    """Synaptic saliency of the feed-forward networks: Σ|W ⊙ ∂R/∂W| over every stacked
    intermediate dense and the down-projection of every layer. Independent of the operation."""
    return _total(ctx.run_pass("sum_output").synaptic_saliency, "synaptic saliency")


@register_metric("synaptic_saliency_normalized", reads=("module",), summary="synaptic_saliency / number of feed-forward Linear layers (paper)", **_PAPER)
def synaptic_saliency_normalized(ctx: MetricContext) -> float:
    """`synaptic_saliency` divided by the number of feed-forward Linear layers."""
    return _mean(ctx.run_pass("sum_output").synaptic_saliency, "normalised synaptic saliency")


@register_metric("synaptic_diversity", reads=("module",), summary="Σ ‖W‖_nuc·‖∂R/∂W‖_nuc over operation Linear layers (Zhou et al.; paper)", **_PAPER)
def synaptic_diversity(ctx: MetricContext) -> float:
    """Synaptic diversity: Σ over every Linear of each operation and its output block
    of ‖W‖_* · ‖∂R/∂W‖_* (nuclear norms). DSC's convolutions are not Linear and, as in
    the authors' code, do not count."""
    return _total(ctx.run_pass("sum_output").synaptic_diversity, "synaptic diversity")


@register_metric("synaptic_diversity_normalized", reads=("module",), summary="synaptic_diversity / number of operation Linear layers (paper)", **_PAPER)
def synaptic_diversity_normalized(ctx: MetricContext) -> float:
    """`synaptic_diversity` divided by the number of operation Linear layers."""
    return _mean(ctx.run_pass("sum_output").synaptic_diversity, "normalised synaptic diversity")


@register_metric("activation_distance", reads=("activations",), summary="Σ over FFN activations of Σ_ij[c cᵀ + (1−c)(1−c)ᵀ], first sequence (Mellor et al.; paper)", **_PAPER)
def activation_distance(ctx: MetricContext) -> float:
    """Activation distance as the authors computed it: for each feed-forward GELU output
    of the first sequence, codes c = 1[y > 0] (T, F), K = c cᵀ + (1−c)(1−c)ᵀ (T × T,
    tokens as rows), summed over all entries and all activations — a sum, not a log-det.
    (The authors' value is this times the number of hooks their notebook had left on a
    shared GELU module, which grew with the row index; the normalised column is unaffected.)"""
    return _total(ctx.run_pass("sum_output").activation_distance, "activation distance")


@register_metric("activation_distance_normalized", reads=("activations",), summary="activation_distance / number of activations (paper)", **_PAPER)
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


@register_metric("jacob_cov", reads=("module", "input_embeddings"), summary="−Σ[log(λ+k)+1/(λ+k)] of corrcoef of ∂R/∂(position embeddings), per embedding dim (paper)", **_PAPER)
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
    reads=("spec",),
    direction=Direction.HIGHER,
    baseline=True,
    summary="number of parameters, embeddings included",
    cost="none (counted from the config)",
)
def params(ctx: MetricContext) -> float:
    """Every parameter of the encoder once: embeddings, projection, all layers — counted
    from the config and the reading (`params.count_parameters`), without building it."""
    from tfnas_ray.spaces.nasbench_bert import SPACE as NB_BERT, resolve_reading

    options = {**getattr(ctx.batch, "model_options", {}), **ctx.options}
    reading = resolve_reading(
        options.get("reading"), as_trained=bool(options.get("as_trained")), as_scored=bool(options.get("as_scored"))
    )
    return float(NB_BERT.count_parameters(ctx.spec, reading=reading, vocab_size=options.get("vocab_size")))


# ---- corrected gradient columns: the paper's formulas on the MLM loss -------------------

_MLM = dict(space=SPACE, direction=Direction.HIGHER, needs=("mlm",), cost="forward+backward (MLM loss)")


@register_metric("head_importance_mlm", reads=("lm_loss", "attentions"), summary="Σ|W⊙∂L/∂W| over operation projections, L = MLM loss of the generator head (corrected head_importance)", **_MLM)
def head_importance_mlm(ctx: MetricContext) -> float:
    """`head_importance` with the MLM loss L in place of the degenerate R = Σ output."""
    return _total(ctx.run_pass("mlm").head_importance, "head importance (MLM)")


@register_metric("head_importance_mlm_normalized", reads=("lm_loss", "attentions"), summary="head_importance_mlm / number of projections", **_MLM)
def head_importance_mlm_normalized(ctx: MetricContext) -> float:
    return _mean(ctx.run_pass("mlm").head_importance, "normalised head importance (MLM)")


@register_metric("synaptic_saliency_mlm", reads=("lm_loss",), summary="Σ|W⊙∂L/∂W| over feed-forward Linear layers, L = MLM loss (corrected synaptic_saliency)", **_MLM)
def synaptic_saliency_mlm(ctx: MetricContext) -> float:
    """`synaptic_saliency` with the MLM loss L."""
    return _total(ctx.run_pass("mlm").synaptic_saliency, "synaptic saliency (MLM)")


@register_metric("synaptic_saliency_mlm_normalized", reads=("lm_loss",), summary="synaptic_saliency_mlm / number of feed-forward Linear layers", **_MLM)
def synaptic_saliency_mlm_normalized(ctx: MetricContext) -> float:
    return _mean(ctx.run_pass("mlm").synaptic_saliency, "normalised synaptic saliency (MLM)")


@register_metric("synaptic_diversity_mlm", reads=("lm_loss",), summary="Σ ‖W‖_nuc·‖∂L/∂W‖_nuc over operation Linear layers, L = MLM loss (corrected synaptic_diversity)", **_MLM)
def synaptic_diversity_mlm(ctx: MetricContext) -> float:
    """`synaptic_diversity` with the MLM loss L."""
    return _total(ctx.run_pass("mlm").synaptic_diversity, "synaptic diversity (MLM)")


@register_metric("synaptic_diversity_mlm_normalized", reads=("lm_loss",), summary="synaptic_diversity_mlm / number of operation Linear layers", **_MLM)
def synaptic_diversity_mlm_normalized(ctx: MetricContext) -> float:
    return _mean(ctx.run_pass("mlm").synaptic_diversity, "normalised synaptic diversity (MLM)")


@register_metric("jacob_cov_mlm", reads=("lm_loss", "input_embeddings"), summary="−Σ[log(λ+k)+1/(λ+k)] of corrcoef of ∂L/∂(position embeddings), L = MLM loss (corrected jacob_cov)", **_MLM)
def jacob_cov_mlm(ctx: MetricContext) -> float:
    """`jacob_cov` (the paper's Jacobian score) on ∂L/∂P of the MLM loss."""
    return jacobian_covariance_score(ctx.run_pass("mlm").position_gradient.T)


# ---- standard proxies ------------------------------------------------------------------


# version 2: L was Σ output (degenerate under the last LayerNorm), now the MLM loss
@register_metric("grad_norm", reads=("lm_loss",), summary="Σ_θ ‖∂L/∂θ‖₂ over every parameter, L = MLM loss of the generator head (Abdelfattah et al.)", version=2, **_MLM)
def grad_norm(ctx: MetricContext) -> float:
    """Σ over every parameter tensor (encoder and MLM head, the tied embedding once) of
    the L2 norm of ∂L/∂θ, L the MLM loss (module doc)."""
    return check_finite(ctx.run_pass("mlm").grad_norm, "grad_norm")


# version 2: as grad_norm, the MLM loss instead of Σ output
@register_metric("snip", reads=("lm_loss",), summary="Σ|θ⊙∂L/∂θ| over every parameter, L = MLM loss (Lee et al.)", version=2, **_MLM)
def snip(ctx: MetricContext) -> float:
    """Σ over every parameter of |θ ⊙ ∂L/∂θ|, L the MLM loss."""
    return check_finite(ctx.run_pass("mlm").snip, "snip")


@register_metric("fisher", reads=("lm_loss", "activations"), summary="Σ over FFN activations and units of ½·mean_b(Σ_t a⊙∂L/∂a)², L = MLM loss (Theis et al.; Turner et al.)", **_MLM)
def fisher(ctx: MetricContext) -> float:
    """Fisher, as zero-cost-nas: for each feed-forward GELU output a (B, T, F),
    g = Σ_t a ⊙ ∂L/∂a (B, F), score Σ_units ½·mean_b g², summed over activations."""
    return check_finite(ctx.run_pass("mlm").fisher, "fisher")


@register_metric(
    "grasp",
    space=SPACE,
    reads=("lm_loss",),
    direction=Direction.HIGHER,
    summary="−Σ θ⊙(H g), g = ∂L/∂θ, every parameter, L = MLM loss (Wang et al., as zero-cost-nas ranks it)",
    needs=("grasp",),
    cost="forward + backward with create_graph + Hessian-vector product",
)
def grasp(ctx: MetricContext) -> float:
    """GraSP on the MLM loss; see `grasp_pass`."""
    return check_finite(ctx.run_pass("grasp"), "grasp")


@register_metric(
    "synflow",
    space=SPACE,
    reads=("module", "input_embeddings"),
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


@register_metric("naswot", reads=("activations",), summary="log|det K|, K = Hamming agreement of GELU codes between sequences (Mellor et al.)", **_PAPER)
def naswot(ctx: MetricContext) -> float:
    """NASWOT: c_b = 1[y > 0] over every feed-forward GELU output of sequence b
    (flattened over tokens and units); K = Σ_layers [c cᵀ + (1−c)(1−c)ᵀ] (B × B);
    score = log|det K|. Operations without GELU add nothing (only feed-forward layers do).

    Raises:
        MetricFailure: K singular (two sequences with identical codes).
    """
    kernel = ctx.run_pass("sum_output").naswot_kernel
    if kernel is None:  # the pass ran for other metrics first, without the kernel
        raise MetricFailure("NASWOT kernel was not computed by the shared pass")
    sign, logdet = np.linalg.slogdet(kernel)
    if sign == 0:
        raise MetricFailure("NASWOT kernel is singular")
    return check_finite(logdet, "naswot")


# ---- the check that the paper's gradient columns measure round-off ----------------------

# A column is flagged when its float64 value is below this fraction of its float32 value:
# float32 then returns at least 99.9 % rounding error. A true gradient agrees between the
# two precisions to ~1e-6; the paper's R = Σ output gives ratios near 1e-9.
DEGENERACY_RATIO = 1e-3
# metric columns that read each gradient quantity of the `sum_output` pass
GRADIENT_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "head_importance": ("head_importance", "head_importance_normalized"),
    "synaptic_saliency": ("synaptic_saliency", "synaptic_saliency_normalized"),
    "synaptic_diversity": ("synaptic_diversity", "synaptic_diversity_normalized"),
    "position_gradient": ("jacob_cov",),
}


@dataclass(frozen=True)
class GradientCheck:
    """One gradient quantity of the paper's objective, in float32 and float64.

    Attributes:
        quantity: "head_importance", "synaptic_saliency", "synaptic_diversity" (as their
            columns) or "position_gradient" (Σ|∂R/∂P|, what jacob_cov reads).
        float32, float64: its value computed in each precision on the same model and batch.
        degenerate: float64 < DEGENERACY_RATIO · float32 (float32 is round-off).
        columns: the metric columns that read it.
    """

    quantity: str
    float32: float
    float64: float
    degenerate: bool
    columns: tuple[str, ...]

    def describe(self) -> str:
        verdict = "round-off: the column ranks noise" if self.degenerate else "a real gradient"
        return f"{self.quantity}: float32 {self.float32:.3g}, float64 {self.float64:.3g} → {verdict}"


def gradient_degeneracy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[GradientCheck]:
    """Recompute the paper's gradient quantities of R = Σ last_hidden_state in float32
    and in float64 on copies of `model` (eval mode: no dropout, so both see one function).

    R is H·Σβ of the last LayerNorm for every input, so its true gradient below that
    LayerNorm is zero; float64 shows it (values ~1e-14 where float32 gives ~1e-5).
    """
    import copy

    values: dict[torch.dtype, dict[str, float]] = {}
    for dtype in (torch.float32, torch.float64):
        m = copy.deepcopy(model).to(dtype).eval()
        projections, operation, ffn = _paper_modules(m)
        position = m.embeddings.position_embeddings.weight
        weights = list({id(l.weight): l.weight for l in projections + operation + ffn}.values())
        r = m(input_ids, attention_mask).last_hidden_state.sum()
        grads = torch.autograd.grad(r, weights + [position])
        grad_of = {id(w): g for w, g in zip(weights, grads)}
        T = input_ids.shape[1]
        values[dtype] = {
            "head_importance": sum(_saliency(l.weight, grad_of[id(l.weight)]) for l in projections),
            "synaptic_saliency": sum(_saliency(l.weight, grad_of[id(l.weight)]) for l in ffn),
            "synaptic_diversity": sum(_diversity(l.weight, grad_of[id(l.weight)]) for l in operation),
            "position_gradient": float(grads[-1][:T].abs().sum()),
        }
    return [
        GradientCheck(
            quantity=q,
            float32=values[torch.float32][q],
            float64=values[torch.float64][q],
            degenerate=values[torch.float64][q] < DEGENERACY_RATIO * values[torch.float32][q],
            columns=GRADIENT_COLUMNS[q],
        )
        for q in GRADIENT_COLUMNS
    ]
