"""Embedded corpora and benchmarks: the package data equals the published files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.data.corpora import batchify, load_corpus, read_text
from tfnas_ray.errors import TfnasError

# Token counts with <eos> per line: ../shared/data/README.md (NAS-Bench-NLP reading).
CORPUS_COUNTS = {
    "ptb": (10_000, 929_589, 73_760, 82_430),
    "wikitext-2": (33_278, 2_088_628, 217_646, 245_569),
}


@pytest.mark.parametrize("name", sorted(CORPUS_COUNTS))
def test_corpus_token_counts_equal_the_published_ones(name):
    corpus = load_corpus(name)
    assert (corpus.ntoken, len(corpus.train), len(corpus.valid), len(corpus.test)) == CORPUS_COUNTS[name]


def test_embedded_corpus_text_is_the_published_file(shared_data):
    assert read_text("ptb", "test") == (shared_data / "corpora/ptb/ptb.test.txt").read_text()


def test_vocabulary_is_in_order_of_first_appearance():
    ptb = load_corpus("ptb")
    first_line = read_text("ptb", "train").splitlines()[0].split()
    expected = list(dict.fromkeys(first_line + ["<eos>"]))
    assert list(ptb.vocabulary[: len(expected)]) == expected
    assert ptb.train[: len(first_line)].tolist() == [ptb.vocabulary.index(w) for w in first_line]


def test_batchify_makes_contiguous_columns():
    ids = np.arange(11)
    assert batchify(ids, 2).tolist() == [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]]
    with pytest.raises(TfnasError, match="batch_size must be >= 1, got 0"):
        batchify(ids, 0)


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(TfnasError, match="unknown corpus 'ptb2'; known: ptb, wikitext-2"):
        read_text("ptb2", "test")


def test_nb_nlp_ptb_benchmark_carries_ids_and_published_truth(shared_data):
    archs, truth = get_benchmark("nb-nlp-ptb").load()
    published = [json.loads(line) for line in (shared_data / "nas-bench-nlp/ptb_subset.jsonl").read_text().splitlines()]
    assert archs.num_rows == len(published) == 312
    assert archs.column("benchmark_id").to_pylist() == [str(p["recepie_id"]) for p in published]
    loss = {(r["benchmark_id"], r["target"]): r["value"] for r in truth.to_pylist()}
    assert all(loss[(str(p["recepie_id"]), "test_loss")] == p["test_loss"] for p in published)
    assert all(loss[(str(p["recepie_id"]), "num_params")] == p["num_params"] for p in published)


def test_nb_nlp_wt2_benchmark_keeps_curves_and_divergence(shared_data):
    archs, truth = get_benchmark("nb-nlp-wt2").load()
    assert archs.num_rows == 345
    test_rows = [r for r in truth.to_pylist() if r["target"] == "test_loss"]
    diverged = [r for r in test_rows if r["status"] != "ok"]
    assert len(diverged) == 4 and all(r["value"] is None for r in diverged)
    ok = [r for r in test_rows if r["status"] == "ok"]
    assert len(ok) == 341 and all(len(r["curve"]) == 50 and r["value"] == r["curve"][-1] for r in ok)
