"""Space `hf`: Hugging Face model families from TOML space files — parsing, one-line
errors for bad files, distinct reproducible sampling, canonical ids, parameter counts,
and the CLI (`sample`, `score`, `search`) through Ray."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tfnas_ray import tables
from tfnas_ray.cli import app
from tfnas_ray.errors import TfnasError
from tfnas_ray.pipeline import sample_archs
from tfnas_ray.spaces import content_id, get_space
from tfnas_ray.spaces.hf import SPACE, HfSpec, load_family, shipped_families

REPO = Path(__file__).resolve().parents[1]

GOOD = """
name = "toy"
model_type = "gpt2"
task = "causal-lm"
constraints = ["n_embd % n_head == 0"]

[fixed]
vocab_size = 100
n_positions = 32
bos_token_id = 2
eos_token_id = 3

[choices]
n_layer = [1, 2]
n_embd = [8, 12]
n_head = [2, 3]
"""


def write(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- the shipped families ---------------------------------------------------------------


def test_the_shipped_families_are_in_the_package_and_the_repo_alike():
    shipped = shipped_families()
    assert set(shipped) >= {"tiny-gpt2", "tiny-bert"}
    for name, path in shipped.items():
        assert (REPO / "examples" / "spaces" / f"{name}.toml").read_text() == path.read_text()
    assert load_family("tiny-gpt2").model_type == "gpt2"
    assert load_family("tiny-bert").task == "masked-lm"


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-bert"])
def test_params_equal_num_parameters_of_the_built_model(family):
    specs = load_family(family).sample(3, seed=1)
    for spec in specs:
        model = SPACE.build(spec)
        assert SPACE.count_parameters(spec) == model.num_parameters()
        # and as the `params` metric reports it (tied weights once)
        assert SPACE.count_parameters(spec) == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_a_small_family_counts_its_configurations_by_hand(tmp_path):
    # n_layer 2 × (n_embd, n_head) pairs with n_embd % n_head == 0: (8,2), (12,2), (12,3) → 6
    family = load_family(write(tmp_path, GOOD))
    assert family.combinations() == 8
    assert family.size() == 6
    specs = family.sample(6, seed=0)
    assert len(set(specs)) == 6
    configs = [json.loads(s)["config"] for s in specs]
    assert all(c["n_embd"] % c["n_head"] == 0 for c in configs)
    with pytest.raises(TfnasError, match=r"space toy holds 6 distinct configurations .* asked for 7"):
        family.sample(7, seed=0)


def test_sampling_is_reproducible_and_prefix_stable():
    family = load_family("tiny-gpt2")
    assert family.sample(10, seed=3) == family.sample(10, seed=3)
    assert family.sample(10, seed=3)[:4] == family.sample(4, seed=3)
    assert family.sample(10, seed=3) != family.sample(10, seed=4)


def test_the_id_is_a_content_hash_of_the_model_whatever_the_aliases(tmp_path):
    alias = GOOD.replace("n_embd", "hidden_size").replace("n_head", "num_attention_heads").replace("n_layer", "num_hidden_layers")
    a = load_family(write(tmp_path, GOOD, "a.toml")).sample(6, seed=0)
    b = load_family(write(tmp_path, alias, "b.toml")).sample(6, seed=0)
    assert a == b
    spec = json.loads(a[0])
    assert set(spec) == {"config", "model_type", "task"}
    assert SPACE.canonicalize(a[0]) == a[0]
    # reordering keys does not change the canonical spec or the id
    shuffled = json.dumps({"task": spec["task"], "config": dict(reversed(list(spec["config"].items()))), "model_type": "gpt2"})
    assert SPACE.canonicalize(shuffled) == a[0]
    assert SPACE.arch_id(a[0]) == content_id("hf", a[0])


# ---- bad space files: one line, before any work ---------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('"gpt2"', '"gpt-9000"'), r"model_type 'gpt-9000' is not a transformers model type"),
        (lambda t: t.replace('"causal-lm"', '"seq2seq"'), r"task 'seq2seq' is not one of causal-lm, masked-lm"),
        (lambda t: t.replace("n_layer = [1, 2]", 'n_layer = [1, "two"]'), r"choices.n_layer = 'two': transformers rejects gpt2 config"),
        (lambda t: t.replace("n_layer = [1, 2]", "n_layers = [1, 2]"), r"\[choices\]: 'n_layers' is not a setting of GPT2Config"),
        (lambda t: t.replace("vocab_size = 100", "vocab_sise = 100"), r"\[fixed\]: 'vocab_sise' is not a setting of GPT2Config"),
        (lambda t: "extra = 1\n" + t, r"unknown key\(s\) extra"),
        (lambda t: t.replace('["n_embd % n_head == 0"]', '["n_embd > 100"]'), r"leave none of the 8 combinations"),
        (lambda t: t.replace('["n_embd % n_head == 0"]', '["__import__(\'os\')"]'), r"uses Call"),
        (lambda t: t.replace('["n_embd % n_head == 0"]', '["n_emdb % 2 == 0"]'), r"names n_emdb, not a fixed or chosen setting"),
        (lambda t: t.replace("n_layer = [1, 2]", "n_layer = []"), r"choices.n_layer must be a non-empty list"),
        (lambda t: t.replace("n_layer = [1, 2]", "n_layer = [2, 2]"), r"choices.n_layer lists a value twice"),
        (lambda t: t.replace("n_layer = [1, 2]", "n_layer = [1, 2]\nvocab_size = [50]"), r"vocab_size is both fixed and chosen"),
        (lambda t: t.replace('model_type = "gpt2"\n', ""), r"missing 'model_type'"),
        (lambda t: t.replace('"causal-lm"', '"masked-lm"'), r"no masked-lm model for model_type 'gpt2'; it has causal-lm"),
        (lambda t: t + "\n[[", r"not valid TOML"),
    ],
)
def test_a_bad_space_file_gets_one_line_naming_the_problem(tmp_path, edit, message):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(TfnasError, match=message) as err:
        load_family(path)
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_a_config_that_transformers_cannot_build_fails_at_sampling_naming_it(tmp_path):
    # without the divisibility constraint, GPT-2 refuses width 12 with 8 heads when built
    text = GOOD.replace('constraints = ["n_embd % n_head == 0"]', "").replace("n_head = [2, 3]", "n_head = [8]")
    family = load_family(write(tmp_path, text))
    with pytest.raises(TfnasError, match=r"transformers cannot build gpt2 causal-lm .*\"n_embd\": 12, \"n_head\": 8.*must be divisible.*; add a constraint that excludes it"):
        family.sample(family.size(), seed=0)


def test_an_unknown_space_file_or_family_lists_the_shipped_ones():
    with pytest.raises(TfnasError, match=r"neither a file nor a shipped family \(tiny-bert, tiny-gpt2"):
        load_family("no-such-family")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_malformed_space_file_is_a_one_line_tfnas_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.toml"
        path.write_text(text)
        with pytest.raises(TfnasError) as err:
            load_family(path)
        assert "\n" not in str(err.value)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["model_type", "task", "config", "other"]), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=4))
def test_any_malformed_spec_is_a_tfnas_error(spec):
    with pytest.raises(TfnasError):
        HfSpec.parse(spec)


# ---- the CLI -------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_sample_needs_a_family_and_says_how_many_exist(tmp_path):
    result = run("sample", "hf", "-n", "2", "--out", str(tmp_path / "a.parquet"))
    assert result.exit_code == 2
    assert "give --space FILE" in result.output
    result = run("sample", "hf", "--space", "tiny-gpt2", "-n", "1000", "--out", str(tmp_path / "a.parquet"))
    assert result.exit_code == 2
    assert "holds 124 distinct configurations" in result.output
    result = run("sample", "nb-nlp", "--space", "tiny-gpt2", "-n", "2", "--out", str(tmp_path / "a.parquet"))
    assert result.exit_code == 2 and "applies to space hf only" in result.output


def test_sample_then_score_as_the_readme_says(ray_cluster, tmp_path, monkeypatch):
    # The README's two commands, from the repository root (relative space path), on 3 archs.
    monkeypatch.chdir(REPO)
    archs, scores = tmp_path / "archs.parquet", tmp_path / "scores"
    result = run("sample", "hf", "--space", "examples/spaces/tiny-gpt2.toml", "-n", "3", "--seed", "0", "--out", str(archs))
    assert result.exit_code == 0, result.output
    table = tables.read_table("archs", archs)
    assert table.num_rows == 3 and set(table.column("space").to_pylist()) == {"hf"}
    assert table.column("source").to_pylist() == ["sample:tiny-gpt2:seed=0"] * 3
    args = ["score", str(archs), "-m", "params", "-m", "head_confidence", "-m", "latency_ms", "--out", str(scores), "--no-progress"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "failures: none" in result.output
    rows = tables.read_table("scores", scores).to_pylist()
    assert len(rows) == 9 and all(r["value"] is not None and r["value"] > 0 for r in rows)
    from tfnas_ray.distributed.scorer import cpu_name

    assert {r["device"] for r in rows} == {f"cpu ({cpu_name()})"}  # latency says where it was measured
    specs = dict(zip(table.column("arch_id").to_pylist(), table.column("spec").to_pylist()))
    for r in rows:
        if r["metric"] == "params":
            assert r["value"] == SPACE.build(specs[r["arch_id"]]).num_parameters()
    # rerun: every shard is kept
    result = run(*args)
    assert result.exit_code == 0 and "scored now 0" in result.output, result.output


def test_search_takes_an_hf_family_and_resumes(ray_cluster, tmp_path):
    out = tmp_path / "search"
    args = ["search", "hf", "--space", "tiny-bert", "-m", "naswot", "--candidates", "3", "--keep", "2", "--out", str(out), "--no-progress"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    assert len(chosen) == 2 and all(r["space"] == "hf" for r in chosen)
    result = run(*args)
    assert result.exit_code == 0 and "scored now 0" in result.output, result.output
    result = run("search", "hf", "-m", "naswot", "--candidates", "3", "--out", str(tmp_path / "other"), "--no-progress")
    assert result.exit_code == 2 and "give --space FILE" in result.output


def test_search_under_a_latency_limit_keeps_only_what_was_measured_fast_enough(ray_cluster, tmp_path):
    out = tmp_path / "fast"
    common = ["search", "hf", "--space", "tiny-gpt2", "-m", "params", "--candidates", "4", "--keep", "4", "--no-progress"]
    result = run(*common, "--out", str(out), "--max-latency-ms", "1e6")  # admits every candidate
    assert result.exit_code == 0, result.output
    assert "4 of 4 candidates admitted" in result.output
    chosen = pq.read_table(out / "chosen.parquet").to_pylist()
    latency = {r["arch_id"]: r["latency_ms"] for r in chosen}
    assert len(chosen) == 4 and all(v > 0 for v in latency.values())
    front = pq.read_table(out / "pareto_latency.parquet").to_pylist()
    # the front of merit (params) vs latency, by its definition over the 4 measured candidates
    merit = {r["arch_id"]: r["merit"] for r in chosen}
    expected = {
        a for a in merit
        if not any(merit[b] >= merit[a] and latency[b] <= latency[a] and (merit[b] > merit[a] or latency[b] < latency[a]) for b in merit)
    }
    assert {r["arch_id"] for r in front} == expected
    # a limit below the slowest measured latency drops it (same shards: nothing rescored)
    limit = (sorted(latency.values())[-1] + sorted(latency.values())[-2]) / 2
    result = run(*common, "--out", str(tmp_path / "fast2"), "--max-latency-ms", str(limit))
    assert result.exit_code == 0, result.output
    kept = {r["arch_id"] for r in pq.read_table(tmp_path / "fast2" / "chosen.parquet").to_pylist()}
    # latency is re-measured in the new directory: only what it measured counts
    again = {r["arch_id"]: r["latency_ms"] for r in pq.read_table(tmp_path / "fast2" / "chosen.parquet").to_pylist()}
    assert all(v <= limit for v in again.values()) and kept == set(again)
    assert "candidates admitted" in result.output
    result = run(*common, "--out", str(tmp_path / "bad"), "--max-latency-ms", "-1")
    assert result.exit_code == 2 and "--max-latency-ms must be a positive number, got -1.0" in result.output
