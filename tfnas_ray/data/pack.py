"""Regenerate the package data under `tfnas_ray/data/files/` from the published files.

Developers only: the product reads the compressed files this writes, never the sources.

    python -m tfnas_ray.data.pack ../shared/data

The sources are described in that directory's README (PTB, WikiText-2, NAS-Bench-NLP
logs and PTB subset, NAS-Bench-BERT). Output is xz-compressed and byte-for-byte
deterministic, so regenerating it leaves git clean.
"""

from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

FILES = Path(__file__).parent / "files"

CORPORA = {
    "ptb": {"train": "ptb/ptb.train.txt", "valid": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt"},
    "wikitext-2": {
        "train": "wikitext-2/train.txt",
        "valid": "wikitext-2/valid.txt",
        "test": "wikitext-2/test.txt",
    },
}


def _write_xz(path: Path, data: bytes) -> None:
    path.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    print(f"{path.name}: {len(data):,} -> {path.stat().st_size:,} bytes")


def pack(source: Path) -> None:
    FILES.mkdir(parents=True, exist_ok=True)
    for corpus, splits in CORPORA.items():
        for split, rel in splits.items():
            _write_xz(FILES / f"{corpus}.{split}.txt.xz", (source / "corpora" / rel).read_bytes())

    nlp = source / "nas-bench-nlp"
    _write_xz(FILES / "nb-nlp-ptb.jsonl.xz", (nlp / "ptb_subset.jsonl").read_bytes())
    logs = []
    for log_path in sorted((nlp / "wt2_logs").glob("*.json")):
        log = json.loads(log_path.read_text())
        log["log_file"] = log_path.name
        logs.append(json.dumps(log, sort_keys=True))
    _write_xz(FILES / "nb-nlp-wt2.jsonl.xz", ("\n".join(logs) + "\n").encode())
    _write_xz(FILES / "nb-nlp-examples.json.xz", (nlp / "recepies_example.json").read_bytes())

    bert = source / "nas-bench-bert"
    _write_xz(FILES / "nb-bert.json.xz", (bert / "BERT_benchmark.json").read_bytes())
    _write_xz(FILES / "nb-bert-search-space.json.xz", (bert / "search_space.json").read_bytes())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tfnas_ray.data.pack SHARED_DATA_DIR")
    pack(Path(sys.argv[1]))
