"""Capability metrics and the Python API: known answers on hand-built toys, what does
not apply says so in one line, the engine's `hf` values equal `score_model`'s, and
`score` runs the distributed engine from Python."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from tfnas_ray import score, score_model
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics.capability import hf_batch
from tfnas_ray.metrics.scoring import score_architecture
from tfnas_ray.spaces import content_id
from tfnas_ray.spaces.hf import SPACE, build_model, load_family


def gpt2(**config) -> nn.Module:
    base = dict(vocab_size=50, n_positions=16, n_layer=2, n_embd=8, n_head=2, n_inner=16, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    return build_model("gpt2", "causal-lm", {**base, **config})


def bert(**config) -> nn.Module:
    base = dict(vocab_size=50, max_position_embeddings=16, num_hidden_layers=2, hidden_size=8, num_attention_heads=2, intermediate_size=16, pad_token_id=0)
    torch.manual_seed(0)
    return build_model("bert", "masked-lm", {**base, **config})


def ids(B: int = 4, T: int = 6, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- known answers ---------------------------------------------------------------------


def test_params_equal_num_parameters():
    for model in (gpt2(), bert()):
        assert score_model(model, ids(), metrics=["params"])["params"] == model.num_parameters()
    toy = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    assert score_model(toy, ids(vocab=10), metrics=["params"])["params"] == 10 * 4 + 4 * 10 + 10


def test_flops_per_token_of_a_hand_counted_toy():
    # Embedding (a lookup: 0 FLOPs), Linear 4→8 (2·4·8 = 64), ReLU (0), Linear 8→3 (2·8·3 = 48):
    # 112 FLOPs per token, whatever B and T (matmuls counted as 2mkn; bias adds not counted).
    toy = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert score_model(toy, ids(B=3, T=5, vocab=10), metrics=["flops_per_token"])["flops_per_token"] == 112.0


def _zero_attention_scores(model: nn.Module) -> None:
    """q = k = 0 in every layer, so every attention row is uniform over what it may see."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("attn.c_attn", "attention.self.query", "attention.self.key")):
                if "c_attn" in name:  # GPT-2's fused [q | k | v]: zero q and k only
                    width = p.shape[-1] // 3
                    p[..., : 2 * width] = 0
                else:
                    p.zero_()


def test_head_and_softmax_confidence_by_hand_on_two_layer_toys():
    T = 6
    harmonic = sum(1.0 / (t + 1) for t in range(T))
    # causal, uniform: query t attends to t+1 keys with 1/(t+1) each, so max_s A = 1/(t+1);
    # per head the mean over t is H_T / T; 2 layers × 2 heads.
    model = gpt2()
    _zero_attention_scores(model)
    s = score_model(model, ids(T=T), metrics=["head_confidence", "head_confidence_normalized", "softmax_confidence"])
    assert s["head_confidence"] == pytest.approx(4 * harmonic / T, rel=1e-6)
    assert s["head_confidence_normalized"] == pytest.approx(harmonic / T, rel=1e-6)
    # softmax confidence: max over heads (all equal) then the mean over (B, T, T) of the
    # lower triangle of 1/(t+1): Σ_t (t+1)·1/(t+1) / T² = 1/T per layer, 2 layers
    assert s["softmax_confidence"] == pytest.approx(2 / T, rel=1e-6)
    # bidirectional, uniform: every max is 1/T
    model = bert()
    _zero_attention_scores(model)
    s = score_model(model, ids(T=T), metrics=["head_confidence", "softmax_confidence"])
    assert s["head_confidence"] == pytest.approx(4 / T, rel=1e-6)
    assert s["softmax_confidence"] == pytest.approx(2 / T, rel=1e-6)


def test_naswot_and_activation_distance_by_hand():
    emb = nn.Embedding(6, 3)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1, -1, 1], [-1, 1, 1], [1, 1, -1], [-1, -1, -1], [1, 1, 1], [1, -1, -1]], dtype=torch.float))
    toy = nn.Sequential(emb, nn.ReLU())
    batch = torch.tensor([[0, 1], [2, 3], [4, 5]])
    codes = (emb.weight[batch].reshape(3, -1) > 0).numpy().astype(int)  # (B, T·3)
    kernel = np.array([[np.sum(codes[i] == codes[j]) for j in range(3)] for i in range(3)], dtype=float)
    first = (emb.weight[batch[0]] > 0).numpy().astype(int)  # (T, 3)
    distance = sum(np.sum(first[i] == first[j]) for i in range(2) for j in range(2))
    s = score_model(toy, batch, metrics=["naswot", "activation_distance"])
    assert s["naswot"] == pytest.approx(np.linalg.slogdet(kernel)[1], rel=1e-12)
    assert s["activation_distance"] == distance


def test_latency_is_positive_and_stable_within_a_factor():
    # A few milliseconds a forward (a sub-millisecond toy is at the mercy of the
    # scheduler's time slice on a loaded 2-core machine: one run measured 44x another),
    # and three measurements of which two must agree: one descheduled run may not fail it.
    model, batch = gpt2(n_embd=64, n_inner=128), ids(B=16, T=16)
    runs = sorted(score_model(model, batch, metrics=["latency_ms"])["latency_ms"] for _ in range(3))
    assert runs[0] > 0
    assert runs[1] / runs[0] < 20  # a measurement: never a timed assertion


# ---- what applies --------------------------------------------------------------------


