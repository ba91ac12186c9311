"""A WordPiece tokenizer trained on WikiText-2 train, and the nb-bert metric minibatch
(`document_batch`: the authors' protocol on WikiText-2 articles).

No model hub: the vocabulary ships as package data (`files/wordpiece-wt2-vocab.txt.xz`)
and is regenerated, byte for byte, with

    python -m tfnas_ray.data.tokenizer

The tokenizer is BERT's uncased recipe (NFD + lower-case + strip accents, split on
whitespace and punctuation, WordPiece with `##` continuations). WikiText-2 writes
unknown words as `<unk>`; they are mapped to `[UNK]` before training and encoding.
"""

from __future__ import annotations

import lzma
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tfnas_ray.data.corpora import read_text
from tfnas_ray.errors import TfnasError

VOCAB_FILE = "wordpiece-wt2-vocab.txt.xz"
VOCAB_SIZE = 30522  # ELECTRA's (and BERT's) uncased WordPiece vocabulary size: the embedding the authors initialised
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, BERT order of roles
PAD, UNK, CLS, SEP, MASK = range(5)


def _wikitext_lines(split: str) -> list[str]:
    """Non-empty lines of WikiText-2 `split`, with `<unk>` as `[UNK]`."""
    return [line.replace("<unk>", "[UNK]") for line in read_text("wikitext-2", split).splitlines() if line.strip()]


def _empty_tokenizer(vocab: dict[str, int] | None) -> Tokenizer:
    model = models.WordPiece(vocab=vocab, unk_token="[UNK]") if vocab else models.WordPiece(unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    if vocab:
        # registered as special, `[UNK]` in the text is one token, not "[", "unk", "]"
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def train_vocabulary(vocab_size: int = VOCAB_SIZE) -> list[str]:
    """Train WordPiece on WikiText-2 train and return the vocabulary in id order.

    Ids: the special tokens first, then every other token in code-point order. WordPiece
    encodes by greedy longest match, so ids do not depend on the order merges were
    learnt, and sorting makes them independent of the trainer's hash-map order. The
    trainer breaks ties between equally frequent pairs in that (random) order, so a
    retrained vocabulary can differ from the shipped one in a few tokens at the size
    cut-off (2 of 16,384 in our runs); the shipped file is the reference.
    """
    tokenizer = _empty_tokenizer(None)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(_wikitext_lines("train"), trainer=trainer)
    learnt = set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS)
    return list(SPECIAL_TOKENS) + sorted(learnt)


def write_vocabulary(path: Path | None = None, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train and write the vocabulary (one token a line, xz-compressed) to the package data."""
    path = path or Path(__file__).parent / "files" / VOCAB_FILE
    text = "\n".join(train_vocabulary(vocab_size)) + "\n"
    path.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    return path


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The shipped vocabulary, id order."""
    blob = resources.files("tfnas_ray.data").joinpath("files", VOCAB_FILE)
    if not blob.is_file():
        raise TfnasError(
            f"the WordPiece vocabulary {VOCAB_FILE} is missing from the package data; "
            f"regenerate it with: python -m tfnas_ray.data.tokenizer"
        )
    return tuple(lzma.decompress(blob.read_bytes()).decode("utf-8").splitlines())


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The WikiText-2 WordPiece tokenizer (cached per process)."""
    return _empty_tokenizer({token: i for i, token in enumerate(vocabulary())})


def wikitext_articles(split: str = "train") -> list[str]:
    """The articles of WikiText-2 `split`, in order, each its non-empty lines joined by
    spaces, `<unk>` as `[UNK]`. An article starts at a top-level heading ` = Title = `
    (sub-headings have two or more `=`) standing between blank lines, with two blank
    lines before it — the layout WikiText gives article titles (a table's legend line
    such as ` = Goals ; A = ` has text right before or after it). WikiText-2 is cut from
    Wikipedia articles, so these are its documents: the offline stand-in for OpenWebText's."""
    lines = read_text("wikitext-2", split).splitlines()
    blank = [not line.strip() for line in lines]
    articles: list[list[str]] = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        title = (
            text.startswith("= ") and text.endswith(" =") and not text.startswith("= =")
            and all(i - k < 0 or blank[i - k] for k in (1, 2))
            and (i + 1 >= len(lines) or blank[i + 1])
        )
        if title:
            articles.append([])
        if articles:
            articles[-1].append(text.replace("<unk>", "[UNK]"))
    return [" ".join(article) for article in articles]


def document_batch(*, batch_size: int = 128, seq_len: int = 512, split: str = "train", index: int = 0) -> dict[str, torch.Tensor]:
    """The nb-bert metric minibatch under the authors' protocol, offline: the first
    `batch_size` WikiText-2 articles (minibatch `index`: the `batch_size` articles right
    after minibatch index−1's, for `--batches`), each encoded `[CLS] w… [SEP]`, cut to `seq_len`
    tokens (the [SEP] kept last) or padded with [PAD] to it — as ELECTRA's tokenizer with
    `truncation=True, padding="max_length"` did to OpenWebText documents.

    Returns:
        {"input_ids": (batch_size, seq_len) int64, "attention_mask": 1 on tokens, 0 on padding}.
    Raises:
        TfnasError: a size outside its range.
    """
    if batch_size < 2:
        raise TfnasError(f"batch_size must be >= 2, got {batch_size}")
    if not 3 <= seq_len <= 512:
        raise TfnasError(f"seq_len must be in [3, 512] (ELECTRA's position table), got {seq_len}")
    if index < 0:
        raise TfnasError(f"minibatch index must be >= 0, got {index}")
    articles = wikitext_articles(split)
    first = index * batch_size
    if len(articles) < first + batch_size:
        raise TfnasError(
            f"WikiText-2 {split} has only {len(articles)} articles; minibatch {index} of batch_size {batch_size} "
            f"needs {first + batch_size}"
        )
    tokenizer = load_tokenizer()
    input_ids = torch.full((batch_size, seq_len), PAD, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, seq_len), dtype=torch.long)
    for row, encoding in enumerate(tokenizer.encode_batch(articles[first : first + batch_size], add_special_tokens=False)):
        ids = [CLS] + encoding.ids[: seq_len - 2] + [SEP]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit("usage: python -m tfnas_ray.data.tokenizer [VOCAB_SIZE]")
    size = int(sys.argv[1]) if len(sys.argv) == 2 else VOCAB_SIZE
    out = write_vocabulary(vocab_size=size)
    print(f"{out}: {len(vocabulary.__wrapped__())} tokens")
