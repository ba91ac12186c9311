"""nb-bert's gradient passes in micro-batches, and dropout drawn on the CPU.

* `CpuDropout` gives exactly `F.dropout`'s values on the CPU (ATen's CPU dropout:
  empty_like(x).bernoulli_(1 − p) ÷ (1 − p) from torch's global generator), and draws from
  the CPU generator whatever the input's device (here: the meta device, which has no
  generator of its own; on a GPU the CUDA generator would give other masks);
* in micro-batches the masks are the rows of the whole batch's masks;
* every nb-bert column computed in micro-batches equals the whole batch's to ≤ 1e-6
  relative (the same sums in another order; the known answer is the whole-batch run).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tfnas_ray.errors import TfnasError
from tfnas_ray.metrics import METRICS, MetricContext, load_metrics
from tfnas_ray.metrics import transformer as tm
from tfnas_ray.spaces.nasbench_bert import SPACE

SHAPES = [(6, 5, 7), (4, 2, 9, 9)]


def _seeded(fn, seed=11):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        value = fn()
        return value, torch.get_rng_state()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_is_torch_cpu_dropout_byte_for_byte(shape, p):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected, state = _seeded(lambda: F.dropout(x, p=p, training=True))

    def ours():
        with tm.CpuDropout():
            return (
                F.dropout(x, p=p, training=True),
                torch.nn.Dropout(p)(x),  # the module form, as the models call it
                F.dropout(x, p=p, training=False),
            )

    (functional, module, off), our_state = _seeded(ours)
    assert torch.equal(functional, expected)
    assert not torch.equal(module, expected)  # the second call draws the next mask
    assert off is x
    expected_module, _ = _seeded(lambda: (F.dropout(x, p=p), F.dropout(x, p=p))[1])
    assert torch.equal(module, expected_module)
    # a non-contiguous input: empty_like keeps its layout, as torch's does
    xt = x.transpose(0, 1)
    expected_t, _ = _seeded(lambda: F.dropout(xt, p=p))
    with tm.CpuDropout():
        got_t, _ = _seeded(lambda: F.dropout(xt, p=p))
    assert torch.equal(got_t, expected_t)


def test_masks_come_from_the_cpu_generator_whatever_the_device():
    # The meta device has no generator: a mask drawn "on the device" would leave torch's
    # CPU generator where it was. CpuDropout draws the CPU mask a CPU run draws (the same
    # generator steps) and only moves it to the device.
    x_cpu = torch.ones(6, 5, 7)
    x_meta = torch.ones(6, 5, 7, device="meta")

    def dropped(x):
        with tm.CpuDropout():
            return F.dropout(x, p=0.1, training=True)

    on_cpu, cpu_state = _seeded(lambda: dropped(x_cpu))
    on_meta, meta_state = _seeded(lambda: dropped(x_meta))
    _, untouched = _seeded(lambda: None)
    assert on_meta.device.type == "meta" and on_meta.shape == on_cpu.shape
    assert torch.equal(meta_state, cpu_state) and not torch.equal(cpu_state, untouched)
    # the rows a meta-device micro-batch uses are the CPU run's mask, byte for byte
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        mode = tm.CpuDropout(batch_size=6)
        with mode:
            mode.rows(slice(0, 4))
            F.dropout(x_meta[:4], p=0.1, training=True)
    with mode:
        mode.rows(slice(0, 6))
        mode._site = 0
        rows = mode._site_rows(x_meta, 0.1)
    assert torch.equal(rows.div_(0.9), on_cpu)


@pytest.mark.parametrize("micro", [6, 4, 1])
def test_micro_batches_take_their_rows_of_the_whole_batchs_masks(micro):
    B = 6
    x = torch.randn(B, 5, 7, generator=torch.Generator().manual_seed(2))

    def forward(rows):  # two dropout sites of different shapes and rates, as a model has
        h = F.dropout(x[rows], p=0.1, training=True)
        scores = torch.softmax(h @ h.transpose(1, 2), dim=-1)  # (b, 5, 5)
        return h, F.dropout(scores, p=0.3, training=True)

    (whole_h, whole_s), whole_state = _seeded(lambda: forward(slice(0, B)))

    def micro_batched():
        mode = tm.CpuDropout(batch_size=B)
        parts = []
        with mode:
            for rounds in range(2):  # a second round (as GraSP runs) sees the same masks
                for start in range(0, B, micro):
                    mode.rows(slice(start, start + micro))
                    parts.append((rounds, forward(slice(start, start + micro))))
        return parts

    parts, state = _seeded(micro_batched)
    for rounds in range(2):
        h = torch.cat([p[0] for r, p in parts if r == rounds])
        s = torch.cat([p[1] for r, p in parts if r == rounds])
        assert torch.equal(h, whole_h)
        torch.testing.assert_close(s, whole_s, rtol=1e-6, atol=0)  # the same masks; matmul round-off only
    assert torch.equal(state, whole_state)  # the generator took the whole batch's steps


from test_nb_bert_metrics import SPEC  # noqa: E402  (every operation kind, 4 layers)

COLUMNS = [
    "head_importance", "head_confidence", "softmax_confidence", "synaptic_saliency", "synaptic_diversity",
    "activation_distance", "jacob_cov", "naswot", "head_importance_mlm", "synaptic_saliency_mlm",
    "synaptic_diversity_mlm", "jacob_cov_mlm", "grad_norm", "snip", "fisher", "grasp",
]  # synflow runs one sequence: no micro-batches


def _values(mode, micro_batch):
    load_metrics()
    options = {"seq_len": 32, "batch_size": 8, "mode": mode}
    if micro_batch is not None:
        options["micro_batch"] = micro_batch
    ctx = MetricContext("nb-bert", SPACE.canonicalize(SPEC), seed=5, batch=tm.nb_bert_batch(options))
    return {name: METRICS.get(name).impl("nb-bert").fn(ctx) for name in COLUMNS}


def test_micro_batched_columns_equal_the_whole_batchs():
    values = {(mode, micro): _values(mode, micro) for mode in ("train", "eval") for micro in (None, 3)}  # 3, 3, 2 rows
    for mode in ("train", "eval"):
        whole, micro = values[mode, None], values[mode, 3]
        for name in COLUMNS:
            assert micro[name] == pytest.approx(whole[name], rel=1e-6), (mode, name)
    # the masks matter: without dropout (eval) the values are others
    assert values["eval", None]["grad_norm"] != pytest.approx(values["train", None]["grad_norm"], rel=1e-3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_micro_batch_must_be_a_positive_row_count(bad):
    with pytest.raises(TfnasError, match=rf"--micro-batch must be a positive number of rows, got {bad!r}".replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        tm.nb_bert_batch({"seq_len": 32, "micro_batch": bad})


def test_score_micro_batch_on_the_command_line(ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from tfnas_ray import tables
    from tfnas_ray.cli import app

    runner = CliRunner()
    bert = tmp_path / "bert.parquet"
    assert runner.invoke(app, ["sample", "nb-bert", "-n", "1", "--out", str(bert)]).exit_code == 0
    refused = runner.invoke(app, ["score", str(bert), "-m", "naswot", "--micro-batch", "0", "--out", str(tmp_path / "x")])
    # bad input, refused before any work (checking_input: exit code 2, one line)
    assert refused.exit_code == 2 and "--micro-batch must be a positive number of rows, got 0" in refused.output
    values = {}
    for name, extra in (("whole", []), ("micro", ["--micro-batch", "50"])):  # 50, 50, 28 rows
        out = tmp_path / name
        command = ["score", str(bert), "-m", "naswot,head_confidence", "--seq-len", "8", "--out", str(out), "--no-progress", *extra]
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        values[name] = {r["metric"]: r["value"] for r in tables.read_table("scores", out).to_pylist()}
    assert values["micro"]["naswot"] == values["whole"]["naswot"]  # integer kernel: exact
    assert values["micro"]["head_confidence"] == pytest.approx(values["whole"]["head_confidence"], rel=1e-6)
