"""The embedded PTB and WikiText-2 corpora, read exactly as NAS-Bench-NLP reads them.

NAS-Bench-NLP (and the AWD-LSTM code it builds on) splits every line on whitespace and
appends `<eos>`; the vocabulary assigns ids in order of first appearance over train, then
valid, then test. Matching that order matters: the embedding rows are drawn in id order,
so a different vocabulary order gives a different initialisation and different metric
values than the published ones.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from tfnas_ray.errors import TfnasError

CORPORA = ("ptb", "wikitext-2")
SPLITS = ("train", "valid", "test")
EOS = "<eos>"


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus: a vocabulary and one array of token ids per split."""

    name: str
    vocabulary: tuple[str, ...]  # id -> word
    train: np.ndarray  # (n_train,) int64
    valid: np.ndarray
    test: np.ndarray

    @property
    def ntoken(self) -> int:
        return len(self.vocabulary)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise TfnasError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        return getattr(self, name)


def read_text(corpus: str, split: str) -> str:
    """The raw text of one split of an embedded corpus."""
    if corpus not in CORPORA:
        raise TfnasError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    if split not in SPLITS:
        raise TfnasError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    blob = resources.files("tfnas_ray.data").joinpath("files", f"{corpus}.{split}.txt.xz")
    return lzma.decompress(blob.read_bytes()).decode("utf-8")


@lru_cache(maxsize=None)
def load_corpus(name: str) -> Corpus:
    """Tokenise an embedded corpus (cached per process).

    Example:
        >>> ptb = load_corpus("ptb")
        >>> ptb.ntoken, len(ptb.test)
        (10000, 82430)
    """
    word_to_id: dict[str, int] = {}
    ids_per_split = {}
    for split in SPLITS:
        ids = []
        for line in read_text(name, split).splitlines():
            for word in line.split() + [EOS]:
                index = word_to_id.get(word)
                if index is None:
                    index = word_to_id[word] = len(word_to_id)
                ids.append(index)
        ids_per_split[split] = np.asarray(ids, dtype=np.int64)
    return Corpus(name=name, vocabulary=tuple(word_to_id), **ids_per_split)


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a token stream into `batch_size` columns, dropping the remainder (AWD-LSTM).

    Returns an array of shape (len(ids) // batch_size, batch_size): column j is the
    j-th contiguous slice of the stream.
    """
    if batch_size < 1:
        raise TfnasError(f"batch_size must be >= 1, got {batch_size}")
    rows = len(ids) // batch_size
    return ids[: rows * batch_size].reshape(batch_size, rows).T.copy()
