"""Pretrain a NAS-Bench-BERT encoder with masked-language modelling on WikiText-2.

Shapes: B batch, T sequence length, H hidden size, E embedding size (128), V vocabulary.

NAS-Bench-BERT pretrained its 500 encoders with ELECTRA for 100k steps; a short run of
plain masked-language modelling (BERT's recipe) on the same corpus is the cheap stand-in
used for ground truth here: 15% of the tokens are chosen (never [CLS]/[SEP]), 80% of
those become [MASK], 10% a random token, 10% stay; the loss is the cross entropy on the
chosen positions. The head is ELECTRA's generator head: dense H→E, GELU, LayerNorm, and
a decoder tied to the word embeddings. AdamW (lr 5e-4, weight decay 0.01, ELECTRA-small's),
linear warm-up over the first 10% of the steps then linear decay to zero, gradient norm
clipped to 1.0. Validation masks are drawn once from a fixed seed, so every evaluation
and every architecture is scored on the same masked positions.

The run has the interface of `tfnas_ray.training.lm.LMTrainer` (iterations, history,
state_dict), so the same Tune trainable drives it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tfnas_ray import checks
from tfnas_ray.errors import TfnasError
from tfnas_ray.training.lm import Budget

VALIDATION_MASK_SEED = 1234  # fixed: every run is validated on the same masks


@dataclass(frozen=True)
class MLMConfig:
    """One short MLM pretraining run of an nb-bert architecture.

    Attributes:
        corpus: "wikitext-2" (the corpus the shipped WordPiece vocabulary was trained on).
        budget: steps, tokens (B·T per step) or epochs (passes over the sequences).
        iterations: report/evaluation points, the budget's steps split evenly (default 4;
            at most the number of steps).
        batch_size: sequences per step (ELECTRA-small pretrained with 128).
        seq_len: tokens per sequence, [CLS] and [SEP] included (ELECTRA-small: 128).
        lr: peak AdamW learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup: fraction of the steps with a linear warm-up.
        clip: gradient norm clip (0 disables clipping).
        mask_prob: fraction of tokens chosen for prediction.
        dropout: ELECTRA's hidden and attention dropout.
        train_tokens: train on the first N WordPiece tokens of the training split only.
        valid_tokens: validate on the first N validation tokens (None: all).
        seed: initialisation, masks and data order.
        reading: which model a config stands for ("described", "as-scored",
            "as-trained"; `tfnas_ray.spaces.nasbench_bert.model.Reading`).
    """

    corpus: str = "wikitext-2"
    budget: Budget = Budget("steps", 2000)
    iterations: int | None = None
    batch_size: int = 128
    seq_len: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    clip: float = 1.0
    mask_prob: float = 0.15
    dropout: float = 0.1
    train_tokens: int | None = None
    valid_tokens: int | None = 65_536
    seed: int = 0
    reading: str = "described"

    # The truth targets of a run (per reported loss): an MLM loss is not an LM loss.
    TARGETS: ClassVar[Mapping[str, str]] = {"val_loss": "val_mlm_loss", "train_loss": "train_mlm_loss"}

    def __post_init__(self) -> None:
        if isinstance(self.budget, Mapping):  # from a JSON round trip (Tune's param space)
            object.__setattr__(self, "budget", Budget(**self.budget))
        if self.corpus != "wikitext-2":
            raise TfnasError(f"MLM corpus {self.corpus!r} is not allowed; allowed: wikitext-2 (the tokenizer's corpus)")
        if not 3 <= self.seq_len <= 512:
            raise TfnasError(f"seq_len must be in [3, 512] (ELECTRA's position table), got {self.seq_len}")
        from tfnas_ray.spaces.nasbench_bert.params import READINGS

        if self.reading not in READINGS:
            raise TfnasError(f"MLMConfig.reading {self.reading!r} is not one of {', '.join(READINGS)}")
        checks.at_least(self, ("batch_size",), 1)
        if self.iterations is not None:
            checks.at_least(self, ("iterations",), 1)
        checks.fractions(self, ("mask_prob", "warmup", "dropout"))
        if self.mask_prob == 0:
            raise TfnasError("MLMConfig.mask_prob must be in (0, 1), got 0.0: nothing would be predicted")
        checks.finite_nonnegative(self, ("lr", "weight_decay", "clip"))
        for name in ("train_tokens", "valid_tokens"):
            value = getattr(self, name)
            if value is not None and value < self.seq_len - 2:
                raise TfnasError(f"MLMConfig.{name} must be >= seq_len - 2 = {self.seq_len - 2}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "MLMConfig":
        return checks.from_fields(cls, fields)

    @property
    def num_iterations(self) -> int:
        return self.iterations if self.iterations is not None else 4

    @property
    def source(self) -> str:
        return f"tune:{self.corpus}:mlm,batch_size={self.batch_size},seq_len={self.seq_len}"

    def describe(self) -> str:
        train = "all" if self.train_tokens is None else f"first {self.train_tokens:,}"
        valid = "all" if self.valid_tokens is None else f"first {self.valid_tokens:,}"
        return (
            f"{self.corpus} MLM, budget {self.budget.amount:,} {self.budget.kind} per trial, "
            f"batch {self.batch_size} x {self.seq_len} tokens, {train} training tokens, "
            f"validation on {valid} tokens, seed {self.seed}"
        )


def default_mlm_config(*, gpus: bool, **overrides: Any) -> MLMConfig:
    """GPU: ELECTRA-small's batch, 2,000 steps. CPU: batch 16, 100 steps, validation on
    8k tokens — under a minute per 2-4-layer encoder on one core."""
    fields: dict[str, Any] = {} if gpus else {"budget": Budget("steps", 100), "batch_size": 16, "valid_tokens": 8_192}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return MLMConfig(**fields)


@lru_cache(maxsize=4)
def wordpiece_sequences(split: str, seq_len: int, max_tokens: int | None, *, framed: bool = True) -> torch.Tensor:
    """WikiText-2 `split` as (N, seq_len) sequences `[CLS] w… [SEP]`, cut one after
    another from the concatenated WordPiece stream (the first `max_tokens` only).
    framed=False: seq_len stream tokens per sequence, no [CLS]/[SEP] (causal LM, where a
    [SEP] at an arbitrary cut would be a target the text does not have)."""
    from tfnas_ray.data.tokenizer import CLS, SEP, _wikitext_lines, load_tokenizer

    tokenizer = load_tokenizer()
    stream: list[int] = []
    lines = _wikitext_lines(split)
    for start in range(0, len(lines), 512):
        for encoding in tokenizer.encode_batch(lines[start : start + 512], add_special_tokens=False):
            stream.extend(encoding.ids)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
    body = seq_len - 2 if framed else seq_len
    n = len(stream) // body
    ids = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if not framed:
        return ids  # (N, T)
    return torch.cat([torch.full((n, 1), CLS), ids, torch.full((n, 1), SEP)], dim=1)  # (N, T)


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_prob: float, generator: torch.Generator):
    """BERT's masking of (B, T) ids: returns (masked inputs, labels with -100 where not
    chosen). [CLS] and [SEP] (first and last column) are never chosen."""
    from tfnas_ray.data.tokenizer import MASK

    chosen = torch.rand(input_ids.shape, generator=generator) < mask_prob
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(5, vocab_size, input_ids.shape, generator=generator)  # not a special token
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, MASK), input_ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


class MLMHead(nn.Module):
    """ELECTRA's generator head: (B, T, H) → dense H→E → GELU → LayerNorm → tied decoder (V)."""

    def __init__(self, hidden_size: int, word_embeddings: nn.Embedding):
        super().__init__()
        embedding_size = word_embeddings.weight.size(1)
        self.dense = nn.Linear(hidden_size, embedding_size)
        self.LayerNorm = nn.LayerNorm(embedding_size, eps=1e-12)
        self.decoder = nn.Linear(embedding_size, word_embeddings.weight.size(0))
        self.decoder.weight = word_embeddings.weight  # tied, as BERT and ELECTRA do
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(F.gelu(self.dense(hidden_states))))  # (…, V)


