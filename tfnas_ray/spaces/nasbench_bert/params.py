"""Parameter counts of NAS-Bench-BERT models, from the config alone (no torch).

Building a model to count its parameters costs 0.1–0.5 s (and initialises every weight);
the count is a closed form of the config. Each term mirrors one module of model.py /
operations.py (ELECTRA's embeddings, transformers' ELECTRA and ConvBERT attention), and
tests/test_nb_bert_space.py checks it against built models of every operation and
reading, and against the authors' published counts of all 500 benchmark configs.
"""

from __future__ import annotations

from tfnas_ray.spaces.nasbench_bert.config import LayerConfig, NasBertConfig

# Kept equal to model.py's constants (a test builds models to check): importing model.py
# would import torch and transformers, which this module exists to avoid.
EMBEDDING_SIZE = 128
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
AS_SCORED_HIDDEN = 256
AS_SCORED_INTERMEDIATE = 1024
READINGS = ("described", "as-trained", "as-scored")


def _dense(n_in: int, n_out: int, *, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _layer_norm(width: int) -> int:
    return 2 * width


def _operation(op: str, parameter, heads: int, H: int) -> int:
    """Parameters of one token-mixing operation of hidden size H."""
    if op == "SA":
        qkv = 3 * _dense(H, H)
        return qkv + (_dense(H, H, bias=False) if parameter == "WMA" else 0)
    if op == "LT":
        return _dense(H, H)
    # DSC: transformers' ConvBertSelfAttention with head_ratio 2
    attention_heads = max(1, heads // 2)
    A = attention_heads * ((H // attention_heads) // 2)  # all_head_size
    kernel = int(parameter)
    separable = H * kernel + H * A + A  # depthwise (no bias), pointwise (no bias), bias
    return 3 * _dense(H, A) + separable + _dense(A, attention_heads * kernel) + _dense(H, A)


def _feed_forward_widths(layer: LayerConfig, H: int, reading: str) -> list[int]:
    if reading == "as-trained":
        return [4 * H] + [layer.feed_forward_dimension] * (layer.num_feed_forward - 1)
    if reading == "as-scored":
        return [AS_SCORED_INTERMEDIATE] * layer.num_feed_forward
    return [layer.feed_forward_dimension] * layer.num_feed_forward


def count_parameters(config: NasBertConfig, *, reading: str = "described", vocab_size: int) -> int:
    """Number of parameters of the encoder `NasBertModel(config, reading)` would build.

    Example:
        >>> from tfnas_ray.spaces.nasbench_bert.config import NasBertConfig
        >>> cfg = NasBertConfig.from_spec({"hidden_size": 128, "encoder_layers": [
        ...     {"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 2,
        ...      "feed_forward_dimension": 512, "num_feed_forward": 1}]})
        >>> count_parameters(cfg, vocab_size=100)
        244096
    """
    if reading not in READINGS:
        raise ValueError(f"reading {reading!r} is not one of {', '.join(READINGS)}")
    H = AS_SCORED_HIDDEN if reading == "as-scored" else config.hidden_size
    E = EMBEDDING_SIZE
    total = (vocab_size + MAX_POSITIONS + TYPE_VOCAB_SIZE) * E + _layer_norm(E)
    if H != E:
        total += _dense(E, H)  # embeddings_project
    for layer in config.encoder_layers:
        op, parameter = layer.operation_type, layer.operation_parameter
        if reading == "as-trained":
            op, parameter = "SA", "SDP"
        total += _operation(op, parameter, layer.num_operation_heads, H)
        if not (reading == "as-scored" and op == "LT"):
            total += _dense(H, H) + _layer_norm(H)  # operation_output: dense + LayerNorm
        width_in = H
        for width in _feed_forward_widths(layer, H, reading):
            total += _dense(width_in, width)
            width_in = width
        total += _dense(width_in, H) + _layer_norm(H)  # output: down-projection + LayerNorm
    return total
