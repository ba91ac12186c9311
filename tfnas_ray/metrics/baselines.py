"""Trivial baselines: size and shape of an architecture, read from its spec alone.

A training-free metric is only worth its cost if it ranks architectures better than
what one gets for free: the parameter count, the depth, the width, the FLOPs (White et
al., "A Deeper Look at Zero-Cost Proxies", 2022, found such counts beat most zero-cost
proxies). These metrics are those free answers. Each is computed from the spec without
building a model (`cost` "none"), and each is registered with `baseline=True`, so that
every comparison (`correlate`, `reproduce`, `ensemble`) sets the other metrics against
the best of them.

Direction, declared a priori and never fitted: the conventional prior that a bigger
model — deeper, wider, more operations, more compute per token — trains to a lower loss
and a higher GLUE score. Every baseline here is therefore `higher-is-better`.

nb-bert baselines read the architecture *as described* by its config (model.py's
DESCRIBED reading): the reading a metric's model is built under (e.g. the authors'
as-scored models, all 256 wide) is a fact of how the authors scored, not of the
architecture. `params` (registered in transformer.py / rnn_paper.py) is the exception:
it counts the model that was scored, as it always has.

FLOPs convention (both spaces): forward floating-point operations per token, 2 per
multiply-accumulate of every matrix product whose size depends on the architecture —
dense layers (weights only), attention scores and context, the LT transforms as the
matrix products they equal, convolutions. Biases, normalisation, activations, softmax,
element-wise operations and embedding lookups are not counted (Kaplan et al. 2020,
"Scaling laws", count the same way: C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tfnas_ray.metrics import Direction, MetricContext, register_metric

NB_BERT = "nb-bert"
NB_NLP = "nb-nlp"

_NONE = "none (read from the spec)"
# The `device` of baseline rows computed outside a scorer (`baseline_scores`): no device
# computed them, so they mix with any device's values.
NO_DEVICE = "none"


# ---- nb-bert ---------------------------------------------------------------------------


def _bert_config(ctx: MetricContext):
    from tfnas_ray.spaces.nasbench_bert.config import NasBertConfig

    return NasBertConfig.from_spec(ctx.spec)


def bert_operation_macs(layer, hidden_size: int, seq_len: int) -> int:
    """Multiply-accumulates per token of one layer's token-mixing operation (described
    reading), T = `seq_len` tokens attended to / transformed over.

    - SA SDP: Q, K, V (3·H²) + scores Q·Kᵀ (T·H) + context P·V (T·H); WMA adds the H×H query map.
    - LT: its dense (H²) + the transform along the sequence (T per channel: T·H) and
      along each head's hs channels (hs per channel: H·hs); DFT and DCT alike.
    - DSC (ConvBERT, head ratio 2, nA attention heads of size hs, A = nA·hs = H/2):
      Q, K, V (3·H·A) + separable key conv (depthwise H·k, pointwise H·A) + kernel
      generator (A·nA·k) + conv_out (H·A) + the dynamic convolution (A·k) + scores and
      context over the attention half (2·T·A).
    """
    H, T = hidden_size, seq_len
    op, heads = layer.operation_type, layer.num_operation_heads
    if op == "SA":
        return 3 * H * H + 2 * T * H + (H * H if layer.operation_parameter == "WMA" else 0)
    if op == "LT":
        return H * H + T * H + H * (H // heads)
    attention_heads = max(1, heads // 2)  # as transformers' ConvBertSelfAttention
    A = attention_heads * ((H // attention_heads) // 2)
    k = int(layer.operation_parameter)
    return 3 * H * A + (H * k + H * A) + A * attention_heads * k + H * A + A * k + 2 * T * A


def bert_flops_per_token(config, seq_len: int) -> int:
    """Forward FLOPs per token of the described encoder at sequence length `seq_len`:
    2 × (embedding projection E·H when H ≠ E + per layer: operation, its output dense H²,
    the feed-forward stack H → F₁ → … → Fₙ → H)."""
    from tfnas_ray.spaces.nasbench_bert.params import EMBEDDING_SIZE

    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    H = config.hidden_size
    macs = EMBEDDING_SIZE * H if H != EMBEDDING_SIZE else 0
    for layer in config.encoder_layers:
        macs += bert_operation_macs(layer, H, seq_len) + H * H
        widths = [H] + [layer.feed_forward_dimension] * layer.num_feed_forward + [H]
        macs += sum(a * b for a, b in zip(widths, widths[1:]))
    return 2 * macs


def _seq_len(ctx: MetricContext) -> int:
    """Tokens per sequence of the context's metric batch (the scoring length)."""
    return int(ctx.batch["input_ids"].shape[1])


_BERT = dict(space=NB_BERT, reads=("spec",), direction=Direction.HIGHER, cost=_NONE, baseline=True)


@register_metric("num_layers", summary="number of layers (baseline; deeper predicts better)", **_BERT)
def num_layers_bert(ctx: MetricContext) -> float:
    """Encoder layers of the config (2 or 4 in the published space)."""
    return float(len(_bert_config(ctx).encoder_layers))


