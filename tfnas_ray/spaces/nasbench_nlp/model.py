"""The language model NAS-Bench-NLP trained: embedding → 3 recurrent layers → tied decoder.

Shapes: T steps, B batch, E = emsize (400), H = nhid (600), V vocabulary.

Construction replays the reference's draws from torch's global generator, in order
(DESIGN.md, Fidelity): embedding (normal); per layer, each linear node's weights and
bias, then the layer's reset U(±1/√hidden); the decoder Linear(H, V); finally the
embedding U(±0.1), decoder bias 0, and the tied weight U(±0.1) once more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tfnas_ray import checks
from tfnas_ray.spaces.nasbench_nlp.cell import RecurrentLayer, StepRecorder
from tfnas_ray.spaces.nasbench_nlp.recipe import Recipe


# The AWD-LSTM dropout rates of the model, as fields of LMConfig and TrainConfig.
DROPOUTS = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")


@dataclass(frozen=True)
class LMConfig:
    """Hyper-parameters of the NAS-Bench-NLP language model (its published defaults).

    Attributes:
        ntoken: vocabulary size V (10,000 for PTB, 33,278 for WikiText-2).
        emsize: embedding size E; also the last layer's hidden size (tied weights).
        nhid: hidden size H of the other layers.
        nlayers: number of recurrent layers.
        dropout: locked dropout on the last layer's output.
        dropouth: locked dropout between layers.
        dropouti: locked dropout on the embedding output.
        dropoute: dropout of whole embedding rows (words).
        wdrop: DropConnect on every linear weight that does not read `x`.
    """

    ntoken: int
    emsize: int = 400
    nhid: int = 600
    nlayers: int = 3
    dropout: float = 0.1
    dropouth: float = 0.25
    dropouti: float = 0.4
    dropoute: float = 0.0
    wdrop: float = 0.1

    def __post_init__(self) -> None:
        checks.at_least(self, ("ntoken", "emsize", "nhid", "nlayers"), 1)
        checks.fractions(self, DROPOUTS)

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input size, hidden size) per layer: E→H, H→H, …, H→E (tied decoder)."""
        sizes = []
        for i in range(self.nlayers):
            input_size = self.emsize if i == 0 else self.nhid
            hidden_size = self.emsize if i == self.nlayers - 1 else self.nhid
            sizes.append((input_size, hidden_size))
        return sizes


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared over the T steps of x (T, B, D)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


