"""NAS-Bench-BERT (Serianni & Kalita 2023): FlexiBERT-style heterogeneous encoders.

The space `nb-bert`: hidden size {128, 256}; 2 or 4 layers; each layer an operation
(SA: SDP | WMA, LT: DFT | DCT, DSC: kernel 5 | 9) with 2 or 4 heads, feed-forward width
512 or 1024, 1 or 3 stacked feed-forward layers. See config.py for the spec format,
model.py for the model and its three readings (described / as-trained / as-scored).
"""

from __future__ import annotations

import random
from typing import Any

from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces import SPACES, draw_distinct
from tfnas_ray.spaces.nasbench_bert.config import LayerConfig, NasBertConfig, SearchSpace, published_space
from tfnas_ray.spaces.nasbench_bert.params import READINGS, count_parameters

# model.py (torch + transformers, ~3 s to import) is imported by `build` only, so listing
# benchmarks or validating specs stays fast.
__all__ = ["NasBertSpace", "NasBertConfig", "LayerConfig", "SPACE", "READINGS", "resolve_reading"]


class NasBertSpace:
    """The `nb-bert` search space (implements `tfnas_ray.spaces.Space`)."""

    name = "nb-bert"
    # ELECTRA-style encoders: GELU feed-forward stacks, word and position embeddings,
    # per-layer attention scores (SA, DSC; LT's softmax transform), and an LM loss through
    # ELECTRA's generator head (the metrics' `mlm` and `probe` passes add it).
    capabilities = frozenset({"spec", "module", "activations", "input_embeddings", "hidden_states", "attentions", "lm_loss"})

    def parse(self, spec: Any) -> NasBertConfig:
        """Parse and check a spec against the published space.

        Raises:
            TfnasError: malformed, or a value outside search_space.json.
        """
        return published_space().check(NasBertConfig.from_spec(spec))

    def canonicalize(self, spec: Any) -> str:
        return self.parse(spec).canonical()

    def sample(self, n: int, *, seed: int) -> list[str]:
        """`n` distinct configs, each drawn uniformly and independently (a repeat is drawn again): hidden size, layer count, and per
        layer each field (operation type, then its parameter) uniformly from its choices
        (search_space.json). The benchmark's 500 configs fit this: hidden 251/249, layers
        239/261, SA/LT/DSC 503/538/481 of 1,522 layers.
        Uses its own `random.Random(seed)`, so global random state is untouched.

        Example:
            >>> SPACE.sample(2, seed=0) == SPACE.sample(2, seed=0)
            True
        """
        space: SearchSpace = published_space()
        rng = random.Random(seed)

        def draw() -> str:
            layers = []
            for _ in range(rng.choice(space.num_encoder_layers)):
                op = rng.choice(list(space.operations))
                layers.append(
                    LayerConfig(
                        operation_type=op,
                        operation_parameter=rng.choice(space.operations[op]),
                        num_operation_heads=rng.choice(space.num_operation_heads),
                        feed_forward_dimension=rng.choice(space.feed_forward_dimension),
                        num_feed_forward=rng.choice(space.num_feed_forward),
                    )
                )
            return NasBertConfig(hidden_size=rng.choice(space.hidden_size), encoder_layers=tuple(layers)).canonical()

        # A canonical config is its identity (arch_id is its content hash).
        return draw_distinct(n, draw, lambda spec: spec, space=self.name, seed=seed)

    def build(
        self,
        spec: Any,
        *,
        as_trained: bool = False,
        as_scored: bool = False,
        reading: str | None = None,
        vocab_size: int | None = None,
        dropout: float = 0.1,
    ) -> "torch.nn.Module":
        """A freshly initialised encoder (draws from torch's global generator).

        Arguments:
            spec: a spec (dict / JSON) in the published space.
            as_trained: build what the authors' TF pretraining trained: every layer SDP
                self-attention, first feed-forward layer 4·hidden wide (model.py).
            as_scored: build what the authors' metric script scored: hidden 256, every
                feed-forward layer 1024 wide, LT layers without output block (model.py).
            reading: the reading by name ("described", "as-trained", "as-scored"), as the
                CLI's `--reading` gives it; an alternative to the two flags.
            vocab_size: word-embedding rows; default the shipped WordPiece vocabulary.
            dropout: ELECTRA's dropout (active in train mode only).
        Raises:
            TfnasError: an invalid spec, or both readings asked for.
        """
        from tfnas_ray.spaces.nasbench_bert.model import ModelOptions, NasBertModel, Reading

        reading = resolve_reading(reading, as_trained=as_trained, as_scored=as_scored)
        if vocab_size is None:
            from tfnas_ray.data.tokenizer import vocabulary

            vocab_size = len(vocabulary())
        return NasBertModel(
            self.parse(spec), ModelOptions(vocab_size=vocab_size, reading=Reading(reading), dropout=dropout)
        )

    def count_parameters(self, spec: Any, *, reading: str = "described", vocab_size: int | None = None) -> int:
        """The parameter count of `build(spec, reading=reading)`, without building it."""
        if vocab_size is None:
            from tfnas_ray.data.tokenizer import vocabulary

            vocab_size = len(vocabulary())
        return count_parameters(self.parse(spec), reading=reading, vocab_size=vocab_size)


def resolve_reading(reading: str | None, *, as_trained: bool = False, as_scored: bool = False) -> str:
    """One reading name from the name and/or the two legacy flags.

    Raises:
        TfnasError: an unknown name, or two different readings asked for.
    """
    asked = {r for r, on in (("as-trained", as_trained), ("as-scored", as_scored)) if on}
    if reading is not None:
        if reading not in READINGS:
            raise TfnasError(f"reading {reading!r} is not one of {', '.join(READINGS)}")
        asked.add(reading)
    if len(asked) > 1:
        raise TfnasError(f"{' and '.join(sorted(asked))} are different readings; pick one")
    return asked.pop() if asked else "described"


SPACE = NasBertSpace()
SPACES.add(SPACE.name, SPACE)