@register_metric("hidden_size", summary="hidden size as described (baseline; wider predicts better)", **_BERT)
def hidden_size_bert(ctx: MetricContext) -> float:
    """The config's hidden size (128 or 256), whatever reading the model is built under."""
    return float(_bert_config(ctx).hidden_size)


@register_metric("num_heads", summary="Σ over layers of the operation's heads (baseline)", **_BERT)
def num_heads_bert(ctx: MetricContext) -> float:
    """Σ num_operation_heads over the layers (LT and DSC layers count their heads too)."""
    return float(sum(layer.num_operation_heads for layer in _bert_config(ctx).encoder_layers))


@register_metric("ffn_width", summary="Σ over layers of feed_forward_dimension × num_feed_forward (baseline)", **_BERT)
def ffn_width_bert(ctx: MetricContext) -> float:
    """Total width of the feed-forward layers: Σ over layers of F × (stacked layers)."""
    return float(sum(l.feed_forward_dimension * l.num_feed_forward for l in _bert_config(ctx).encoder_layers))


@register_metric(
    "flops_per_token",
    summary="forward FLOPs per token at the metric batch's sequence length, described encoder (baseline)",
    **_BERT,
)
def flops_per_token_bert(ctx: MetricContext) -> float:
    """`bert_flops_per_token` of the described config at the batch's sequence length."""
    return float(bert_flops_per_token(_bert_config(ctx), _seq_len(ctx)))


# ---- nb-nlp ----------------------------------------------------------------------------


def _recipe(ctx: MetricContext):
    from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe

    return parse_recipe(ctx.spec)


def cell_depth(recipe) -> int:
    """Nodes on the longest path from a step input (`x`, `h_prev_*`) to an output
    (`h_new_*`): an input has depth 0, a node 1 + the deepest of its inputs."""
    depth: dict[str, int] = {}
    for name in recipe.order:  # every input computed before its use
        node = recipe.node(name)
        depth[name] = 1 + max(depth.get(i, 0) for i in node.inputs)
    return max(depth[f"h_new_{i}"] for i in range(recipe.hidden_tuple_size))


def rnn_flops_per_token(recipe, layer_sizes: Sequence[tuple[int, int]]) -> int:
    """Forward FLOPs per token of the recurrent layers: 2 × Σ over layers (input size I,
    hidden size H) and over the computed linear nodes of Σ over their inputs of H·I
    (input `x`) or H·H (any other input). The embedding and the decoder, the same for
    every architecture, are left out; so are nodes no output depends on (never run)."""
    macs = 0
    for input_size, hidden_size in layer_sizes:
        for node in recipe.nodes:
            if node.op == "linear" and node.name in recipe.live:
                macs += sum(hidden_size * (input_size if i == "x" else hidden_size) for i in node.inputs)
    return 2 * macs


_NLP = dict(space=NB_NLP, reads=("spec",), direction=Direction.HIGHER, cost=_NONE, baseline=True)


@register_metric("cell_nodes", summary="computed nodes of the cell, inputs excluded (baseline)", **_NLP)
def cell_nodes(ctx: MetricContext) -> float:
    """Nodes that some output depends on (`x` and `h_prev_*` not counted)."""
    return float(len(_recipe(ctx).live))


@register_metric("linear_nodes", summary="computed linear operations of the cell (baseline)", **_NLP)
def linear_nodes(ctx: MetricContext) -> float:
    """Linear nodes that some output depends on."""
    recipe = _recipe(ctx)
    return float(sum(1 for node in recipe.nodes if node.op == "linear" and node.name in recipe.live))


@register_metric("cell_depth", summary="nodes on the longest input→output path of the cell (baseline)", **_NLP)
def cell_depth_metric(ctx: MetricContext) -> float:
    """`cell_depth` of the recipe."""
    return float(cell_depth(_recipe(ctx)))


@register_metric(
    "flops_per_token",
    summary="forward FLOPs per token of the three recurrent layers' linear nodes (baseline)",
    **_NLP,
)
def flops_per_token_rnn(ctx: MetricContext) -> float:
    """`rnn_flops_per_token` of the recipe in the model the context builds (400/600/400)."""
    from tfnas_ray.spaces.nasbench_nlp.model import LMConfig

    options = {**getattr(ctx.batch, "model_options", {}), **ctx.options}
    config = LMConfig(**{"ntoken": 1, **{k: v for k, v in options.items() if k != "ntoken"}})
    return float(rnn_flops_per_token(_recipe(ctx), config.layer_sizes()))


# ---- baselines of a whole archs table ---------------------------------------------------


# ---- hf (Hugging Face families) ----------------------------------------------------------
# Read from the config the spec describes (transformers' standard attribute names, which
# every family's config maps its own onto: GPT-2's n_layer is num_hidden_layers).
# `params` and `flops_per_token` are counted from the model (metrics/capability.py).

HF = "hf"
_HF = dict(space=HF, reads=("spec",), direction=Direction.HIGHER, cost=_NONE, baseline=True)


