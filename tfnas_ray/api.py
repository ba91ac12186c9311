"""The Python API: score one model in this process, or a table of architectures on Ray.

    >>> import torch
    >>> from tfnas_ray import score_model
    >>> from tfnas_ray.spaces.hf import SPACE, load_family
    >>> spec = load_family("tiny-gpt2").sample(1, seed=0)[0]
    >>> model = SPACE.build(spec)
    >>> batch = torch.randint(5, 30522, (8, 32))
    >>> scores = score_model(model, batch, metrics=["params", "head_confidence"])
    >>> scores["params"] == model.num_parameters()
    True
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable, Sequence

import pyarrow as pa
import torch

from tfnas_ray.errors import TfnasError


class ModelScores(dict):
    """{metric: value} of `score_model`, with what could not be scored.

    Attributes:
        not_applicable: {metric: one line saying what it reads that the model lacks}.
        errors: {metric: why it failed}; its value is NaN (never a sentinel).
        task: the LM loss the gradient metrics used ("causal-lm" or "masked-lm").
    """

    def __init__(self, values: dict[str, float], *, not_applicable: dict[str, str], errors: dict[str, str], task: str):
        super().__init__(values)
        self.not_applicable = not_applicable
        self.errors = errors
        self.task = task


def available_metrics() -> list[str]:
    """The metrics `score_model` knows, in registry order."""
    from tfnas_ray.metrics import load_metrics
    from tfnas_ray.metrics.capability import CAPABILITY_METRICS

    load_metrics()
    return CAPABILITY_METRICS.names()


def score_model(
    model: torch.nn.Module,
    batch: torch.Tensor,
    metrics: Sequence[str] | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    task: str | None = None,
    device: str | torch.device | None = None,
) -> ModelScores:
    """Score any `torch.nn.Module` on a batch of token ids, with every metric that applies.

    The model is copied for every pass, never mutated, and run in eval mode. What each
    metric reads (any module; activations; input embeddings; hidden states; attention
    probabilities; an LM loss) is matched against what the model offers
    (`tfnas_ray.metrics.capability`): Hugging Face models built with
    `attn_implementation="eager"` get the attention metrics, models whose output is
    logits over a vocabulary get the loss-based ones.

    Arguments:
        model: the model; it takes `batch` (HF models: `input_ids=batch`).
        batch: (B, T) LongTensor of token ids, B ≥ 2 (naswot compares sequences).
        metrics: the metrics to score; None: every known one that applies.
        attention_mask: (B, T), 1 on tokens, 0 on padding (HF models get it).
        task: "causal-lm" or "masked-lm" for the loss; default masked for HF
            `…ForMaskedLM` models, else causal.
        device: where to run (default: the model's parameters' device).

    Returns:
        {metric: value}, a `ModelScores`: `.not_applicable` and `.errors` hold the rest.

    Raises:
        TfnasError: an unknown metric name, a named metric that does not apply to the
            model (one line saying what it reads), or a malformed batch.

    Example:
        >>> scores = score_model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10)),
        ...                      torch.randint(0, 10, (4, 6)), metrics=["params"])
        >>> scores["params"]
        90.0
    """
    from tfnas_ray.metrics import MetricFailure
    from tfnas_ray.metrics.capability import CAPABILITY_METRICS, Probe

    names = available_metrics()
    asked = list(dict.fromkeys(metrics)) if metrics is not None else names
    for name in asked:
        CAPABILITY_METRICS.get(name)  # an unknown name lists the known ones
    probe = Probe(model, batch, attention_mask, task=task, device=device)
    values: dict[str, float] = {}
    not_applicable: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in asked:
        metric = CAPABILITY_METRICS.get(name)
        reason = probe.missing(metric)
        if reason is not None:
            if metrics is not None:
                raise TfnasError(reason)
            not_applicable[name] = reason
            continue
        try:
            value = float(metric.fn(probe))
            if not math.isfinite(value):
                raise MetricFailure(f"{name} is {value}")
            values[name] = value
        except MetricFailure as failure:
            values[name] = math.nan
            errors[name] = str(failure)
    return ModelScores(values, not_applicable=not_applicable, errors=errors, task=probe.task)


def score(
    archs: str | os.PathLike | pa.Table,
    metrics: Sequence[str],
    *,
    out: str | os.PathLike,
    seed: int = 0,
    seeding: str = "derived",
    workers: int | None = None,
    device: str = "auto",
    shard_size: int | None = None,
    batch_options: dict[str, Any] | None = None,
    address: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> pa.Table:
    """Score an archs table through the distributed engine, as `tfnas score` does, and
    return the scores table (one row per architecture and metric).

    Shards are written to `out` as they finish; calling again with the same arguments
    resumes (finished shards are kept). Ray is started locally unless `address` names a
    cluster (an already-initialised Ray is used as it is).

    Arguments:
        archs: an archs table (`tfnas_ray.tables` schema) or the path/URL of one.
        metrics: metric names (`tfnas metrics`).
        out: the directory of score shards (a path or a URL).
        seed, seeding, workers, device, shard_size: as the CLI's options.
        batch_options: the space's metric-batch options (e.g. {"seq_len": 32} on hf).

    Returns:
        The scores table (pyarrow).

    Raises:
        InputError: bad input, found before Ray starts.
        TfnasError: a problem met while scoring.
    """
    from tfnas_ray import tables
    from tfnas_ray.distributed.scoring import ScoreConfig
    from tfnas_ray.errors import checking_input
    from tfnas_ray.pipeline import score_table

    if isinstance(metrics, str):
        raise TfnasError(f"metrics must be a list of names, got the string {metrics!r}")
    with checking_input():
        config = ScoreConfig(
            metrics=tuple(metrics), seed=seed, seeding=seeding, shard_size=shard_size, workers=workers,
            device=device, batch_options=dict(batch_options or {}),
        )
    if isinstance(archs, pa.Table):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "archs.parquet")
            tables.write_table("archs", tables.conform("archs", archs, what="archs"), path)
            return score_table(path, out, config, address=address, progress=progress, log=log).table
    return score_table(archs, out, config, address=address, progress=progress, log=log).table