class NasBenchNlpLM(nn.Module):
    """Embedding → recurrent layers → decoder tied to the embedding (AWD-LSTM style)."""

    def __init__(self, recipe: Recipe, config: LMConfig):
        super().__init__()
        self.recipe = recipe
        self.config = config
        self.encoder = nn.Embedding(config.ntoken, config.emsize)
        self.layers = nn.ModuleList(
            [
                RecurrentLayer(recipe, input_size, hidden_size, weight_drop=config.wdrop)
                for input_size, hidden_size in config.layer_sizes()
            ]
        )
        # Built at the reference's size (H, V) for its draws, then tied: (V, E).
        self.decoder = nn.Linear(config.nhid, config.ntoken)
        self.decoder.weight = self.encoder.weight
        with torch.no_grad():
            self.encoder.weight.uniform_(-0.1, 0.1)
            self.decoder.bias.zero_()
            self.decoder.weight.uniform_(-0.1, 0.1)

    def init_hidden(self, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
        """Zero hidden tuples, one per layer: k tensors of (B, hidden size)."""
        weight = self.encoder.weight
        return [
            tuple(
                weight.new_zeros(batch_size, layer.hidden_size)
                for _ in range(self.recipe.hidden_tuple_size)
            )
            for layer in self.layers
        ]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, B) token ids -> (T, B, E), with word-level embedding dropout in training."""
        weight = self.encoder.weight
        if self.training and self.config.dropoute:
            keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - self.config.dropoute)
            weight = weight * keep / (1 - self.config.dropoute)
        return F.embedding(tokens, weight)

    def forward_embedded(
        self,
        embedded: torch.Tensor,
        hidden: list[tuple[torch.Tensor, ...]] | None = None,
        *,
        num_layers: int | None = None,
        recorder: StepRecorder | None = None,
        return_h: bool = False,
    ):
        """Run the recurrent layers on embeddings (T, B, E).

        Args:
            num_layers: run only the first layers (metrics that read layer 1 need no more).
            recorder: receives hidden states and activation outputs from inside the steps.
            return_h: also return every layer's raw and dropped-out outputs (for AR/TAR).

        Returns:
            output (T·B, D) — the last run layer's output after dropout, flattened, D its
            hidden size — and the new hidden tuples (plus raw_outputs, outputs if return_h).
        """
        layers = list(self.layers)[: num_layers or len(self.layers)]
        if hidden is None:
            hidden = self.init_hidden(embedded.size(1))
        x = locked_dropout(embedded, self.config.dropouti, self.training)
        new_hidden, raw_outputs, outputs = [], [], []
        for i, layer in enumerate(layers):
            raw, state = layer(x, hidden[i], layer_index=i, recorder=recorder)
            new_hidden.append(state)
            raw_outputs.append(raw)
            last = i == len(self.layers) - 1
            x = locked_dropout(raw, self.config.dropout if last else self.config.dropouth, self.training)
            outputs.append(x)
        result = x.reshape(x.size(0) * x.size(1), x.size(2))  # (T·B, D)
        if return_h:
            return result, new_hidden, raw_outputs, outputs
        return result, new_hidden

    def forward(self, tokens: torch.Tensor, hidden=None, **kwargs):
        """(T, B) token ids -> (T·B, E) output of the last layer (decoder not applied)."""
        return self.forward_embedded(self.embed(tokens), hidden, **kwargs)

    def decode(self, output: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, V) logits through the tied decoder."""
        return self.decoder(output)


def count_parameters(model: nn.Module) -> int:
    """Every parameter once (tied weights once), as the published num_params."""
    return sum(p.numel() for p in model.parameters())


def initial_layers(recipe: Recipe, config: LMConfig, num_layers: int) -> tuple[torch.Tensor, list[RecurrentLayer]]:
    """The embedding weight (V, E) and the first `num_layers` recurrent layers exactly
    as `NasBenchNlpLM(recipe, config)` initialises them from torch's global generator.

    For metrics that read the first layers only (hidden_cov): every other draw of the
    reference order (DESIGN.md) is still made — the generator must reach the
    embedding's final draw in the same state — but into one reused scratch buffer, so
    the later layers and the (V, H) decoder are never allocated. The same number of
    draws per tensor, same method (uniform_ or normal_), hence the same generator state.
    """
    V, E = config.ntoken, config.emsize
    sizes = config.layer_sizes()
    largest = max([V * E, V * config.nhid] + [_layer_numel(recipe, i, h) for i, h in sizes])
    scratch = torch.empty(largest)

    def advance(numel: int, method: str = "uniform_") -> None:
        getattr(scratch[:numel], method)()

    advance(V * E, "normal_")  # nn.Embedding's N(0, 1)
    layers = []
    for index, (input_size, hidden_size) in enumerate(sizes):
        if index < num_layers:
            layers.append(RecurrentLayer(recipe, input_size, hidden_size, weight_drop=config.wdrop))
            continue
        # A layer's draws: each linear node's weights then bias, then its reset.
        drawn = []
        for node in recipe.nodes:
            if node.op == "linear":
                drawn += [hidden_size * (input_size if i == "x" else hidden_size) for i in node.inputs]
                drawn.append(hidden_size)
        for numel in drawn + drawn:
            advance(numel)
    advance(V * config.nhid)  # the decoder's weight (H → V), kaiming uniform
    advance(V)  # its bias
    advance(V * E)  # the embedding's U(±0.1), drawn over by the tied weight's
    embedding = torch.empty(V, E).uniform_(-0.1, 0.1)
    return embedding, layers


def _layer_numel(recipe: Recipe, input_size: int, hidden_size: int) -> int:
    return max(
        [hidden_size * (input_size if i == "x" else hidden_size) for n in recipe.nodes if n.op == "linear" for i in n.inputs]
        + [hidden_size]
    )