def _hf_config(ctx: MetricContext):
    from tfnas_ray.spaces.hf import HfSpec, make_config

    spec = HfSpec.parse(ctx.spec)
    return make_config(spec.model_type, spec.config, where="hf spec")


def hf_ffn_width(config) -> int:
    """The feed-forward width of one layer: `intermediate_size`, or GPT-2's `n_inner`
    (None means 4 × the width, as GPT2MLP builds it)."""
    width = getattr(config, "intermediate_size", None)
    if width is None and hasattr(config, "n_inner"):
        width = config.n_inner if config.n_inner is not None else 4 * config.hidden_size
    if width is None:
        from tfnas_ray.errors import TfnasError

        raise TfnasError(f"{type(config).__name__} names no feed-forward width (intermediate_size / n_inner)")
    return int(width)


@register_metric("num_layers", summary="number of layers (baseline; deeper predicts better)", **_HF)
def num_layers_hf(ctx: MetricContext) -> float:
    return float(_hf_config(ctx).num_hidden_layers)


@register_metric("hidden_size", summary="hidden size as described (baseline; wider predicts better)", **_HF)
def hidden_size_hf(ctx: MetricContext) -> float:
    return float(_hf_config(ctx).hidden_size)


@register_metric("num_heads", summary="Σ over layers of the attention heads (baseline)", **_HF)
def num_heads_hf(ctx: MetricContext) -> float:
    config = _hf_config(ctx)
    return float(config.num_hidden_layers * config.num_attention_heads)


@register_metric("ffn_width", summary="Σ over layers of the feed-forward width, intermediate_size or n_inner (baseline)", **_HF)
def ffn_width_hf(ctx: MetricContext) -> float:
    config = _hf_config(ctx)
    return float(config.num_hidden_layers * hf_ffn_width(config))


@register_metric(
    "decoder_params",
    summary="parameters outside every embedding table and the LM head (Lightweight Transformer Search's proxy; baseline)",
    **_HF,
)
def decoder_params_hf(ctx: MetricContext) -> float:
    """Σ numel of the parameters of everything but `nn.Embedding` modules (token,
    position, type) and the output projection (tied or not): the non-embedding count
    that Archai's Lightweight Transformer Search ranks by. Counted on the meta device,
    so nothing is allocated or drawn."""
    import torch.nn as nn

    from tfnas_ray.spaces.hf import HfSpec, build_model

    spec = HfSpec.parse(ctx.spec)
    model = build_model(spec.model_type, spec.task, spec.config, device="meta")
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings()
    if head is not None:
        excluded |= {id(p) for p in head.parameters()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in excluded:
            seen.add(id(p))
            total += p.numel()
    return float(total)


def baseline_names(space: str) -> list[str]:
    """The registered baselines defined for `space`, in registry order."""
    from tfnas_ray.metrics import load_metrics

    return [name for name, metric in load_metrics().items() if metric.baseline and metric.applies_to(space)]


def baseline_scores(
    archs,
    *,
    batch_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    skip: Sequence[str] = (),
):
    """A scores table of every baseline of every architecture in `archs` (an archs
    table), except the metrics in `skip` (e.g. those already scored): the same values
    `tfnas score` gives under these options, computed here without Ray or a model.

    Rows have seed 0 (a baseline does not depend on it) and device "none".

    Raises:
        TfnasError: bad options (an unknown batch option, …).
    """
    from tfnas_ray import tables
    from tfnas_ray.metrics import BATCHES
    from tfnas_ray.metrics.scoring import score_architecture

    archs = tables.conform("archs", archs, what="archs table")
    batches: dict[str, Any] = {}
    names: dict[str, list[str]] = {}
    rows, seen = [], set()
    for arch_id, space, spec in zip(*(archs.column(c).to_pylist() for c in ("arch_id", "space", "spec"))):
        if arch_id in seen:
            continue
        seen.add(arch_id)
        if space not in names:
            names[space] = [n for n in baseline_names(space) if n not in skip]
        if not names[space]:
            continue
        if space not in batches:
            batches[space] = BATCHES.get(space)(dict(batch_options or {}))
        for row in score_architecture(
            arch_id=arch_id, space=space, spec=spec, metrics=names[space], seed=0,
            batch=batches[space], options=model_options,
        ):
            rows.append({**row, "device": NO_DEVICE})
    return tables.from_rows("scores", rows)


def with_baselines(scores, archs, *, batch_options: Mapping[str, Any] | None = None, model_options: Mapping[str, Any] | None = None):
    """`scores` plus the rows of every baseline of `archs`'s spaces that it lacks,
    computed from the specs (free: no Ray, no model); and the names of those added.

    Returns:
        (scores table, [baseline names added, in registry order]).
    """
    import pyarrow as pa

    from tfnas_ray import tables

    have = set(scores.column("metric").to_pylist())
    added = baseline_scores(archs, batch_options=batch_options, model_options=model_options, skip=sorted(have))
    if not added.num_rows:
        return scores, []
    merged = pa.concat_tables([tables.conform("scores", scores), added], promote_options="permissive")
    return merged, list(dict.fromkeys(added.column("metric").to_pylist()))
