"""NAS-Bench-BERT architecture configs: parse, validate, canonicalise.

A spec is a JSON object

    {"hidden_size": 256,
     "encoder_layers": [{"operation_type": "SA", "operation_parameter": "WMA",
                         "num_operation_heads": 4, "feed_forward_dimension": 1024,
                         "num_feed_forward": 3}, ...]}

or the benchmark's own form, with the layers under `nas_config` (as in
`hparams.model_hparam_overrides` of BERT_benchmark.json); both give the same canonical
JSON. Two levels of checking:

- `LayerConfig` / `NasBertConfig` check what any such model needs to be buildable
  (positive sizes, heads that divide the hidden size, a known operation with a parameter
  of the right kind). Values outside the published space are allowed there, so larger
  variants can be built.
- `SearchSpace.check` additionally checks membership in the published space
  (search_space.json: hidden {128, 256}, 2 or 4 layers, heads {2, 4}, …).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping

from tfnas_ray.checks import load_spec_json
from tfnas_ray.errors import TfnasError

# operation_type -> allowed operation_parameter values (search_space.json); the types
# are what the benchmark file stores: strings for SA/LT, kernel sizes (int) for DSC.
OPERATIONS: Mapping[str, tuple] = {
    "SA": ("SDP", "WMA"),  # self-attention: scaled dot-product / weighted multiplicative
    "LT": ("DFT", "DCT"),  # linear transform: 2-D Fourier (real part) / cosine
    "DSC": (5, 9),  # dynamic span-based convolution (ConvBERT): kernel size
}
LAYER_FIELDS = (
    "operation_type",
    "operation_parameter",
    "num_operation_heads",
    "feed_forward_dimension",
    "num_feed_forward",
)


def _positive_int(value: Any, what: str) -> int:
    # bool is an int subclass; `true` in a spec is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TfnasError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerConfig:
    """One encoder layer.

    Attributes:
        operation_type: "SA" (self-attention), "LT" (linear transform) or "DSC"
            (dynamic span-based convolution).
        operation_parameter: "SDP"/"WMA" for SA, "DFT"/"DCT" for LT, the convolution
            kernel size (odd int) for DSC.
        num_operation_heads: heads of the operation; must divide the hidden size.
        feed_forward_dimension: width of the feed-forward layers.
        num_feed_forward: number of stacked feed-forward (dense + GELU) layers before
            the down-projection to the hidden size.
    """

    operation_type: str
    operation_parameter: str | int
    num_operation_heads: int
    feed_forward_dimension: int
    num_feed_forward: int

    def __post_init__(self) -> None:
        if self.operation_type not in OPERATIONS:
            raise TfnasError(
                f"operation_type {self.operation_type!r} is not one of {', '.join(OPERATIONS)}"
            )
        _positive_int(self.num_operation_heads, "num_operation_heads")
        _positive_int(self.feed_forward_dimension, "feed_forward_dimension")
        _positive_int(self.num_feed_forward, "num_feed_forward")
        if self.operation_type == "DSC":
            kernel = self.operation_parameter
            if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
                raise TfnasError(
                    f"operation_parameter of a DSC layer is its kernel size, an odd positive "
                    f"integer; got {kernel!r}"
                )
        elif self.operation_parameter not in OPERATIONS[self.operation_type]:
            raise TfnasError(
                f"operation_parameter {self.operation_parameter!r} is not valid for operation "
                f"type {self.operation_type!r}; allowed: "
                f"{', '.join(map(str, OPERATIONS[self.operation_type]))}"
            )

    @classmethod
    def from_dict(cls, layer: Any, index: int) -> "LayerConfig":
        if not isinstance(layer, Mapping):
            raise TfnasError(f"encoder_layers[{index}] must be an object, got {type(layer).__name__}")
        missing = [f for f in LAYER_FIELDS if f not in layer]
        extra = sorted(set(layer) - set(LAYER_FIELDS))
        if missing or extra:
            raise TfnasError(
                f"encoder_layers[{index}] has fields {sorted(layer)}; "
                f"missing {missing}, unknown {extra}; expected {list(LAYER_FIELDS)}"
            )
        try:
            return cls(**{f: layer[f] for f in LAYER_FIELDS})
        except TfnasError as err:
            raise TfnasError(f"encoder_layers[{index}]: {err}") from None


@dataclass(frozen=True)
class NasBertConfig:
    """A NAS-Bench-BERT encoder: one hidden size shared by all layers.

    Attributes:
        hidden_size: width of the residual stream (the embeddings are 128 wide and
            projected to it, as in ELECTRA-small, when it differs).
        encoder_layers: the layers, input to output.
    """

    hidden_size: int
    encoder_layers: tuple[LayerConfig, ...]

    def __post_init__(self) -> None:
        _positive_int(self.hidden_size, "hidden_size")
        if not self.encoder_layers:
            raise TfnasError("encoder_layers is empty; an encoder needs at least one layer")
        for i, layer in enumerate(self.encoder_layers):
            heads = layer.num_operation_heads
            if self.hidden_size % heads != 0:
                raise TfnasError(
                    f"encoder_layers[{i}]: hidden size {self.hidden_size} is not a multiple of "
                    f"{heads} heads"
                )
            if layer.operation_type == "DSC":
                # ConvBERT halves the head size: half the channels attend, half convolve.
                attention_heads = max(1, heads // 2)
                if (self.hidden_size // attention_heads) % 2 != 0:
                    raise TfnasError(
                        f"encoder_layers[{i}]: a DSC layer splits each of its {attention_heads} "
                        f"attention head(s) of size {self.hidden_size // attention_heads} in two; "
                        f"hidden size {self.hidden_size} does not allow it"
                    )

    @classmethod
    def from_spec(cls, spec: Any) -> "NasBertConfig":
        """Parse a spec (dict or JSON string, either form described in the module doc).

        Raises:
            TfnasError: malformed JSON, a missing/unknown field, or an invalid value.
        """
        if isinstance(spec, NasBertConfig):
            return spec
        if isinstance(spec, (str, bytes)):
            spec = load_spec_json(spec, what="nb-bert spec")
        if not isinstance(spec, Mapping):
            raise TfnasError(f"nb-bert spec must be a JSON object, got {type(spec).__name__}")
        if "nas_config" in spec:  # the benchmark's form: model_hparam_overrides
            nas_config = spec["nas_config"]
            if not isinstance(nas_config, Mapping) or set(nas_config) != {"encoder_layers"}:
                raise TfnasError(
                    f"nas_config must be an object with exactly the key 'encoder_layers', got {nas_config!r}"
                )
            spec = {**{k: v for k, v in spec.items() if k != "nas_config"}, **nas_config}
        if set(spec) != {"hidden_size", "encoder_layers"}:
            raise TfnasError(
                f"nb-bert spec has keys {sorted(spec)}; expected exactly "
                f"['encoder_layers', 'hidden_size'] (or 'nas_config' holding encoder_layers)"
            )
        layers = spec["encoder_layers"]
        if not isinstance(layers, (list, tuple)):
            raise TfnasError(f"encoder_layers must be a list, got {type(layers).__name__}")
        return cls(
            hidden_size=spec["hidden_size"],
            encoder_layers=tuple(LayerConfig.from_dict(layer, i) for i, layer in enumerate(layers)),
        )

    def to_dict(self) -> dict:
        return {"hidden_size": self.hidden_size, "encoder_layers": [asdict(l) for l in self.encoder_layers]}

    def canonical(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal configs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class SearchSpace:
    """The published NAS-Bench-BERT space (search_space.json).

    Attributes:
        hidden_size: allowed hidden sizes.
        num_encoder_layers: allowed layer counts.
        operations: operation_type -> allowed operation_parameter values.
        num_operation_heads, feed_forward_dimension, num_feed_forward: allowed per-layer values.
    """

    hidden_size: tuple[int, ...]
    num_encoder_layers: tuple[int, ...]
    operations: Mapping[str, tuple]
    num_operation_heads: tuple[int, ...]
    feed_forward_dimension: tuple[int, ...]
    num_feed_forward: tuple[int, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SearchSpace":
        layer = data["encoder_layer"]
        return cls(
            hidden_size=tuple(data["hidden_size"]),
            num_encoder_layers=tuple(data["num_encoder_layers"]),
            operations={op: tuple(layer[op]) for op in layer["operation_type"]},
            num_operation_heads=tuple(layer["num_operation_heads"]),
            feed_forward_dimension=tuple(layer["feed_forward_dimension"]),
            num_feed_forward=tuple(layer["num_feed_forward"]),
        )

    def check(self, config: NasBertConfig) -> NasBertConfig:
        """Return `config` if it lies in this space, else raise naming the first value outside."""

        def need(value: Any, allowed: tuple, what: str) -> None:
            if value not in allowed:
                raise TfnasError(
                    f"{what} {value!r} is outside the nb-bert search space; allowed: "
                    f"{', '.join(map(str, allowed))}"
                )

        need(config.hidden_size, self.hidden_size, "hidden_size")
        need(len(config.encoder_layers), self.num_encoder_layers, "number of encoder layers")
        for i, layer in enumerate(config.encoder_layers):
            need(layer.operation_type, tuple(self.operations), f"encoder_layers[{i}].operation_type")
            need(
                layer.operation_parameter,
                self.operations[layer.operation_type],
                f"encoder_layers[{i}].operation_parameter of {layer.operation_type}",
            )
            need(layer.num_operation_heads, self.num_operation_heads, f"encoder_layers[{i}].num_operation_heads")
            need(
                layer.feed_forward_dimension,
                self.feed_forward_dimension,
                f"encoder_layers[{i}].feed_forward_dimension",
            )
            need(layer.num_feed_forward, self.num_feed_forward, f"encoder_layers[{i}].num_feed_forward")
        return config


@lru_cache(maxsize=1)
def published_space() -> SearchSpace:
    """The space as shipped (nb-bert-search-space.json.xz)."""
    from tfnas_ray.benchmarks import read_packaged_json

    return SearchSpace.from_json(read_packaged_json("nb-bert-search-space.json.xz"))
