"""The NAS-Bench-BERT encoder: ELECTRA-small embeddings, then heterogeneous post-LN layers.

Shape letters: B batch, T sequence, E embedding size (128), H hidden size, F feed-forward width.

    input_ids (B, T) → ElectraEmbeddings (B, T, E) → [embeddings_project] (B, T, H)
      → for each layer: operation (B, T, H) → operation_output: LN(dense(·) + x)
                        → intermediate: (dense + GELU) × num_feed_forward (B, T, F)
                        → output: LN(dense(·) + ·) (B, T, H)

Three readings of one config (`Reading`):
- DESCRIBED (default): the architecture the config describes — every operation as
  named, every feed-forward layer `feed_forward_dimension` wide.
- AS_TRAINED: what the authors' TensorFlow pretraining built. Its operation switch
  compared strings with `is` (`operation_type is "SA"`), which is never true for strings
  loaded from JSON, so every layer fell through to plain scaled-dot-product attention
  with the layer's head count; had any comparison been true, the next line
  (`is_dft, is_dct, is_dsc, is_weighted_multiplicative = False`) would have raised, and
  all 500 runs completed. Its first feed-forward layer is `intermediate_size` wide, which
  ELECTRA's `get_bert_config` sets to 4 × hidden_size (the overrides do not set it); only
  the stacked layers after it use `feed_forward_dimension`.
- AS_SCORED: what the authors' PyTorch metric script built: `ElectraConfig(nas_config=…)`
  without hidden or intermediate size, so hidden 256 and every feed-forward layer 1024
  wide whatever the config says; operations as named, and LT layers without the
  operation_output block (their `ElectraLinearTransform` had none).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn
from transformers import ElectraConfig
from transformers.models.electra.modeling_electra import (
    ElectraEmbeddings,
    ElectraIntermediate,
    ElectraOutput,
    ElectraSelfOutput,
)

from tfnas_ray.spaces.nasbench_bert.config import LayerConfig, NasBertConfig
from tfnas_ray.spaces.nasbench_bert.operations import build_operation

EMBEDDING_SIZE = 128  # ELECTRA-small: embeddings narrower than the hidden size
MAX_POSITIONS = 512  # ELECTRA default; the position table has this many rows
AS_SCORED_HIDDEN = 256  # the authors' ElectraConfig defaults (configuration_electra.py)
AS_SCORED_INTERMEDIATE = 1024


class Reading(str, enum.Enum):
    """Which model a config stands for (see the module docstring)."""

    DESCRIBED = "described"
    AS_TRAINED = "as-trained"
    AS_SCORED = "as-scored"


@dataclass(frozen=True)
class ModelOptions:
    """How to turn a config into a model.

    Attributes:
        vocab_size: rows of the word-embedding table (the WordPiece vocabulary).
        reading: which of the three readings to build.
        dropout: hidden and attention dropout of ELECTRA (0.1); active only in train mode.
    """

    vocab_size: int
    reading: Reading = Reading.DESCRIBED
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must hold the 5 special tokens, got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class NasBertOutput:
    """What the encoder returns.

    Attributes:
        last_hidden_state: (B, T, H).
        attentions: per layer, the operation's scores (see operations.py) when
            `output_attentions`, else None.
    """

    last_hidden_state: torch.Tensor
    attentions: tuple[torch.Tensor | None, ...] | None = None


class FeedForwardStack(nn.Module):
    """`len(widths)` ELECTRA intermediate blocks (dense + GELU) in sequence: H → F₁ → … → Fₙ."""

    def __init__(self, base: ElectraConfig, widths: list[int]):
        super().__init__()
        layers, width_in = [], base.hidden_size
        for width in widths:
            config = ElectraConfig(**{**base.to_dict(), "hidden_size": width_in, "intermediate_size": width})
            layers.append(ElectraIntermediate(config))
            width_in = width
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)  # (B, T, F_i)
        return hidden_states


class NasBertLayer(nn.Module):
    """operation → add & norm → feed-forward stack → down-projection → add & norm."""

    def __init__(self, base: ElectraConfig, layer: LayerConfig, reading: Reading):
        super().__init__()
        H = base.hidden_size
        operation_type, parameter = layer.operation_type, layer.operation_parameter
        if reading is Reading.AS_TRAINED:
            operation_type, parameter = "SA", "SDP"
        self.operation_type = operation_type
        self.operation = build_operation(
            operation_type, parameter, hidden_size=H, num_heads=layer.num_operation_heads, electra_config=base
        )
        if reading is Reading.AS_SCORED and operation_type == "LT":
            self.operation_output = None  # the authors' PyTorch LT layer had no output block
        else:
            self.operation_output = ElectraSelfOutput(base)
        if reading is Reading.AS_TRAINED:
            widths = [4 * H] + [layer.feed_forward_dimension] * (layer.num_feed_forward - 1)
        elif reading is Reading.AS_SCORED:
            widths = [AS_SCORED_INTERMEDIATE] * layer.num_feed_forward
        else:
            widths = [layer.feed_forward_dimension] * layer.num_feed_forward
        self.intermediate = FeedForwardStack(base, widths)
        self.output = ElectraOutput(ElectraConfig(**{**base.to_dict(), "intermediate_size": widths[-1]}))

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        context, scores = self.operation(hidden_states, attention_mask, output_attentions)  # (B, T, H)
        if self.operation_output is not None:
            context = self.operation_output(context, hidden_states)  # LN(dense(context) + x)
        layer_output = self.output(self.intermediate(context), context)  # (B, T, H)
        return layer_output, scores


class NasBertModel(nn.Module):
    """A NAS-Bench-BERT encoder (the ELECTRA discriminator body, without heads).

    Example:
        >>> from tfnas_ray.spaces.nasbench_bert.config import NasBertConfig
        >>> cfg = NasBertConfig.from_spec({"hidden_size": 128, "encoder_layers": [
        ...     {"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 2,
        ...      "feed_forward_dimension": 512, "num_feed_forward": 1}] * 2})
        >>> model = NasBertModel(cfg, ModelOptions(vocab_size=100))
        >>> model(torch.ones(3, 7, dtype=torch.long)).last_hidden_state.shape
        torch.Size([3, 7, 128])
    """

    def __init__(self, config: NasBertConfig, options: ModelOptions):
        super().__init__()
        self.config = config
        self.options = options
        hidden = AS_SCORED_HIDDEN if options.reading is Reading.AS_SCORED else config.hidden_size
        self.electra_config = ElectraConfig(
            vocab_size=options.vocab_size,
            embedding_size=EMBEDDING_SIZE,
            hidden_size=hidden,
            num_hidden_layers=len(config.encoder_layers),
            intermediate_size=4 * hidden,  # unused: each layer sets its own widths
            hidden_act="gelu",
            hidden_dropout_prob=options.dropout,
            attention_probs_dropout_prob=options.dropout,
            max_position_embeddings=MAX_POSITIONS,
            type_vocab_size=2,
            initializer_range=0.02,
            layer_norm_eps=1e-12,
            pad_token_id=0,
        )
        self.embeddings = ElectraEmbeddings(self.electra_config)
        self.embeddings_project = nn.Linear(EMBEDDING_SIZE, hidden) if hidden != EMBEDDING_SIZE else None
        self.layers = nn.ModuleList(
            NasBertLayer(self.electra_config, layer, options.reading) for layer in config.encoder_layers
        )
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """ELECTRA/BERT init: N(0, 0.02) weights, zero biases, zero padding row, unit LayerNorm.
        (ConvBERT's separable convolution initialises itself the same way.)"""
        std = self.electra_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> NasBertOutput:
        """Encode a batch.

        Arguments:
            input_ids: (B, T) token ids (or give `inputs_embeds` (B, T, E) instead).
            attention_mask: (B, T), 1 for tokens, 0 for padding; None attends to all.
            output_attentions: also return each layer's scores (see operations.py).
        """
        x = self.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)  # (B, T, E)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)  # (B, T, H)
        additive_mask = None
        if attention_mask is not None:
            # (B, 1, 1, T): 0 where attended, a large negative number at padding
            additive_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        attentions = []
        for layer in self.layers:
            x, scores = layer(x, additive_mask, output_attentions)
            attentions.append(scores)
        return NasBertOutput(last_hidden_state=x, attentions=tuple(attentions) if output_attentions else None)
