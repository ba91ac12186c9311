"""The AWD-style training loop of NAS-Bench-NLP cells (pure torch, no Ray).

Tiny models (emsize/nhid 16-32) on slices of the embedded PTB, so every test runs in a
few seconds on one CPU core.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_nlp.benchmarks import load_ptb
from tfnas_ray.training.lm import Budget, LMTrainer, TrainConfig

# An LSTM-like cell in the recipe grammar (DESIGN.md's data README), small enough to be
# fast: two gates, one candidate, a blend.
CELL = {
    "i": {"op": "linear", "input": ["x", "h_prev_0"]},
    "i_act": {"op": "activation_sigm", "input": ["i"]},
    "c": {"op": "linear", "input": ["x", "h_prev_0"]},
    "c_act": {"op": "activation_tanh", "input": ["c"]},
    "h_new_0": {"op": "blend", "input": ["i_act", "c_act", "h_prev_0"]},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # On two cores shared with other jobs, torch's default of one thread per core makes
    # its threads wait on each other (30 s instead of 2 s here); tiny models need one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**fields) -> TrainConfig:
    base = dict(emsize=16, nhid=16, bptt=20, train_tokens=4_000, valid_tokens=1_000)
    base.update(fields)
    return TrainConfig(**base)


def test_loss_decreases_on_a_corpus_slice():
    # A real run: 16 Adam steps (lr 1e-2, to learn in few steps) over the first 2,000
    # PTB tokens. Before training the tied decoder's weights are U(±0.1), so the loss
    # starts near ln(10,000) = 9.21 (uniform over the vocabulary); learning the slice's
    # unigram statistics alone takes it well below that.
    config = tiny(budget=Budget("steps", 16), iterations=2, lr=1e-2, train_tokens=2_000)
    trainer = LMTrainer(CELL, config)
    first = trainer.train_iteration()
    second = trainer.train_iteration()
    assert trainer.finished and (first["iteration"], second["iteration"]) == (1, 2)
    assert abs(first["train_loss"] - math.log(10_000)) < 0.5
    assert first["train_loss"] - second["train_loss"] > 0.2, (first, second)
    assert first["val_loss"] - second["val_loss"] > 0.3, (first, second)


def test_budget_accounting_steps_tokens_epochs():
    steps = LMTrainer(CELL, tiny(budget=Budget("steps", 5), iterations=2))
    assert [steps.train_iteration()["steps"] for _ in range(2)] == [3, 5]
    assert steps.finished

    tokens = LMTrainer(CELL, tiny(budget=Budget("tokens", 3_000), iterations=3))
    while not tokens.finished:
        last = tokens.train_iteration()
    # The budget is reached within the last window: at most one window (bptt ≤ 20 + 3σ
    # rows of 20 columns) past it.
    assert 3_000 <= last["tokens"] < 3_000 + 40 * 20

    # One epoch over 1,000 tokens in 20 columns: 50 rows, 49 predicted per column.
    epochs = LMTrainer(CELL, tiny(budget=Budget("epochs", 2), train_tokens=1_000))
    first = epochs.train_iteration()
    assert first["tokens"] == 49 * 20 and first["epoch"] == pytest.approx(1.0)
    second = epochs.train_iteration()
    assert second["tokens"] == 2 * 49 * 20 and epochs.finished


def test_resume_from_state_dict_equals_an_uninterrupted_run():
    config = tiny(budget=Budget("steps", 6), iterations=2)
    straight = LMTrainer(CELL, config)
    while not straight.finished:
        straight.train_iteration()

    first = LMTrainer(CELL, config)
    first.train_iteration()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = LMTrainer(CELL, config)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed.train_iteration()

    def strip(history):  # wall time differs between runs; everything else must not
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(resumed.history) == strip(straight.history)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_state_from_another_config_is_refused():
    trainer = LMTrainer(CELL, tiny(budget=Budget("steps", 2), iterations=1))
    state = trainer.state_dict()
    other = LMTrainer(CELL, tiny(budget=Budget("steps", 3), iterations=1))
    with pytest.raises(TfnasError, match="checkpoint config .* differs"):
        other.load_state_dict(state)


def test_divergence_stops_the_run_and_keeps_the_curve():
    # A learning rate of 1e30 makes Adam's first step put every weight near ±1e30; the
    # next forward pass overflows float32 and the loss is NaN.
    trainer = LMTrainer(CELL, tiny(budget=Budget("steps", 40), iterations=4, lr=1e30))
    result = trainer.train_iteration()
    assert result["diverged"] and trainer.finished
    assert math.isnan(result["val_loss"]) and math.isnan(result["train_loss"])
    assert result["steps"] < 10
    assert len(trainer.history) == 1
    with pytest.raises(TfnasError, match="the run is finished .* diverged=True"):
        trainer.train_iteration()


def test_a_real_benchmark_cell_trains():
    # The first nb-nlp-ptb architecture (a published NAS-Bench-NLP cell), 2 steps.
    archs, _ = load_ptb()
    trainer = LMTrainer(archs.column("spec")[0].as_py(), tiny(budget=Budget("steps", 2), iterations=1))
    result = trainer.train_iteration()
    assert math.isfinite(result["val_loss"]) and result["steps"] == 2


@pytest.mark.parametrize(
    "budget, label",
    [(Budget("epochs", 3), "3ep"), (Budget("steps", 200), "200st"), (Budget("tokens", 100_000), "100ktok"),
     (Budget("tokens", 2_000_000), "2Mtok"), (Budget("tokens", 1_500), "1500tok")],
)
def test_budget_labels(budget, label):
    assert budget.label == label


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Budget("hours", 3), r"budget kind 'hours' is not one of epochs, steps, tokens"),
        (lambda: Budget("steps", 0), r"budget of steps must be an integer >= 1, got 0"),
        (lambda: TrainConfig(iterations=2), r"iterations=2 with an epoch budget"),
        (lambda: TrainConfig(budget=Budget("steps", 3), iterations=5), r"iterations must be in \[1, 3\] \(the budget\), got 5"),
        (lambda: TrainConfig(corpus="enwik8"), r"corpus 'enwik8' is not one of ptb, wikitext-2"),
        (lambda: TrainConfig(dropouti=1.0), r"TrainConfig.dropouti must be in \[0, 1\), got 1.0"),
        (lambda: TrainConfig(bptt=3), r"TrainConfig.bptt must be >= 5, got 3"),
        (lambda: TrainConfig(train_tokens=10), r"train_tokens must be >= 2 \* batch_size = 40, got 10"),
        (lambda: TrainConfig.from_dict({"epochs": 3}), r"unknown TrainConfig field\(s\) epochs"),
    ],
)
def test_config_errors_name_the_input(make, message):
    with pytest.raises(TfnasError, match=message):
        make()


def test_config_round_trips_through_a_dict():
    config = TrainConfig(budget=Budget("tokens", 5_000), iterations=2, emsize=32)
    assert TrainConfig.from_dict(config.to_dict()) == config
