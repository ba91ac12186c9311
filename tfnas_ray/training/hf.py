"""Short causal- or masked-LM training of `hf` architectures on WikiText-2 (ground truth
for Hugging Face model families).

Shapes: B batch, T sequence length, V vocabulary.

Data and tokenizer: the shipped WikiText-2 and the WordPiece tokenizer trained on its
training split (`tfnas_ray.data.tokenizer`, V = 30,522, BERT's size). The shipped
families fix `vocab_size = 30522` to it, and a spec is the model's identity, so the
model trained is exactly the model scored: no second, smaller vocabulary whose models
would differ from the scored ones in their embedding. On a CPU the softmax over 30,522
words is affordable at these widths (a step of 16 x 64 tokens at width 128 is about
4 GFLOP forward); a family with a smaller `vocab_size` than the tokenizer cannot read its
ids and is refused before Ray starts (a larger one only has rows no token uses).

The recipe is the one of `tfnas_ray.training.mlm` (this trainer is its subclass: the same
iterations, budget accounting, AdamW with linear warm-up and decay, clipping, divergence
handling, exact resume from `state_dict`), with the model built from the spec by
`transformers` (eager attention, its own dropouts as the config sets them) and its own
loss:

- causal-lm: sequences of T contiguous stream tokens (no [CLS]/[SEP]); the loss is the
  model's next-token cross entropy over the T-1 predicted positions (`labels=input_ids`,
  shifted inside the model; position 0 is never a target).
- masked-lm: `[CLS] w… [SEP]` sequences masked as BERT does (15% chosen, 80/10/10), the
  cross entropy on the chosen positions; validation masks drawn once from a fixed seed.

Targets: `val_loss@<budget>` / `train_loss@<budget>` (causal) and `val_mlm_loss@…` /
`train_mlm_loss@…` (masked), in nats per predicted token.

Example:
    >>> config = HFTrainConfig(task="causal-lm", budget=Budget("tokens", 16_384))
    >>> trainer = HFTrainer(spec, config)            # doctest: +SKIP
    >>> while not trainer.finished:                   # doctest: +SKIP
    ...     print(trainer.train_iteration()["val_loss"])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tfnas_ray import checks
from tfnas_ray.errors import TfnasError
from tfnas_ray.training.lm import Budget
from tfnas_ray.training.mlm import MLMTrainer, wordpiece_sequences

TASKS = ("causal-lm", "masked-lm")
_TARGETS = {
    "causal-lm": {"val_loss": "val_loss", "train_loss": "train_loss"},
    "masked-lm": {"val_loss": "val_mlm_loss", "train_loss": "train_mlm_loss"},
}
# The config keys that bound a model's sequence length, per model type's naming.
_POSITION_KEYS = ("n_positions", "max_position_embeddings")


@dataclass(frozen=True)
class HFTrainConfig:
    """One short training run of an `hf` architecture.

    Attributes:
        task: "causal-lm" or "masked-lm" (the task of every spec trained with it).
        corpus: "wikitext-2" (the corpus the shipped tokenizer was trained on).
        budget: steps, tokens (B·T per step) or epochs (passes over the sequences).
        iterations: report/evaluation points, the steps split evenly (default 4; at most
            the number of steps).
        batch_size: sequences per step.
        seq_len: tokens per sequence (masked-lm: [CLS] and [SEP] included); at most the
            model's position table.
        lr: peak AdamW learning rate (1e-3: nanoGPT's small-model rate).
        weight_decay: AdamW's decoupled weight decay on matrices (biases and norms: none).
        warmup: fraction of the steps with a linear warm-up, then linear decay to zero.
        clip: gradient norm clip (0 disables clipping).
        mask_prob: masked-lm: fraction of tokens chosen for prediction.
        train_tokens: train on the first N WordPiece tokens of the training split only.
        valid_tokens: validate on the first N validation tokens (None: all).
        seed: initialisation, masks, dropout and data order.
    """

    task: str = "causal-lm"
    corpus: str = "wikitext-2"
    budget: Budget = Budget("tokens", 64_000)
    iterations: int | None = None
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    clip: float = 1.0
    mask_prob: float = 0.15
    train_tokens: int | None = None
    valid_tokens: int | None = 8_192
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.budget, Mapping):  # from a JSON round trip (Tune's param space)
            object.__setattr__(self, "budget", Budget(**self.budget))
        if self.task not in TASKS:
            raise TfnasError(f"HFTrainConfig.task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.corpus != "wikitext-2":
            raise TfnasError(f"hf training corpus {self.corpus!r} is not allowed; allowed: wikitext-2 (the tokenizer's corpus)")
        if not 3 <= self.seq_len <= 4096:
            raise TfnasError(f"HFTrainConfig.seq_len must be in [3, 4096], got {self.seq_len}")
        checks.at_least(self, ("batch_size",), 1)
        if self.iterations is not None:
            checks.at_least(self, ("iterations",), 1)
        checks.fractions(self, ("mask_prob", "warmup"))
        if self.mask_prob == 0:
            raise TfnasError("HFTrainConfig.mask_prob must be in (0, 1), got 0.0: nothing would be predicted")
        checks.finite_nonnegative(self, ("lr", "weight_decay", "clip"))
        if self.lr == 0:
            raise TfnasError("HFTrainConfig.lr must be > 0, got 0")
        for name in ("train_tokens", "valid_tokens"):
            value = getattr(self, name)
            if value is not None and value < self.seq_len:
                raise TfnasError(f"HFTrainConfig.{name} must be >= seq_len = {self.seq_len}, got {value}")

    @property
    def TARGETS(self) -> Mapping[str, str]:  # noqa: N802 — the name the other configs' class constant has
        """Truth target per reported loss (the budget label is appended)."""
        return _TARGETS[self.task]

    @property
    def num_iterations(self) -> int:
        return self.iterations if self.iterations is not None else 4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "HFTrainConfig":
        return checks.from_fields(cls, fields)

    @property
    def source(self) -> str:
        return f"tune:{self.corpus}:{self.task},batch_size={self.batch_size},seq_len={self.seq_len}"

    def describe(self) -> str:
        train = "all" if self.train_tokens is None else f"first {self.train_tokens:,}"
        valid = "all" if self.valid_tokens is None else f"first {self.valid_tokens:,}"
        return (
            f"{self.corpus} {self.task}, budget {self.budget.amount:,} {self.budget.kind} per trial "
            f"in {self.num_iterations} iterations, batch {self.batch_size} x {self.seq_len} tokens, "
            f"{train} training tokens, validation on {valid} tokens, seed {self.seed}"
        )


# CPU: 64k training tokens (63 steps of 16 x 64): enough to leave the uniform loss well
# behind (ln V = 10.3) on the tiny families. GPU: 2M tokens (489 steps of 32 x 128).
CPU_DEFAULTS: Mapping[str, Any] = {"budget": Budget("tokens", 64_000), "batch_size": 16, "seq_len": 64, "valid_tokens": 8_192}
GPU_DEFAULTS: Mapping[str, Any] = {"budget": Budget("tokens", 2_000_000), "batch_size": 32, "seq_len": 128, "valid_tokens": 65_536}


def default_hf_config(*, task: str, gpus: bool, **overrides: Any) -> HFTrainConfig:
    """The GPU or CPU defaults for `task`, then `overrides` (None skipped).

    Raises:
        TfnasError: an override that is not an HFTrainConfig field (e.g. nb-nlp's emsize).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in dataclasses.fields(HFTrainConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TfnasError(
            f"option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} do not apply to space hf; "
            f"hf training takes {', '.join(sorted(known - {'task', 'corpus'}))}"
        )
    return HFTrainConfig(**{**(GPU_DEFAULTS if gpus else CPU_DEFAULTS), "task": task, **given})


def task_of(specs: Sequence[str]) -> str:
    """The one task of `specs` (canonical hf specs).

    Raises:
        TfnasError: the specs mix causal and masked LMs (they train with different losses
            into different targets).
    """
    tasks = sorted({json.loads(spec)["task"] for spec in specs})
    if len(tasks) != 1:
        raise TfnasError(f"archs table mixes hf tasks {', '.join(tasks)}; train one task per run")
    return tasks[0]


def check_trainable(arch_id: str, spec: str, config: HFTrainConfig) -> None:
    """Refuse, before Ray starts, a spec this run cannot train: a vocabulary smaller than
    the tokenizer's, a position table shorter than `seq_len`, another task.

    Raises:
        TfnasError: one line naming the arch, the setting, its value and what is needed.
    """
    from tfnas_ray.data.tokenizer import vocabulary
    from tfnas_ray.spaces.hf import HfSpec

    parsed = HfSpec.parse(spec)
    if parsed.task != config.task:
        raise TfnasError(f"arch {arch_id}: task {parsed.task} differs from the run's {config.task}")
    cfg = _transformers_config(parsed)
    words = len(vocabulary())
    if cfg.vocab_size < words:
        raise TfnasError(
            f"arch {arch_id}: vocab_size {cfg.vocab_size} is smaller than the shipped WordPiece tokenizer's "
            f"{words} tokens; hf training needs vocab_size >= {words}"
        )
    for key in _POSITION_KEYS:
        positions = getattr(cfg, key, None)
        if isinstance(positions, int) and positions < config.seq_len:
            raise TfnasError(f"arch {arch_id}: {key} {positions} is shorter than seq_len {config.seq_len}; give --seq-len <= {positions}")


def _transformers_config(parsed):
    from tfnas_ray.spaces.hf import make_config

    return make_config(parsed.model_type, parsed.config, where="hf spec")


class HFLossModel(nn.Module):
    """A transformers LM with the trainer's `loss(inputs, labels)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The model's mean cross entropy over positions whose label is not -100
        (causal LMs shift the labels by one inside the model)."""
        return self.model(input_ids=input_ids, labels=labels).loss


class HFTrainer(MLMTrainer):
    """One `hf` architecture's run, advanced an iteration at a time (the interface of
    `LMTrainer`: `finished`, `train_iteration`, `history`, `state_dict`)."""

    def __init__(self, spec: Any, config: HFTrainConfig, *, device: str | torch.device = "cpu"):
        from tfnas_ray.spaces.hf import SPACE, HfSpec

        self._spec = HfSpec.parse(spec)
        canonical = self._spec.canonical()
        check_trainable(SPACE.arch_id(canonical), canonical, config)
        super().__init__(spec, config, device=device)

    def _sequences(self, split: str, max_tokens: int | None) -> torch.Tensor:
        return wordpiece_sequences(split, self.config.seq_len, max_tokens, framed=self.config.task == "masked-lm")

    def _inputs_and_labels(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.task == "masked-lm":
            return super()._inputs_and_labels(ids, generator)
        labels = ids.clone()
        # Position 0 is never a next-token target (the model shifts labels left by one);
        # marking it makes the count of predicted positions exact for token weighting.
        labels[:, 0] = -100
        return ids, labels

    def _make_model(self, spec: Any) -> nn.Module:
        from tfnas_ray.spaces.hf import build_model

        parsed = self._spec
        return HFLossModel(build_model(parsed.model_type, parsed.task, parsed.config).train())
