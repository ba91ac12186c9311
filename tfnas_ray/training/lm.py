"""Train a NAS-Bench-NLP language model the way NAS-Bench-NLP did (AWD-LSTM style).

Shapes: T steps of one BPTT window, B batch, E emsize, V vocabulary.

NAS-Bench-NLP trained every cell with the AWD-LSTM training code (Merity et al. 2018,
github.com/salesforce/awd-lstm-lm `main.py`), with Adam instead of SGD/ASGD:
Adam lr 1e-3, weight decay 1.2e-6, batch 20, BPTT 70 drawn per batch as AWD does
(95%: N(70, 5), else N(35, 5), at least 5 steps, the learning rate scaled by
seq_len / 70), gradient norm clipped to 0.25, activation regularisation α = 2 on the
last layer's dropped-out output and temporal activation regularisation β = 1 on its raw
output, dropouts 0.1 / 0.25 / 0.4 / 0.0 (output / between layers / input / embedding
rows) and weight drop 0.1 on the recurrent weights (the model applies those in train()).

A run is cut into iterations (one per epoch for an epoch budget, otherwise the step or
token budget split evenly); each iteration trains, then evaluates on the validation
split, and `LMTrainer.state_dict()` after it holds everything needed to continue the
run exactly where it stopped. No Ray here: `tfnas_ray.distributed.tune` drives this.

Example:
    >>> config = TrainConfig(budget=Budget("steps", 4), emsize=16, nhid=16,
    ...                      train_tokens=2000, valid_tokens=500)
    >>> trainer = LMTrainer(LSTM_SPEC, config)      # doctest: +SKIP
    >>> while not trainer.finished:                  # doctest: +SKIP
    ...     print(trainer.train_iteration()["val_loss"])
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from tfnas_ray import checks
from tfnas_ray.data.corpora import CORPORA, batchify, load_corpus
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_nlp.model import DROPOUTS

BUDGET_KINDS = ("epochs", "steps", "tokens")
_BUDGET_SUFFIX = {"epochs": "ep", "steps": "st", "tokens": "tok"}


@dataclass(frozen=True)
class Budget:
    """How long one architecture trains.

    Attributes:
        kind: "epochs" (passes over the training split), "steps" (optimizer steps), or
            "tokens" (training tokens, B per BPTT step, summed over steps).
        amount: how many of them, >= 1.
    """

    kind: str
    amount: int

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise TfnasError(f"budget kind {self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if not isinstance(self.amount, int) or self.amount < 1:
            raise TfnasError(f"budget of {self.kind} must be an integer >= 1, got {self.amount!r}")

    @property
    def label(self) -> str:
        """The budget as it appears in target names: `3ep`, `200st`, `100ktok`, `2Mtok`."""
        amount = self.amount
        if self.kind == "tokens":
            for scale, prefix in ((1_000_000, "M"), (1_000, "k")):
                if amount % scale == 0:
                    return f"{amount // scale}{prefix}tok"
        return f"{amount}{_BUDGET_SUFFIX[self.kind]}"


@dataclass(frozen=True)
class TrainConfig:
    """One short training run of an nb-nlp architecture (defaults: NAS-Bench-NLP's).

    Attributes:
        corpus: "ptb" or "wikitext-2".
        budget: how long to train (default 3 epochs).
        iterations: report/evaluation points of a step or token budget, which is split
            evenly between them (default: 4, or the budget if smaller). An epoch budget
            reports once per epoch; this must then be None.
        emsize: embedding size E, also the last layer's hidden size (published 400;
            shrink for CPU budgets).
        nhid: hidden size of the other layers (published 600).
        nlayers: recurrent layers (published 3).
        dropout: locked dropout on the last layer's output.
        dropouth: locked dropout between layers.
        dropouti: locked dropout on the embedding output.
        dropoute: dropout of whole embedding rows.
        wdrop: DropConnect on the recurrent weights.
        lr: Adam learning rate (scaled per batch by seq_len / bptt, as AWD does).
        weight_decay: Adam's L2 weight decay.
        batch_size: training batch B (columns of the token stream).
        bptt: mean BPTT length; each batch draws its own (AWD's variable length).
        clip: gradient norm clip (0 disables clipping).
        alpha: activation regularisation (AR) weight.
        beta: temporal activation regularisation (TAR) weight.
        eval_batch_size: columns of the validation stream (AWD uses 10).
        train_tokens: train on the first N tokens of the training split only (a corpus
            slice for CPU budgets and tests; None: all). An epoch is a pass over it.
        valid_tokens: evaluate on the first N validation tokens only (None: all).
        seed: seeds the model's initialisation, dropout masks and BPTT lengths.
    """

    corpus: str = "ptb"
    budget: Budget = Budget("epochs", 3)
    iterations: int | None = None
    emsize: int = 400
    nhid: int = 600
    nlayers: int = 3
    dropout: float = 0.1
    dropouth: float = 0.25
    dropouti: float = 0.4
    dropoute: float = 0.0
    wdrop: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1.2e-6
    batch_size: int = 20
    bptt: int = 70
    clip: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    eval_batch_size: int = 10
    train_tokens: int | None = None
    valid_tokens: int | None = None
    seed: int = 0

    # The truth targets of a run, per reported loss (the budget label is appended).
    TARGETS: ClassVar[Mapping[str, str]] = {"val_loss": "val_loss", "train_loss": "train_loss"}

    def __post_init__(self) -> None:
        if isinstance(self.budget, Mapping):  # from a JSON round trip (Tune's param space)
            object.__setattr__(self, "budget", Budget(**self.budget))
        if self.corpus not in CORPORA:
            raise TfnasError(f"corpus {self.corpus!r} is not one of {', '.join(CORPORA)}")
        if self.iterations is not None:
            if self.budget.kind == "epochs":
                raise TfnasError(
                    f"iterations={self.iterations} with an epoch budget: an epoch budget reports "
                    "once per epoch; iterations applies to step and token budgets only"
                )
            if not 1 <= self.iterations <= self.budget.amount:
                raise TfnasError(
                    f"iterations must be in [1, {self.budget.amount}] (the budget), got {self.iterations}"
                )
        checks.at_least(self, ("emsize", "nhid", "nlayers", "batch_size", "eval_batch_size"), 1)
        # AWD draws seq_len >= 5, so a window needs at least 5 + 1 rows of the stream.
        checks.at_least(self, ("bptt",), 5)
        checks.finite_nonnegative(self, ("lr", "weight_decay", "clip", "alpha", "beta"))
        if self.lr == 0:
            raise TfnasError("TrainConfig.lr must be > 0, got 0")
        checks.fractions(self, DROPOUTS)
        if self.train_tokens is not None and self.train_tokens < 2 * self.batch_size:
            raise TfnasError(
                f"train_tokens must be >= 2 * batch_size = {2 * self.batch_size}, got {self.train_tokens}"
            )
        if self.valid_tokens is not None and self.valid_tokens < 2 * self.eval_batch_size:
            raise TfnasError(
                f"valid_tokens must be >= 2 * eval_batch_size = {2 * self.eval_batch_size}, got {self.valid_tokens}"
            )

    @property
    def num_iterations(self) -> int:
        if self.budget.kind == "epochs":
            return self.budget.amount
        return self.iterations if self.iterations is not None else min(4, self.budget.amount)

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of `SPACE.build` (nb-nlp's LMConfig fields)."""
        return {
            name: getattr(self, name)
            for name in ("emsize", "nhid", "nlayers", *DROPOUTS)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields; `TrainConfig.from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "TrainConfig":
        return checks.from_fields(cls, fields)

    @property
    def source(self) -> str:
        """The `source` of its truth rows: corpus and width (a shrunk width is another
        experiment than the published one, under the same budget label)."""
        return f"tune:{self.corpus}:emsize={self.emsize},nhid={self.nhid},nlayers={self.nlayers}"

    def describe(self) -> str:
        """One line for logs: budget, width, corpus slice."""
        width = f"emsize {self.emsize} / nhid {self.nhid} / {self.nlayers} layers"
        if (self.emsize, self.nhid, self.nlayers) != (400, 600, 3):
            width += " (shrunk; published: 400 / 600 / 3)"
        train = "all" if self.train_tokens is None else f"first {self.train_tokens:,}"
        valid = "all" if self.valid_tokens is None else f"first {self.valid_tokens:,}"
        return (
            f"{self.corpus}, budget {self.budget.amount:,} {self.budget.kind} per trial "
            f"in {self.num_iterations} iterations, {width}, {train} training tokens, "
            f"validation on {valid} tokens, seed {self.seed}"
        )


def repackage_hidden(hidden):
    """Detach hidden tuples from their history, so BPTT stops at the window's start."""
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return type(hidden)(repackage_hidden(h) for h in hidden)


def lm_loss(model, tokens: torch.Tensor, targets: torch.Tensor, hidden) -> tuple[torch.Tensor, list]:
    """Mean next-token cross entropy (nats) of tokens (T, B) against targets (T·B,)."""
    output, hidden = model(tokens, hidden)  # (T·B, E)
    return F.cross_entropy(model.decode(output), targets), hidden


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, *, bptt: int) -> float:
    """Token-weighted mean cross entropy (nats) over a batchified stream (rows, B),
    in BPTT windows of fixed length, carrying the hidden state across windows (AWD)."""
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(stream.size(1))
    total, count = 0.0, 0
    for i in range(0, stream.size(0) - 1, bptt):
        seq_len = min(bptt, stream.size(0) - 1 - i)
        tokens, targets = stream[i : i + seq_len], stream[i + 1 : i + 1 + seq_len].reshape(-1)
        loss, hidden = lm_loss(model, tokens, targets, hidden)
        total += loss.item() * targets.numel()
        count += targets.numel()
    model.train(was_training)
    return total / count


class LMTrainer:
    """One architecture's training run, advanced an iteration at a time.

    Args:
        spec: an nb-nlp recipe (canonical JSON or dict).
        config: the run's hyper-parameters and budget.
        device: torch device to train on.

    The invariant kept between iterations: `self._position` is the next row of the
    training stream and `self._hidden` the detached state after the row before it, so
    a restored trainer continues the same token stream with the same hidden state.
    """

    def __init__(self, spec: Any, config: TrainConfig, *, device: str | torch.device = "cpu"):
        from tfnas_ray.spaces.nasbench_nlp import SPACE

        self.config = config
        self.device = torch.device(device)
        corpus = load_corpus(config.corpus)
        train = corpus.train if config.train_tokens is None else corpus.train[: config.train_tokens]
        valid = corpus.valid if config.valid_tokens is None else corpus.valid[: config.valid_tokens]
        self._train = torch.from_numpy(batchify(train, config.batch_size)).to(self.device)  # (rows, B)
        self._valid = torch.from_numpy(batchify(valid, config.eval_batch_size)).to(self.device)
        # The model draws its initialisation from torch's global generator (the reference
        # order, DESIGN.md); seeding it here makes a run reproducible from its config.
        torch.manual_seed(config.seed)
        self.model = SPACE.build(spec, ntoken=corpus.ntoken, **config.model_options()).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self._bptt_rng = np.random.default_rng(config.seed)  # AWD's per-batch BPTT draws
        self._dropout_rng = torch.Generator().manual_seed(config.seed)  # state of dropout masks, saved
        self._position = 0  # next row of the training stream
        self._hidden = self.model.init_hidden(config.batch_size)
        self.epoch = 0  # completed passes over the training stream
        self.steps = 0
        self.tokens = 0
        self.iteration = 0
        self.seconds = 0.0  # training + evaluation wall time, summed over iterations
        self.diverged = False
        self.history: list[dict[str, float]] = []  # one entry per completed iteration

    @property
    def finished(self) -> bool:
        return self.diverged or self.iteration >= self.config.num_iterations

    def _iteration_end(self, iteration: int) -> int:
        """The budget counter (steps or tokens) at which 1-based `iteration` ends."""
        budget = self.config.budget
        return math.ceil(budget.amount * iteration / self.config.num_iterations)

    def _counter(self) -> int:
        return self.steps if self.config.budget.kind == "steps" else self.tokens

    def train_iteration(self) -> dict[str, Any]:
        """Train until the next iteration's end, then evaluate on the validation split.

        Returns:
            iteration, epoch (fractional: passes over the stream), steps, tokens,
            train_loss (token-weighted mean of the raw cross entropy, without AR/TAR),
            val_loss (NaN if diverged), seconds (cumulative), diverged.
            A non-finite training loss stops the iteration at once with diverged=True;
            the run is then finished.
        """
        if self.finished:
            raise TfnasError(
                f"the run is finished (iteration {self.iteration} of {self.config.num_iterations}, "
                f"diverged={self.diverged}); nothing left to train"
            )
        config, model, optimizer = self.config, self.model, self.optimizer
        started = time.perf_counter()
        target_iteration = self.iteration + 1
        end = None if config.budget.kind == "epochs" else self._iteration_end(target_iteration)
        rows = self._train.size(0)
        loss_sum, loss_tokens = 0.0, 0
        torch_rng = torch.get_rng_state()
        torch.set_rng_state(self._dropout_rng.get_state())
        model.train()
        while True:
            # -- stop: at the iteration's end (epoch boundary, or the step/token mark) --
            if end is None and self._position >= rows - 1 and loss_tokens > 0:
                break
            if end is not None and self._counter() >= end:
                break
            if self._position >= rows - 1:  # a new pass over the stream (AWD: fresh hidden)
                self._position = 0
                self._hidden = model.init_hidden(config.batch_size)
            # -- window: AWD's variable BPTT (95%: N(bptt, 5), else N(bptt/2, 5); >= 5) --
            mean_len = config.bptt if self._bptt_rng.random() < 0.95 else config.bptt / 2
            seq_len = max(5, int(self._bptt_rng.normal(mean_len, 5)))
            seq_len = min(seq_len, rows - 1 - self._position)
            i = self._position
            tokens = self._train[i : i + seq_len]  # (T, B)
            targets = self._train[i + 1 : i + 1 + seq_len].reshape(-1)  # (T·B,)
            # -- forward: cross entropy + AR on the last layer's dropped-out output + TAR
            #    on its raw output (AWD applies both to the last layer only) --
            self._hidden = repackage_hidden(self._hidden)
            output, self._hidden, raw_outputs, outputs = model(tokens, self._hidden, return_h=True)
            raw_loss = F.cross_entropy(model.decode(output), targets)
            loss = raw_loss
            if config.alpha:
                loss = loss + config.alpha * outputs[-1].pow(2).mean()
            if config.beta:
                loss = loss + config.beta * (raw_outputs[-1][1:] - raw_outputs[-1][:-1]).pow(2).mean()
            # -- divergence: a non-finite loss ends the run; training on would only spread NaN --
            raw_value = raw_loss.item()
            if not (math.isfinite(raw_value) and math.isfinite(loss.item())):
                self.diverged = True
                break
            # -- backward, clip, step with the learning rate scaled to the window (AWD) --
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * seq_len / config.bptt
            optimizer.step()
            # -- bookkeeping --
            n = targets.numel()
            loss_sum += raw_value * n
            loss_tokens += n
            self._position += seq_len
            self.steps += 1
            self.tokens += n
            if self._position >= rows - 1:
                self.epoch += 1
        self._dropout_rng.set_state(torch.get_rng_state())
        torch.set_rng_state(torch_rng)
        self._hidden = repackage_hidden(self._hidden)
        # -- evaluate: validation loss after the iteration (skipped once diverged) --
        val_loss = math.nan if self.diverged else evaluate(model, self._valid, bptt=config.bptt)
        self.iteration = target_iteration
        self.seconds += time.perf_counter() - started
        train_loss = math.nan if self.diverged or loss_tokens == 0 else loss_sum / loss_tokens
        result = {
            "iteration": self.iteration,
            # At the stream's end the pass is already counted in self.epoch.
            "epoch": self.epoch + (self._position / (rows - 1) if self._position < rows - 1 else 0.0),
            "steps": self.steps,
            "tokens": self.tokens,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "seconds": self.seconds,
            "diverged": self.diverged,
        }
        self.history.append({k: result[k] for k in ("iteration", "steps", "tokens", "train_loss", "val_loss", "seconds")})
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (for `torch.save`)."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "hidden": [tuple(h.cpu() for h in layer) for layer in self._hidden],
            "position": self._position,
            "epoch": self.epoch,
            "steps": self.steps,
            "tokens": self.tokens,
            "iteration": self.iteration,
            "seconds": self.seconds,
            "diverged": self.diverged,
            "history": list(self.history),
            "bptt_rng": self._bptt_rng.bit_generator.state,
            "dropout_rng": self._dropout_rng.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()` of a run with the same config.

        Raises:
            TfnasError: the state was saved by a run with a different config.
        """
        if state["config"] != self.config.to_dict():
            raise TfnasError(
                f"checkpoint config {state['config']} differs from this run's {self.config.to_dict()}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._hidden = [tuple(h.to(self.device) for h in layer) for layer in state["hidden"]]
        self._position = state["position"]
        self.epoch = state["epoch"]
        self.steps = state["steps"]
        self.tokens = state["tokens"]
        self.iteration = state["iteration"]
        self.seconds = state["seconds"]
        self.diverged = state["diverged"]
        self.history = list(state["history"])
        self._bptt_rng.bit_generator.state = state["bptt_rng"]
        self._dropout_rng.set_state(state["dropout_rng"])