class MLMModel(nn.Module):
    """An nb-bert encoder with the MLM head."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.electra_config.hidden_size
        self.head = MLMHead(hidden, encoder.embeddings.word_embeddings)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy over the chosen positions (labels != -100)."""
        hidden = self.encoder(input_ids).last_hidden_state  # (B, T, H)
        chosen = labels != -100
        logits = self.head(hidden[chosen])  # (n chosen, V): only those need the softmax
        return F.cross_entropy(logits, labels[chosen])


class MLMTrainer:
    """One nb-bert architecture's MLM run, advanced an iteration at a time (the
    interface of `LMTrainer`)."""

    def __init__(self, spec: Any, config: MLMConfig, *, device: str | torch.device = "cpu"):
        from tfnas_ray.data.tokenizer import vocabulary

        self.config = config
        self.device = torch.device(device)
        self.vocab_size = len(vocabulary())
        self._train = self._sequences("train", config.train_tokens)
        valid = self._sequences("valid", config.valid_tokens)
        if len(self._train) < 1:
            raise TfnasError(f"train_tokens={config.train_tokens} gives no sequence of {config.seq_len} tokens")
        # Validation masks drawn once, from a fixed seed: the same positions every time.
        self._valid = self._inputs_and_labels(valid, torch.Generator().manual_seed(VALIDATION_MASK_SEED))
        torch.manual_seed(config.seed)  # the space draws from torch's global generator
        self.model = self._make_model(spec).to(self.device)
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]  # biases, LayerNorm
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        steps_per_epoch = max(1, len(self._train) // config.batch_size)
        budget = config.budget
        self.total_steps = {
            "steps": budget.amount,
            "tokens": math.ceil(budget.amount / (config.batch_size * config.seq_len)),
            "epochs": budget.amount * steps_per_epoch,
        }[budget.kind]
        self.num_iterations = config.num_iterations
        if self.num_iterations > self.total_steps:
            raise TfnasError(f"iterations={self.num_iterations} exceeds the {self.total_steps} steps of the budget")
        self._rng = np.random.default_rng(config.seed)  # data order
        self._masks = torch.Generator().manual_seed(config.seed)
        self._dropout_rng = torch.Generator().manual_seed(config.seed)  # dropout masks, saved
        self._order = self._rng.permutation(len(self._train))
        self._position = 0
        self.steps = 0
        self.tokens = 0
        self.iteration = 0
        self.seconds = 0.0
        self.diverged = False
        self.history: list[dict[str, float]] = []

    # -- what a subclass changes (`tfnas_ray.training.hf`): data, targets, model --

    def _sequences(self, split: str, max_tokens: int | None) -> torch.Tensor:
        """(N, T) token sequences of `split`."""
        return wordpiece_sequences(split, self.config.seq_len, max_tokens)

    def _inputs_and_labels(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(model inputs, labels with -100 where nothing is predicted) of (B, T) ids."""
        return mask_tokens(ids, vocab_size=self.vocab_size, mask_prob=self.config.mask_prob, generator=generator)

    def _make_model(self, spec: Any) -> nn.Module:
        """A fresh model with `loss(inputs, labels)` (draws from torch's global generator)."""
        from tfnas_ray.spaces.nasbench_bert import SPACE

        return MLMModel(SPACE.build(spec, reading=self.config.reading, dropout=self.config.dropout))

    @property
    def finished(self) -> bool:
        return self.diverged or self.iteration >= self.num_iterations

    def _lr(self, step: int) -> float:
        warmup = max(1, int(self.config.warmup * self.total_steps))
        if step < warmup:
            return self.config.lr * (step + 1) / warmup
        return self.config.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean MLM cross entropy over every chosen validation position."""
        self.model.eval()
        inputs, labels = self._valid
        total, count = 0.0, 0
        for start in range(0, len(inputs), self.config.batch_size):
            x = inputs[start : start + self.config.batch_size].to(self.device)
            y = labels[start : start + self.config.batch_size].to(self.device)
            n = int((y != -100).sum())
            if n:
                total += self.model.loss(x, y).item() * n
                count += n
        self.model.train()
        return total / count

    def train_iteration(self) -> dict[str, Any]:
        """Train to the next iteration's share of the steps, then validate (see LMTrainer)."""
        if self.finished:
            raise TfnasError(f"the run is finished (iteration {self.iteration} of {self.num_iterations}, diverged={self.diverged})")
        config, model = self.config, self.model
        started = time.perf_counter()
        end = math.ceil(self.total_steps * (self.iteration + 1) / self.num_iterations)
        loss_sum, loss_steps = 0.0, 0
        # Dropout draws from torch's global generator: run on our own saved state, so a
        # restored run continues with the masks an uninterrupted one would draw.
        global_rng = torch.get_rng_state()
        torch.set_rng_state(self._dropout_rng.get_state())
        model.train()
        while self.steps < end:
            # -- batch: the next sequences of this epoch's order; reshuffle at its end --
            if self._position + config.batch_size > len(self._order):
                self._order = self._rng.permutation(len(self._train))
                self._position = 0
            index = torch.from_numpy(self._order[self._position : self._position + config.batch_size])
            inputs, labels = self._inputs_and_labels(self._train[index], self._masks)
            # -- forward --
            loss = model.loss(inputs.to(self.device), labels.to(self.device))
            value = loss.item()
            if not math.isfinite(value):  # divergence ends the run
                self.diverged = True
                break
            # -- backward, clip, step on the warm-up/decay schedule --
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(self.steps)
            self.optimizer.step()
            # -- bookkeeping --
            loss_sum += value
            loss_steps += 1
            self._position += config.batch_size
            self.steps += 1
            self.tokens += inputs.numel()
        self._dropout_rng.set_state(torch.get_rng_state())
        torch.set_rng_state(global_rng)
        val_loss = math.nan if self.diverged else self.evaluate()
        self.iteration += 1
        self.seconds += time.perf_counter() - started
        result = {
            "iteration": self.iteration,
            "epoch": self.steps / max(1, len(self._train) // config.batch_size),
            "steps": self.steps,
            "tokens": self.tokens,
            "train_loss": math.nan if self.diverged or not loss_steps else loss_sum / loss_steps,
            "val_loss": val_loss,
            "seconds": self.seconds,
            "diverged": self.diverged,
        }
        self.history.append({k: result[k] for k in ("iteration", "steps", "tokens", "train_loss", "val_loss", "seconds")})
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order": torch.from_numpy(self._order),  # a tensor: checkpoints load with weights_only=True
            "position": self._position,
            "steps": self.steps,
            "tokens": self.tokens,
            "iteration": self.iteration,
            "seconds": self.seconds,
            "diverged": self.diverged,
            "history": list(self.history),
            "rng": self._rng.bit_generator.state,
            "masks": self._masks.get_state(),
            "dropout_rng": self._dropout_rng.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise TfnasError(f"checkpoint config {state['config']} differs from this run's {self.config.to_dict()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._order = np.asarray(state["order"])
        self._position = state["position"]
        self.steps = state["steps"]
        self.tokens = state["tokens"]
        self.iteration = state["iteration"]
        self.seconds = state["seconds"]
        self.diverged = state["diverged"]
        self.history = list(state["history"])
        self._rng.bit_generator.state = state["rng"]
        self._masks.set_state(state["masks"])
        self._dropout_rng.set_state(state["dropout_rng"])