def test_every_metric_applies_to_hf_models_and_gives_a_finite_value():
    for model in (gpt2(), bert()):
        s = score_model(model, ids(B=6, T=8))
        assert not s.not_applicable, s.not_applicable
        assert not s.errors, s.errors
        assert all(math.isfinite(v) for v in s.values())
        assert s["hidden_cov"] > -1e4  # the LayerNorm's zero eigenvalue is not scored
        assert s.task == ("masked-lm" if "Bert" in type(model).__name__ else "causal-lm")


def test_a_metric_that_does_not_apply_says_why_in_one_line():
    toy = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(TfnasError, match=r"^head_confidence does not apply: it reads attentions, and Sequential is not a Hugging Face model"):
        score_model(toy, ids(vocab=10), metrics=["head_confidence"])
    s = score_model(toy, ids(vocab=10))
    assert set(s.not_applicable) >= {"head_confidence", "softmax_confidence", "head_importance", "hidden_cov", "naswot", "fisher"}
    assert "params" in s and "snip" in s and "jacob_cov" in s  # any module; an LM loss (logits over 10 ids)
    # an output that is not logits over the batch's ids has no LM loss
    hidden = nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 3))
    with pytest.raises(TfnasError, match=r"snip does not apply: it reads lm_loss, and Sequential's output \(4, 6, 3\) is not language-model logits"):
        score_model(hidden, ids(), metrics=["snip"])
    # an HF model built with SDPA returns no attention probabilities
    torch.manual_seed(0)
    from transformers import AutoConfig, AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=50, n_layer=1, n_embd=8, n_head=2, bos_token_id=2, eos_token_id=3), attn_implementation="sdpa")
    with pytest.raises(TfnasError, match=r"attn_implementation='sdpa'.*build it with attn_implementation='eager'"):
        score_model(sdpa, ids(), metrics=["head_confidence"])


def test_bad_input_to_score_model_is_one_line():
    with pytest.raises(TfnasError, match=r"batch must be a LongTensor of token ids \[B, T\], got \(4, 6\) torch.float32"):
        score_model(gpt2(), ids().float())
    with pytest.raises(TfnasError, match=r"unknown capability metric 'nope'; known: .*params"):
        score_model(gpt2(), ids(), metrics=["nope"])


def test_score_model_never_mutates_the_model():
    model = gpt2()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_model(model, ids(), metrics=["synflow", "snip", "grasp", "jacob_cov", "head_importance"])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ---- the engine ----------------------------------------------------------------------


def test_the_engine_scores_hf_archs_as_score_model_does():
    spec = load_family("tiny-bert").sample(1, seed=0)[0]
    batch = hf_batch({"batch_size": 4, "seq_len": 16})
    metrics = ["params", "naswot", "snip", "head_confidence", "head_importance", "hidden_cov"]
    rows = score_architecture(arch_id=content_id("hf", spec), space="hf", spec=spec, metrics=metrics, seed=7, batch=batch)
    assert [r["error"] for r in rows] == [None] * len(metrics)
    torch.manual_seed(7)
    direct = score_model(SPACE.build(spec), batch["input_ids"], metrics=metrics, attention_mask=batch["attention_mask"])
    for r in rows:
        assert r["value"] == pytest.approx(direct[r["metric"]], rel=1e-9), r["metric"]


def test_nb_spaces_keep_their_implementations():
    from tfnas_ray.metrics import load_metrics

    registry = load_metrics()
    for name in ("params", "naswot", "snip", "head_confidence", "jacob_cov"):
        metric = registry.get(name)
        assert metric.impl("hf") is metric.generic  # hf: the generic (capability) implementation
        for space in ("nb-bert", "nb-nlp"):
            if space in metric.impls:
                assert metric.impl(space) is metric.impls[space] and metric.impls[space].fn is not metric.generic.fn
    assert not registry.get("hidden_cov_l2").applies_to("hf")


def test_score_from_python_returns_the_scores_table(ray_cluster, tmp_path):
    from tfnas_ray.pipeline import sample_archs

    archs = sample_archs("hf", 2, seed=0, space_file="tiny-gpt2")
    table = score(archs, ["params", "softmax_confidence"], out=tmp_path / "scores", batch_options={"batch_size": 4, "seq_len": 16}, workers=1)
    assert isinstance(table, pa.Table)
    assert table.num_rows == 4 and table.column("error").null_count == 4
    specs = dict(zip(archs.column("arch_id").to_pylist(), archs.column("spec").to_pylist()))
    for r in table.to_pylist():
        if r["metric"] == "params":
            assert r["value"] == SPACE.count_parameters(specs[r["arch_id"]])


def test_the_readme_python_example_runs(ray_cluster, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own models", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["table"].num_rows == 4
    assert namespace["everything"].not_applicable["head_confidence"].startswith("head_confidence does not apply")


def test_peak_memory_of_a_hand_counted_toy():
    # No-grad forward: Linear 64→1024 writes (B·T, 1024) float32 = 1 MiB for B·T = 256;
    # ReLU writes another 1 MiB while the first is alive; then the first is freed before
    # the (256, 100) logits: the peak is exactly 2 MiB (CPU: the profiler's tensor bytes).
    toy = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 100))
    batch = ids(B=8, T=32, vocab=100)
    s = score_model(toy, batch, metrics=["peak_memory_forward_mb", "peak_memory_mb"])
    assert s["peak_memory_forward_mb"] == 2.0
    # a training step holds at least the forward's activations plus every gradient
    gradients = sum(p.numel() for p in toy.parameters()) * 4 / 2**20
    assert s["peak_memory_mb"] >= 2.0 + gradients
    assert score_model(toy, batch, metrics=["peak_memory_mb"])["peak_memory_mb"] == s["peak_memory_mb"]  # tensor bytes, deterministic
