"""The metric minibatch of the nb-nlp space: one PTB test batch, as the paper used."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import torch

from tfnas_ray.data.corpora import batchify, load_corpus
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import PROTOCOLS, RELEASED, register_batch

SPACE = "nb-nlp"


@dataclass(frozen=True)
class NlpBatch:
    """Token ids for the RNN metrics.

    Attributes:
        tokens: (T, B) int64 — the first T rows of the split batchified into B columns.
        targets: (T, B) int64 — the next token of each, for the loss-based proxies.
        model_options: what the model must be built with (the corpus vocabulary size).
        protocol: how the paper's columns are computed ("released" | "published", see
            metrics/rnn_published.py); it travels with the batch so that it is part of
            the batch options, hence of every shard's identity.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    model_options: Mapping[str, Any] = field(default_factory=dict)
    protocol: str = RELEASED


@lru_cache(maxsize=8)
def _nlp_batch(corpus: str, split: str, bptt: int, batch_size: int, protocol: str, index: int = 0) -> NlpBatch:
    data = load_corpus(corpus)
    columns = batchify(data.split(split), batch_size)  # (rows, B)
    start = index * bptt  # minibatch `index`: the index-th block of bptt consecutive rows
    if columns.shape[0] < start + bptt + 1:
        raise TfnasError(
            f"split {split!r} of {corpus!r} has {columns.shape[0]} rows, fewer than the "
            f"{start + bptt + 1} that minibatch {index} (rows {start}..{start + bptt}) needs"
        )
    tokens = torch.from_numpy(columns[start : start + bptt].copy())
    targets = torch.from_numpy(columns[start + 1 : start + bptt + 1].copy())
    return NlpBatch(tokens=tokens, targets=targets, model_options={"ntoken": data.ntoken}, protocol=protocol)


@register_batch(SPACE)
def nlp_batch(options: Mapping[str, Any]) -> NlpBatch:
    """The paper's minibatch: the first 70 rows of PTB test batchified into 50 columns.

    Options (all optional): corpus ("ptb" | "wikitext-2"), split, bptt (70), batch_size (50),
    protocol ("released" | "published"),
    index (0): minibatch `index` is rows [index·bptt, (index+1)·bptt) of the batchified
    split, the next block after minibatch index−1 (`--batches`); 0 is the paper's.
    """
    known = {"corpus", "split", "bptt", "batch_size", "protocol", "index"}
    unknown = set(options) - known
    if unknown:
        raise TfnasError(f"unknown nb-nlp batch option(s) {sorted(unknown)}; known: {sorted(known)}")
    protocol = options.get("protocol", RELEASED)
    if protocol not in PROTOCOLS:
        raise TfnasError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return _nlp_batch(
        options.get("corpus", "ptb"),
        options.get("split", "test"),
        int(options.get("bptt", 70)),
        int(options.get("batch_size", 50)),
        protocol,
        int(options.get("index", 0)),
    )
