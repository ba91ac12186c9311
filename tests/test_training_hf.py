"""Short causal- and masked-LM training of `hf` architectures (tfnas_ray.training.hf),
and real Ray Tune runs of it on the shipped WikiText-2: truth rows, resume, bad input.

Models are the smallest of the shipped tiny families (1-2 layers, width 32-64); budgets
are a few steps of 8 x 32 tokens on slices of WikiText-2, seconds per trial.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from tfnas_ray import tables
from tfnas_ray.data.tokenizer import vocabulary
from tfnas_ray.distributed.tune import train_architectures, train_table
from tfnas_ray.errors import TfnasError
from tfnas_ray.pipeline import sample_archs
from tfnas_ray.spaces.hf import SPACE
from tfnas_ray.training.hf import HFTrainConfig, HFTrainer, default_hf_config
from tfnas_ray.training.lm import Budget

LN_VOCAB = math.log(30522)  # 10.326: cross entropy of the uniform distribution over the shipped vocabulary

GPT2 = {"config": {"bos_token_id": 2, "eos_token_id": 3, "n_embd": 32, "n_head": 2, "n_inner": 64, "n_layer": 1,
                   "n_positions": 128, "vocab_size": 30522}, "model_type": "gpt2", "task": "causal-lm"}
BERT = {"config": {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 128, "num_attention_heads": 2,
                   "num_hidden_layers": 1, "pad_token_id": 0, "vocab_size": 30522}, "model_type": "bert", "task": "masked-lm"}
TINY = dict(batch_size=8, seq_len=32, train_tokens=4_000, valid_tokens=1_024)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Shared 2-core machine: one torch thread avoids threads waiting on each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(task: str = "causal-lm", **fields) -> HFTrainConfig:
    return HFTrainConfig(task=task, **{"budget": Budget("steps", 4), "iterations": 2, **TINY, **fields})


def archs_of(*specs) -> pa.Table:
    rows = []
    for spec in specs:
        canonical = SPACE.canonicalize(spec)
        rows.append({"arch_id": SPACE.arch_id(canonical), "space": "hf", "spec": canonical, "source": "test", "benchmark_id": None})
    return tables.from_rows("archs", rows)


# ---- the trainer (no Ray) ------------------------------------------------------------


@pytest.mark.parametrize("spec, task", [(GPT2, "causal-lm"), (BERT, "masked-lm")])
def test_an_untrained_model_predicts_uniformly(spec, task):
    # Known answer: at initialisation (std 0.02, tied output embedding) the logits have a
    # standard deviation of about 0.02·sqrt(width) = 0.11 at width 32, so the expected
    # cross entropy is ln V + σ²/2 ≈ ln V + 0.006 (second-order expansion of log-sum-exp);
    # 0.05 bounds that plus the sampling noise of ~1,000 validation positions.
    trainer = HFTrainer(spec, tiny(task))
    assert trainer.evaluate() == pytest.approx(LN_VOCAB, abs=0.05)


@pytest.mark.parametrize("spec, task", [(GPT2, "causal-lm"), (BERT, "masked-lm")])
def test_training_lowers_the_loss_and_resumes_exactly(spec, task):
    config = tiny(task, budget=Budget("steps", 12), iterations=2, lr=3e-3)
    whole = HFTrainer(spec, config)
    start = whole.evaluate()
    while not whole.finished:
        whole.train_iteration()
    assert [h["steps"] for h in whole.history] == [6, 12]
    assert [h["tokens"] for h in whole.history] == [6 * 8 * 32, 12 * 8 * 32]
    assert whole.history[-1]["val_loss"] < start - 0.1  # 12 steps at lr 3e-3 learn the unigram prior

    # Resume: a run stopped after iteration 1 and restored from its state ends where the
    # uninterrupted run ended (same batches, masks and dropout: exactly, not approximately).
    first = HFTrainer(spec, config)
    first.train_iteration()
    restored = HFTrainer(spec, config)
    restored.load_state_dict(first.state_dict())
    restored.train_iteration()

    def strip(history):  # wall time differs between runs; nothing else may
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(restored.history) == strip(whole.history)


def test_causal_sequences_are_the_stream_without_special_tokens():
    trainer = HFTrainer(GPT2, tiny())
    inputs, labels = trainer._valid
    assert inputs.shape[1] == 32 and not torch.isin(inputs, torch.tensor([2, 3, 4])).any()  # no [CLS]/[SEP]/[MASK]
    # Every position but the first is a target: 31 per sequence, weighted by that count.
    assert int((labels != -100).sum()) == inputs.shape[0] * 31


# ---- Ray Tune runs ---------------------------------------------------------------------


def test_a_tune_run_of_two_gpt2_archs_writes_finite_truth_and_resume_keeps_it(ray_cluster, tmp_path):
    archs = sample_archs("hf", 2, seed=0, space_file="tiny-gpt2")
    config = tiny()
    outcome = train_architectures(archs, tmp_path, train=config)
    rows = tables.read_table("truth", tmp_path / "truth.parquet").to_pylist()
    ids = archs.column("arch_id").to_pylist()
    assert [(r["arch_id"], r["target"]) for r in rows] == [
        (arch, target) for arch in ids for target in ("val_loss@4st", "train_loss@4st")
    ]
    for row in rows:
        assert row["status"] == "ok" and len(row["curve"]) == 2 and row["curve"][-1] == row["value"]
        # 4 steps from ln V: finite, below the uniform loss, far above a trained model's.
        assert 5.0 < row["value"] < LN_VOCAB + 0.05
        assert row["source"] == "tune:wikitext-2:causal-lm,batch_size=8,seq_len=32"
    assert outcome.lines()[0] == "trials: 2 (2 ok)" and not outcome.resumed

    # Rerunning the same call restores the experiment; finished trials are not trained
    # again, so their rows (wall time included) come back unchanged.
    again = train_architectures(archs, tmp_path, train=config)
    assert again.resumed and again.truth.to_pylist() == rows

    # Another budget on the same --out is refused (two budgets under one experiment).
    with pytest.raises(TfnasError, match="started with different train"):
        train_architectures(archs, tmp_path, train=tiny(budget=Budget("steps", 6)))


def test_a_tune_run_of_a_masked_lm_writes_mlm_truth(ray_cluster, tmp_path):
    archs = archs_of(BERT)
    train_architectures(archs, tmp_path, train=tiny("masked-lm"))
    rows = tables.read_table("truth", tmp_path / "truth.parquet").to_pylist()
    assert [r["target"] for r in rows] == ["val_mlm_loss@4st", "train_mlm_loss@4st"]
    assert all(r["status"] == "ok" and 5.0 < r["value"] < LN_VOCAB + 0.05 for r in rows)


# ---- bad input: one line, before Ray -------------------------------------------------


def _write(tmp_path, archs: pa.Table):
    path = tmp_path / "archs.parquet"
    tables.write_table("archs", archs, path)
    return path


def _with(spec, **config):
    return {**spec, "config": {**spec["config"], **config}}


@pytest.mark.parametrize(
    "specs, fields, message",
    [
        ((GPT2, BERT), {}, "mixes hf tasks causal-lm, masked-lm; train one task per run"),
        ((_with(GPT2, vocab_size=1000),), {}, "vocab_size 1000 is smaller than the shipped WordPiece tokenizer's 30522 tokens"),
        ((_with(GPT2, n_positions=16),), {}, "n_positions 16 is shorter than seq_len 64"),
        ((GPT2,), {"emsize": 64}, r"option\(s\) --emsize do not apply to space hf"),
        ((GPT2,), {"corpus": "ptb"}, "hf training corpus 'ptb' is not allowed"),
        ((GPT2,), {"seq_len": 2}, r"seq_len must be in \[3, 4096\]"),
    ],
)
def test_bad_input_is_refused_before_ray(tmp_path, specs, fields, message):
    import ray

    was_running = ray.is_initialized()
    with pytest.raises(TfnasError, match=message):
        train_table(_write(tmp_path, archs_of(*specs)), tmp_path / "out", overrides=fields, log=lambda line: None)
    assert ray.is_initialized() == was_running  # nothing started
    assert not (tmp_path / "out" / "train_manifest.json").exists()


def test_the_cli_refuses_an_unknown_space_in_one_line(tmp_path):
    archs = archs_of(GPT2).to_pylist()
    archs[0]["space"] = "nb-gpt"
    path = _write(tmp_path, tables.from_rows("archs", archs))
    done = subprocess.run(
        [sys.executable, "-m", "tfnas_ray.cli", "train", str(path), "--out", str(tmp_path / "out"), "--steps", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr  # input rejected up front (cli.exit_code)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nb-gpt" in lines[0] and "known" in lines[0], done.stderr


def test_defaults_follow_the_cluster_and_the_task():
    cpu, gpu = default_hf_config(task="masked-lm", gpus=False), default_hf_config(task="causal-lm", gpus=True)
    assert cpu.TARGETS["val_loss"] == "val_mlm_loss" and gpu.TARGETS["val_loss"] == "val_loss"
    assert (cpu.batch_size, cpu.seq_len, cpu.budget.label) == (16, 64, "64ktok")
    assert gpu.seq_len == 128 and len(vocabulary()) == 30522
    assert HFTrainConfig.from_dict(json.loads(json.dumps(cpu.to_dict()))) == cpu  # Tune's JSON round trip


# ---- the commands end to end -----------------------------------------------------------


def test_sample_score_train_correlate_from_the_command_line(ray_cluster, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from tfnas_ray.cli import app

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    # The scores inside the training directory: `evaluate-search DIR` reads truth and scores there.
    archs, out = tmp_path / "archs.parquet", tmp_path / "train"
    scores = out / "scores"
    run("sample", "hf", "--space", "tiny-gpt2", "-n", 3, "--seed", 0, "--out", archs)
    run("score", archs, "-m", "params", "--out", scores, "--no-progress")
    small = ["--steps", 2, "--iterations", 1, "--batch-size", 8, "--seq-len", 32, "--train-tokens", 4000, "--valid-tokens", 1024]
    output = run("train", archs, "--out", out, *small)
    assert "trials: 3 (3 ok)" in output
    output = run("correlate", scores, out / "truth.parquet", "--out", tmp_path / "c.parquet", "--resamples", 0)
    rows = pq.read_table(tmp_path / "c.parquet").to_pylist()
    assert {(r["metric"], r["target"], r["n"]) for r in rows} == {("params", "val_loss@2st", 3), ("params", "train_loss@2st", 3)}
    output = run("evaluate-search", out, "--pools", 20, "--pool-size", 3, "--keep", 1, "--out", tmp_path / "e.parquet")
    evaluation = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert evaluation and {r["target"] for r in evaluation} == {"val_loss@2st"}  # the truth's first target


def test_the_report_says_what_each_hf_candidate_is():
    from tfnas_ray.analysis.report import _what_each_is

    wide = _with(GPT2, n_embd=64, n_layer=2)
    candidates = archs_of(GPT2, wide)
    what = _what_each_is(candidates)
    ids = candidates.column("arch_id").to_pylist()
    # Only the settings that differ between candidates; the shared vocabulary etc. are left out.
    assert what == {ids[0]: "gpt2 causal-lm: n_embd=32, n_layer=1", ids[1]: "gpt2 causal-lm: n_embd=64, n_layer=2"}
    nb_nlp = tables.from_rows("archs", [{**candidates.to_pylist()[0], "space": "nb-nlp"}])
    assert _what_each_is(nb_nlp) == {}  # other spaces: no column


@pytest.mark.parametrize(
    "load, fields, message",
    [
        ("nasbench_bert", {"emsize": 64}, r"option\(s\) --emsize do not apply to space nb-bert"),
        ("nasbench_nlp", {"seq_len": 64}, r"option\(s\) --seq-len do not apply to space nb-nlp"),
    ],
)
def test_an_option_of_another_space_is_one_line_on_every_space(tmp_path, load, fields, message):
    # Fault on main 5a94169: the config dataclass raised TypeError (a traceback, not a line).
    import importlib

    benchmarks = importlib.import_module(f"tfnas_ray.spaces.{load}.benchmarks")
    archs = (benchmarks.load() if load == "nasbench_bert" else benchmarks.load_ptb())[0].slice(0, 1)
    with pytest.raises(TfnasError, match=message):
        train_table(_write(tmp_path, archs), tmp_path / "out", overrides=fields, log=lambda line: None)


def test_search_hf_trains_the_best_it_kept(ray_cluster, tmp_path):
    # The two smallest GPT-2s (1 layer, width 32), so the default CPU budget (64k tokens)
    # stays short; the best by params is trained and its loss sits beside it.
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from tfnas_ray.cli import app

    archs = _write(tmp_path, archs_of(GPT2, _with(GPT2, n_inner=128)))
    out = tmp_path / "search"
    result = CliRunner().invoke(app, ["search", "hf", "--archs", str(archs), "-m", "params", "--keep", "1", "--train", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(out / "chosen.parquet").to_pylist()
    assert row["trained_target"] == "val_loss@64ktok" and 4.0 < row["trained_loss"] < LN_VOCAB - 1.0
    assert "gpt2 causal-lm: n_inner=128" in (out / "report.html").read_text()  # what the kept one is
