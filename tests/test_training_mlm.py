"""Masked-language-model pretraining of NAS-Bench-BERT encoders (torch), and one real
Tune trial of it. Short sequences, small batches, WikiText-2 slices."""

from __future__ import annotations

import io
import math

import pytest
import torch

from tfnas_ray import tables
from tfnas_ray.data.tokenizer import CLS, MASK, SEP, vocabulary
from tfnas_ray.distributed.tune import train_architectures
from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces.nasbench_bert import SPACE
from tfnas_ray.training.lm import Budget
from tfnas_ray.training.mlm import MLMConfig, MLMTrainer, mask_tokens, wordpiece_sequences

# Two layers of hidden 128 (the space's smallest): an SA layer and a DSC layer.
SPEC = {
    "hidden_size": 128,
    "encoder_layers": [
        {"operation_type": "SA", "operation_parameter": "SDP", "num_operation_heads": 2,
         "feed_forward_dimension": 512, "num_feed_forward": 1},
        {"operation_type": "DSC", "operation_parameter": 5, "num_operation_heads": 2,
         "feed_forward_dimension": 512, "num_feed_forward": 1},
    ],
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Shared 2-core machine: one torch thread avoids threads waiting on each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**fields) -> MLMConfig:
    base = dict(batch_size=8, seq_len=32, train_tokens=3_000, valid_tokens=1_000)
    base.update(fields)
    return MLMConfig(**base)


def test_masking_follows_bert():
    ids = wordpiece_sequences("train", 64, 62 * 200)  # 200 sequences
    assert ids.shape == (200, 64) and (ids[:, 0] == CLS).all() and (ids[:, -1] == SEP).all()
    inputs, labels = mask_tokens(ids, vocab_size=16_384, mask_prob=0.15, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert 0.14 < chosen.float().mean().item() * 64 / 62 < 0.16  # 15% of the body
    assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.12  # 80% [MASK], ~10% unchanged


def test_mlm_loss_decreases():
    # From ln(30,522) = 10.33 (untrained: near-uniform over the vocabulary), 20 AdamW
    # steps on 3,000 tokens at lr 2e-3 take the validation loss a nat below it.
    trainer = MLMTrainer(SPEC, tiny(budget=Budget("steps", 20), iterations=2, lr=2e-3))
    first = trainer.train_iteration()
    second = trainer.train_iteration()
    assert trainer.finished and second["steps"] == 20
    assert abs(first["train_loss"] - math.log(len(vocabulary()))) < 1.0
    assert first["val_loss"] - second["val_loss"] > 0.3, (first, second)
    assert second["val_loss"] < math.log(len(vocabulary())) - 1.0, second


def test_mlm_resume_equals_an_uninterrupted_run():
    config = tiny(budget=Budget("steps", 4), iterations=2)
    straight = MLMTrainer(SPEC, config)
    while not straight.finished:
        straight.train_iteration()
    first = MLMTrainer(SPEC, config)
    first.train_iteration()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = MLMTrainer(SPEC, config)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed.train_iteration()
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(corpus="ptb"), r"MLM corpus 'ptb' is not allowed; allowed: wikitext-2"),
        (dict(seq_len=1024), r"seq_len must be in \[3, 512\] \(ELECTRA's position table\), got 1024"),
        (dict(mask_prob=0.0), r"MLMConfig.mask_prob must be in \(0, 1\), got 0.0"),
        (dict(warmup=1.0), r"MLMConfig.warmup must be in \[0, 1\), got 1.0"),
        (dict(lr=float("nan")), r"MLMConfig.lr must be finite and >= 0, got nan"),
    ],
)
def test_mlm_config_errors(fields, message):
    with pytest.raises(TfnasError, match=message):
        MLMConfig(**fields)


def test_an_nb_bert_tune_trial_writes_mlm_truth(ray_cluster, tmp_path):
    spec = SPACE.canonicalize(SPEC)
    archs = tables.from_rows("archs", [{"arch_id": "bert-a", "space": "nb-bert", "spec": spec}])
    train_architectures(archs, tmp_path, train=tiny(budget=Budget("steps", 2), iterations=2))
    rows = tables.read_table("truth", tmp_path / "truth.parquet").to_pylist()
    assert [(r["target"], r["status"]) for r in rows] == [("val_mlm_loss@2st", "ok"), ("train_mlm_loss@2st", "ok")]
    assert rows[0]["source"] == "tune:wikitext-2:mlm,batch_size=8,seq_len=32"
    assert len(rows[0]["curve"]) == 2 and math.isfinite(rows[0]["value"])


def test_the_reading_reaches_the_trained_model():
    """`tfnas train --reading as-scored` trains the model the authors scored (hidden 256)."""
    trainer = MLMTrainer(SPEC, tiny(reading="as-scored"))
    assert trainer.model.encoder.electra_config.hidden_size == 256
    assert MLMTrainer(SPEC, tiny()).model.encoder.electra_config.hidden_size == 128
    with pytest.raises(TfnasError, match="MLMConfig.reading 'scored' is not one of described, as-trained, as-scored"):
        tiny(reading="scored")
