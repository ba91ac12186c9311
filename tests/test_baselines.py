"""Trivial baselines (metrics/baselines.py): hand-counted values on shipped architectures,
FLOPs against torch's own FLOP counter, the registry flag, and `tfnas metrics`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tfnas_ray.benchmarks import get_benchmark
from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import METRICS, Direction, MetricContext, load_metrics, register_metric
from tfnas_ray.metrics.baselines import baseline_names, baseline_scores, bert_flops_per_token, cell_depth, rnn_flops_per_token
from tfnas_ray.spaces.nasbench_bert.config import NasBertConfig
from tfnas_ray.spaces.nasbench_nlp.model import LMConfig
from tfnas_ray.spaces.nasbench_nlp.recipe import parse_recipe

NLP_LAYERS = LMConfig(ntoken=1).layer_sizes()  # (400, 600), (600, 600), (600, 400)


def _score(space: str, spec: str, names, *, batch=None) -> dict[str, float]:
    registry = load_metrics()
    ctx = MetricContext(space, spec, seed=0, batch=batch if batch is not None else {})
    return {name: registry.get(name).impl(space).fn(ctx) for name in names}


def test_rnn_lstm_gru_cells_hand_counted(shared_data):
    # recepies_example.json: RNN, LSTM, GRU first (data README). Counted by hand:
    # RNN  f = linear(x, h); h_new_0 = tanh(f): 2 nodes, 1 linear, path linear→tanh = 2.
    # LSTM i, j, f, o linears (4) + 4 activations + 2 prods + sum + tanh + prod = 13 nodes;
    #      longest path linear→act→prod→sum→tanh→prod (h_new_0) = 6.
    # GRU  r, z, h̃ linears (3) + 3 activations + prod (r⊙h) + blend = 8 nodes; longest
    #      path r→σ→r⊙h→linear h̃→tanh→blend = 6.
    # FLOPs: every linear reads x and one H-wide input, so per linear and layer H·(I + H)
    # MACs: 600·1000 + 600·1200 + 400·1000 = 1,720,000 MACs = 3,440,000 FLOPs per linear.
    recipes = json.loads((shared_data / "nas-bench-nlp" / "recepies_example.json").read_text())
    expected = {"RNN": (2, 1, 2, 3_440_000), "LSTM": (13, 4, 6, 13_760_000), "GRU": (8, 3, 6, 10_320_000)}
    for recipe, (name, (nodes, linears, depth, flops)) in zip(recipes, expected.items()):
        spec = json.dumps(recipe)
        values = _score("nb-nlp", spec, ["cell_nodes", "linear_nodes", "cell_depth", "flops_per_token"])
        assert values == {"cell_nodes": nodes, "linear_nodes": linears, "cell_depth": depth, "flops_per_token": flops}, name


def test_a_shipped_ptb_cell_hand_counted():
    # nb-nlp-ptb's first architecture (benchmark id 1000050) is one chain:
    # linear(h, x)→σ→linear(h, ·)→σ→linear(·, x)→leaky→linear(x, ·)→tanh→linear(·, x)→leaky = h_new_0
    # 10 nodes, 5 linears, depth 10. Linear inputs: x four times, an H-wide input six
    # times, so per layer H·(4·I + 6·H) MACs: 600·5200 + 600·6000 + 400·4800 = 8,640,000.
    archs, _ = get_benchmark("nb-nlp-ptb").load()
    assert archs.column("benchmark_id")[0].as_py() == "1000050"
    spec = archs.column("spec")[0].as_py()
    values = _score("nb-nlp", spec, ["cell_nodes", "linear_nodes", "cell_depth", "flops_per_token"])
    assert values == {"cell_nodes": 10, "linear_nodes": 5, "cell_depth": 10, "flops_per_token": 17_280_000}


def test_dead_nodes_own_parameters_but_cost_no_flops_and_are_not_counted():
    recipe = parse_recipe(
        {
            "a": {"op": "linear", "input": ["x", "h_prev_0"]},
            "dead": {"op": "linear", "input": ["x", "h_prev_0"]},  # no output reads it
            "h_new_0": {"op": "activation_tanh", "input": ["a"]},
        }
    )
    assert len(recipe.live) == 2 and cell_depth(recipe) == 2
    assert rnn_flops_per_token(recipe, NLP_LAYERS) == 3_440_000  # one linear, as the RNN


def test_a_shipped_bert_config_hand_counted():
    # nb-bert benchmark id 0: hidden 256; layers SA-WMA 4 heads F 1024×3, LT-DCT 2 heads
    # F 512×3, SA-SDP 4 heads F 512×3, SA-SDP 4 heads F 1024×1. Heads 4+2+4+4 = 14; FFN
    # width 3072 + 1536 + 1536 + 1024 = 7168. MACs per token at T = 128, H = 256:
    #   projection 128·256 = 32,768
    #   WMA 4H² + 2TH = 327,680; output H² = 65,536; FFN 256·1024 + 2·1024² + 1024·256 = 2,621,440
    #   DCT H² + TH + H·hs(128) = 131,072; output 65,536; FFN 256·512 + 2·512² + 512·256 = 786,432
    #   SDP 3H² + 2TH = 262,144; output 65,536; FFN 786,432
    #   SDP 262,144; output 65,536; FFN 2·256·1024 = 524,288
    # total 5,996,544 MACs = 11,993,088 FLOPs.
    archs, _ = get_benchmark("nb-bert").load()
    assert archs.column("benchmark_id")[0].as_py() == "0"
    spec = archs.column("spec")[0].as_py()
    import torch

    batch = {"input_ids": torch.zeros(1, 128, dtype=torch.long)}
    values = _score("nb-bert", spec, ["num_layers", "hidden_size", "num_heads", "ffn_width", "flops_per_token"], batch=batch)
    assert values == {"num_layers": 4, "hidden_size": 256, "num_heads": 14, "ffn_width": 7168, "flops_per_token": 11_993_088}


def test_an_lt_layer_hand_counted():
    # H 128, LT-DFT 2 heads (hs 64), F 512×1, T 4. MACs: dense 128² = 16,384; along T
    # 4·128 = 512; along hs 128·64 = 8,192; output 16,384; FFN 2·128·512 = 131,072.
    # Σ 172,544 MACs = 345,088 FLOPs (no projection: H = E = 128).
    config = NasBertConfig.from_spec(
        {"hidden_size": 128, "encoder_layers": [{"operation_type": "LT", "operation_parameter": "DFT", "num_operation_heads": 2, "feed_forward_dimension": 512, "num_feed_forward": 1}]}
    )
    assert bert_flops_per_token(config, 4) == 345_088
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        bert_flops_per_token(config, 0)


@pytest.mark.parametrize(
    "operation, parameter, heads, hidden",
    [("SA", "SDP", 4, 256), ("SA", "WMA", 2, 128), ("LT", "DCT", 4, 256), ("DSC", 5, 4, 256), ("DSC", 9, 2, 128)],
)
def test_bert_flops_equal_torchs_flop_counter(operation, parameter, heads, hidden):
    # torch.utils.flop_counter counts 2 per multiply-accumulate of mm/bmm/addmm/conv —
    # the products our convention counts — over a forward of the built (described) model.
    # (LT-DFT runs torch.fft, which it does not count: hand-counted above instead.)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tfnas_ray.spaces.nasbench_bert.model import ModelOptions, NasBertModel

    seq_len = 16
    config = NasBertConfig.from_spec(
        {"hidden_size": hidden, "encoder_layers": [{"operation_type": operation, "operation_parameter": parameter, "num_operation_heads": heads, "feed_forward_dimension": 512, "num_feed_forward": 3}]}
    )
    model = NasBertModel(config, ModelOptions(vocab_size=50)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 50, (1, seq_len)))
    assert bert_flops_per_token(config, seq_len) * seq_len == counter.get_total_flops()


def test_registry_marks_the_baselines_and_only_them():
    registry = load_metrics()
    assert set(baseline_names("nb-bert")) == {"num_layers", "hidden_size", "num_heads", "ffn_width", "flops_per_token", "params"}
    assert set(baseline_names("nb-nlp")) == {"cell_nodes", "linear_nodes", "cell_depth", "flops_per_token", "params"}
    assert set(baseline_names("hf")) == {"num_layers", "hidden_size", "num_heads", "ffn_width", "flops_per_token", "params", "decoder_params"}
    for name, metric in registry.items():
        if metric.baseline:
            assert metric.direction is Direction.HIGHER, name  # a priori: bigger predicts better
            # hf's FLOPs are counted on one forward of the model (metrics/capability.py)
            assert all(impl.cost.startswith("none") for space, impl in metric.impls.items() if (name, space) != ("flops_per_token", "hf")), name
    assert not registry.get("hidden_cov").baseline and not registry.get("head_confidence").baseline


def test_a_name_cannot_be_a_baseline_on_one_space_only():
    with pytest.raises(TfnasError, match="registered with baseline=False for space 'nb-nlp' but baseline=True elsewhere"):
        register_metric("num_layers", space="nb-nlp", direction=Direction.HIGHER, summary="x")(lambda ctx: 0.0)
    assert "nb-nlp" not in METRICS.get("num_layers").impls


def test_baseline_scores_of_a_table_use_the_scoring_length():
    archs, _ = get_benchmark("nb-bert").load()
    first = archs.slice(0, 2)
    table = baseline_scores(first, batch_options={"seq_len": 128, "batch_size": 2}, skip=["params"])
    rows = {(r["arch_id"], r["metric"]): r for r in table.to_pylist()}
    assert len(rows) == 2 * 5 and all(r["error"] is None and r["device"] == "none" for r in rows.values())
    arch_id = first.column("arch_id")[0].as_py()
    assert rows[arch_id, "flops_per_token"]["value"] == 11_993_088  # as hand-counted at T = 128
    with pytest.raises(TfnasError, match="batch option"):
        baseline_scores(first, batch_options={"sequence": 3})


def test_tfnas_metrics_marks_the_baselines():
    from tfnas_ray.cli import app

    result = CliRunner().invoke(app, ["metrics"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # name, then `*` (formula differs per space) and `B` (a baseline), then the space
    marked = {line.split()[0] for line in lines if line.split()[1:2] in (["B"], ["*B"])}
    assert {"num_layers", "cell_depth", "flops_per_token", "params"} <= marked
    assert "hidden_cov" not in marked and "head_confidence" not in marked
    assert next(l for l in lines if l.startswith("cell_depth ")).split()[1:3] == ["B", "nb-nlp"]
    assert any(line.startswith("B a trivial baseline") for line in lines)


# ---- hf families -------------------------------------------------------------------------


def test_hf_baselines_read_the_config_and_count_the_decoder_by_hand():
    """GPT-2, width d = 64, 4 heads, feed-forward 512, 2 layers. Decoder parameters
    counted by hand from GPT2Block: ln_1 2d + c_attn (d·3d + 3d) + c_proj (d² + d) + ln_2 2d
    + c_fc (d·512 + 512) + c_proj (512·d + d) = 128 + 12480 + 4160 + 128 + 33280 + 32832
    = 83008 per layer; 2 layers + ln_f (2d = 128) = 166144. Embeddings (wte, wpe) and the
    tied LM head are left out, as Lightweight Transformer Search counts."""
    import json

    from tfnas_ray.metrics import load_metrics
    from tfnas_ray.metrics.baselines import baseline_scores
    from tfnas_ray import tables

    load_metrics()
    spec = json.dumps({
        "config": {"n_embd": 64, "n_head": 4, "n_inner": 512, "n_layer": 2, "n_positions": 64, "vocab_size": 100},
        "model_type": "gpt2", "task": "causal-lm",
    })
    archs = tables.from_rows("archs", [{"arch_id": "toy", "space": "hf", "spec": spec, "source": "test", "benchmark_id": None}])
    values = {r["metric"]: r["value"] for r in baseline_scores(archs).to_pylist()}
    assert values["decoder_params"] == 166144
    assert values["num_layers"] == 2 and values["hidden_size"] == 64
    assert values["num_heads"] == 8 and values["ffn_width"] == 1024
    # params counts the model, embeddings included: 166144 + wte 100·64 + wpe 64·64
    assert values["params"] == 166144 + 100 * 64 + 64 * 64


def test_gpt2_without_n_inner_has_four_times_the_width():
    from transformers import GPT2Config

    from tfnas_ray.metrics.baselines import hf_ffn_width

    assert hf_ffn_width(GPT2Config(n_embd=48, n_inner=None)) == 192
