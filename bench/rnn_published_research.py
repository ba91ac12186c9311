"""Which computation produced the published RNN columns the released notebook does not?

Research harness for issue 12 (RNN half). For each of the 25 architectures whose
published values ship in ../shared/data/nas-bench-nlp/published_values_sample.json, it
replays the authors' protocol on the reference model (seed 0, PTB test batch 70 × 50,
eval mode) and records, per pass, every ingredient a candidate explanation could use:
the activation-code kernel of each pass, the Jacobians, |h ⊙ ∂h| per pass and layer,
|W ⊙ ∂W| per weight group under several gradient-accumulation rules. The ingredients
are cached as JSON under /tmp/rnn_pub (one file per architecture), then every
hypothesis is scored against the published values (max / median relative difference,
Kendall τ).

    PYTHONPATH=$PWD python bench/rnn_published_research.py [--archs N] [--refresh] [--summary]
    PYTHONPATH=$PWD python bench/rnn_published_research.py --roundoff 1006504

Not part of the test run; the product implements only what this finds
(tfnas_ray/metrics/rnn_published.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time

import numpy as np
import torch
from scipy.stats import kendalltau

from tfnas_ray.metrics import BATCHES, MetricContext, load_metrics
from tfnas_ray.metrics.common import eigen_score, hamming_kernel_update
from tfnas_ray.metrics.rnn_paper import jacobian_cosine_score, jacobian_covariance_score

SHARED = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nas-bench-nlp"
CACHE = pathlib.Path("/tmp/rnn_pub")
PASSES = ("jac", "k", "n0.1", "n10", "n100", "syn")


class Recorder:
    def __init__(self, B):
        self.kernel = torch.zeros(B, B, dtype=torch.float64)
        self.states = []

    def hidden(self, layer, step, h):
        if torch.is_grad_enabled():
            if h.requires_grad:
                h.retain_grad()
            else:
                h = h.detach().requires_grad_()
        self.states.append((layer, h))
        return h

    def activation(self, layer, step, node, output):
        hamming_kernel_update(self.kernel, output)

    def saliency(self):
        per_layer = {}
        for layer, h in self.states:
            if h.grad is not None:
                per_layer[layer] = per_layer.get(layer, 0.0) + float((h.detach().double() * h.grad.double()).abs().sum())
        return per_layer

    def abs_h(self):
        return float(sum(float(h.detach().double().abs().sum()) for _, h in self.states))


def weight_groups(model):
    """(name, tensor, first?, reads_x?) for every linear node's per-input weight."""
    groups = []
    for li, layer in enumerate(model.layers):
        for key, linear in layer.linears.items():
            node = layer.recipe.node(key.replace("·", "."))
            for j, w in enumerate(linear.weights):
                groups.append((f"{li}/{key}/{j}", w, j == 0, node.inputs[j] == "x"))
            groups.append((f"{li}/{key}/bias", linear.bias, None, None))
    return groups


def _safe(compute) -> float:
    """A candidate that fails (a constant row, no convergence) scores NaN, as the
    authors' table records a failed column."""
    try:
        with np.errstate(all="ignore"):
            return float(compute())
    except Exception:  # noqa: BLE001 — research: any failure is a NaN candidate
        return float("nan")


def ingredients(spec: str, batch) -> dict:
    """Run the protocol once; return every per-pass quantity as plain floats/lists."""
    ctx = MetricContext("nb-nlp", spec, seed=0, batch=batch)
    model = ctx.model().eval()
    tokens = batch.tokens
    B = tokens.shape[1]
    groups = weight_groups(model)
    grads = {}  # pass -> {group: grad}
    out = {"kernels": {}, "hidden": {}, "abs_h": {}}

    def grab(name):
        grads[name] = {g: (t.grad.detach().clone() if t.grad is not None else None) for g, t, _, _ in groups}
        emb = model.encoder.weight
        grads[name]["decoder"] = emb.grad.detach().clone() if emb.grad is not None else None
        model.zero_grad(set_to_none=True)

    # 1. Jacobian pass
    rec = Recorder(B)
    e = model.embed(tokens)
    e.retain_grad()
    y, _ = model.forward_embedded(e, recorder=rec)
    y.backward(torch.ones_like(y))
    J = e.grad.detach().numpy()
    out["kernels"]["jac"] = rec.kernel.numpy().tolist()
    out["hidden"]["jac"] = rec.saliency()
    out["abs_h"]["jac"] = rec.abs_h()
    out["y_sum"] = float(y.detach().double().sum())
    grab("jac")
    # 2. K pass
    rec = Recorder(B)
    with torch.no_grad():
        e2 = model.embed(tokens)
        model.forward_embedded(e2, recorder=rec)
    out["kernels"]["k"] = rec.kernel.numpy().tolist()
    out["hidden"]["k"] = {}
    e_np = e2.numpy()
    var = np.var(e_np, axis=1, keepdims=True)
    noise = np.random.RandomState(0).normal(size=e_np.shape)
    noisy = {}
    for a in (0.1, 10.0, 100.0):
        rec = Recorder(B)
        inp = torch.tensor((e_np + a * var * noise).astype(np.float32), requires_grad=True)
        y, _ = model.forward_embedded(inp, recorder=rec)
        y.backward(torch.ones_like(y))
        noisy[a] = inp.grad.numpy()
        out["kernels"][f"n{a:g}"] = rec.kernel.numpy().tolist()
        out["hidden"][f"n{a:g}"] = rec.saliency()
        out["abs_h"][f"n{a:g}"] = rec.abs_h()
        grab(f"n{a:g}")
    # 4. synflow pass
    rec = Recorder(B)
    y, _ = model(tokens, recorder=rec)
    y.backward(y.detach())
    out["kernels"]["syn"] = rec.kernel.numpy().tolist()
    out["hidden"]["syn"] = rec.saliency()
    out["abs_h"]["syn"] = rec.abs_h()
    grab("syn")

    # Jacobian scores: rows = samples (released), rows = steps (candidate)
    out["S"] = {"0": _safe(lambda: jacobian_covariance_score(J))}
    out["C"] = {"0": _safe(lambda: jacobian_cosine_score(J))}
    for a, j in noisy.items():
        out["S"][f"{a:g}"] = _safe(lambda: jacobian_covariance_score(j))
        out["C"][f"{a:g}"] = _safe(lambda: jacobian_cosine_score(j))
    T = e_np.shape[0]
    out["S_steps_e"] = eigen_score(np.corrcoef(e_np.reshape(T, -1).astype(np.float64)), what="e")
    out["S_steps_J"] = _safe(lambda: eigen_score(np.corrcoef(J.reshape(T, -1).astype(np.float64)), what="J"))

    # |W ⊙ ∂W| per group under accumulation rules (sums of per-pass gradients)
    rules = {
        "syn": ["syn"],
        "jac": ["jac"],
        "n100+syn": ["n100", "syn"],
        "jac+syn": ["jac", "syn"],
        "all": ["jac", "n0.1", "n10", "n100", "syn"],
        "noise+syn": ["n0.1", "n10", "n100", "syn"],
    }
    weights = {g: t.detach() for g, t, _, _ in groups}
    weights["decoder"] = model.encoder.weight.detach()
    info = {g: (first, x) for g, _, first, x in groups}
    sal = {}
    for rule, passes in rules.items():
        sal[rule] = {}
        for g, w in weights.items():
            gs = [grads[p][g] for p in passes if grads[p][g] is not None]
            if not gs:
                sal[rule][g] = 0.0
                continue
            total = sum(x.double() for x in gs)
            sal[rule][g] = float((w.double() * total).abs().sum())
            # float32 product as the notebook did for cell weights
            tot32 = gs[0].clone()
            for x in gs[1:]:
                tot32 += x
            sal[rule][g + "@f32"] = float((w * tot32).abs().sum())
    out["saliency"] = sal
    out["groups"] = {g: list(v) for g, v in info.items()}
    return out


def load_all(n: int, refresh: bool) -> tuple[dict, dict]:
    published = json.loads((SHARED / "published_values_sample.json").read_text())["values"]
    recipes = {}
    for line in (SHARED / "ptb_subset.jsonl").read_text().splitlines():
        d = json.loads(line)
        recipes[str(d["recepie_id"])] = d["recepie"]
    load_metrics()
    batch = BATCHES.get("nb-nlp")({})
    torch.set_num_threads(1)
    CACHE.mkdir(exist_ok=True)
    data = {}
    for rid in sorted(published)[:n]:
        path = CACHE / f"{rid}.json"
        if refresh or not path.exists():
            started = time.time()
            path.write_text(json.dumps(ingredients(json.dumps(recipes[rid]), batch)))
            print(f"{rid}: {time.time() - started:.1f}s", file=sys.stderr)
        data[rid] = json.loads(path.read_text())
    return {k: published[k] for k in data}, data


def compare(name, ours: dict, published: dict, column: str):
    ids = sorted(ours)
    a = np.array([ours[i] for i in ids], dtype=float)
    p = np.array([published[i][column] for i in ids], dtype=float)
    rel = np.abs(a - p) / np.abs(p)
    tau = kendalltau(a, p, nan_policy="omit").statistic
    failed = int(np.isnan(a).sum())
    print(f"  {name:48s} max {np.nanmax(rel):.2e}  median {np.nanmedian(rel):.2e}  τ {tau:+.3f}" + (f"  ({failed} NaN)" if failed else ""))
    return rel


def logdet(k):
    return float(np.linalg.slogdet(np.asarray(k))[1])


COLUMNS = (
    "hidden_cov", "hidden_cov_l2", "hidden_cov_l3", "activation_distance", "synaptic_saliency",
    "jacob_cov", "jacobian_cosine", "jacobian_noise", "jacobian_noise_cosine",
    "jacobian_more_noise", "jacobian_more_noise_cosine", "hidden_saliency",
)
ROUNDED_ABOVE = 1e11  # the published table writes these as 3-significant-digit E notation


def _synaptic(d, rule):
    s = d["saliency"][rule]
    cells = sum(s[g + "@f32"] for g, (first, _) in d["groups"].items() if first is False)
    return cells + s["decoder"]


def protocol_values(d: dict, hidden_cov: dict) -> dict:
    """Every column under each protocol, from one architecture's ingredients."""
    S, C = d["S"], d["C"]
    k = {p: np.asarray(v) for p, v in d["kernels"].items()}
    common = {
        **hidden_cov,
        "jacobian_cosine": C["0"],
        "jacobian_noise_cosine": 1 - abs(C["0"] - C["10"]),
        "jacobian_more_noise": S["0"] * S["0.1"] * S["10"] * S["100"],
        "jacobian_more_noise_cosine": C["0"] * C["0.1"] * C["10"] * C["100"],
    }
    released = {
        **common,
        "activation_distance": logdet(k["jac"] + k["k"]),
        "synaptic_saliency": _synaptic(d, "syn"),
        "jacob_cov": S["0"],
        "jacobian_noise": 1 - abs(S["0"] - S["10"]),
        "hidden_saliency": sum(sum(v.values()) for v in d["hidden"].values()),
    }
    published = {
        **common,
        "activation_distance": logdet(k["jac"]),
        "synaptic_saliency": _synaptic(d, "jac"),
        "jacob_cov": d["S_steps_e"],
        "jacobian_noise": abs(S["0"] - S["10"]) - 1,
        "hidden_saliency": sum(d["hidden"]["jac"].values()),
    }
    return {"released": released, "published": published}


def hidden_covs(ids, recipes) -> dict:
    """hidden_cov L1–L3 by the product (the same under both protocols), cached."""
    from tfnas_ray.metrics.scoring import score_architecture

    path = CACHE / "hidden_cov.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    batch = BATCHES.get("nb-nlp")({})
    for rid in ids:
        if rid not in cached:
            rows = score_architecture(arch_id=rid, space="nb-nlp", spec=json.dumps(recipes[rid]),
                                      metrics=list(COLUMNS[:3]), seed=0, batch=batch)
            cached[rid] = {r["metric"]: r["value"] for r in rows}
            path.write_text(json.dumps(cached))
    return cached


def view_hidden_saliency(ids, recipes) -> dict:
    """The published hidden saliency by the product (rnn_published.jacobian_pass) for the
    cells where another node reads h_new_0 — the only ones where the gradient of the
    authors' h_new_0 view differs from h_new_0's — cached."""
    from tfnas_ray.metrics.rnn_published import jacobian_pass

    path = CACHE / "hidden_view.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    batch = BATCHES.get("nb-nlp")({})
    for rid in ids:
        if rid in cached or not any("h_new_0" in node["input"] for node in recipes[rid].values()):
            continue
        model = MetricContext("nb-nlp", json.dumps(recipes[rid]), seed=0, batch=batch).model().eval()
        cached[rid] = jacobian_pass(model, batch.tokens)[2]
        path.write_text(json.dumps(cached))
    return cached


def summary(pub: dict, data: dict, recipes: dict) -> None:
    """Markdown table: per column and protocol, max / median relative difference to the
    published value and Kendall τ; values ≥ 1e11 compared after rounding ours to 3
    significant digits, as the table has them."""
    hc = hidden_covs(sorted(data), recipes)
    views = view_hidden_saliency(sorted(data), recipes)
    values = {rid: protocol_values(d, hc[rid]) for rid, d in data.items()}
    for rid, value in views.items():
        if rid in values:
            values[rid]["published"]["hidden_saliency"] = value
    print(f"\n{len(data)} architectures; relative difference |ours − published| / |published|\n")
    print("| column | released max | released median | released τ | published max | published median | published τ |")
    print("|---|---|---|---|---|---|---|")
    for column in COLUMNS:
        cells = []
        for protocol in ("released", "published"):
            ours = np.array([values[r][protocol][column] for r in sorted(data)], dtype=float)
            ref = np.array([pub[r][column] for r in sorted(data)], dtype=float)
            shown = np.array([float(f"{o:.2e}") if abs(p) >= ROUNDED_ABOVE else o for o, p in zip(ours, ref)])
            rel = np.abs(shown - ref) / np.abs(ref)
            tau = kendalltau(ours, ref, nan_policy="omit").statistic
            cells += [f"{np.nanmax(rel):.1e}", f"{np.nanmedian(rel):.1e}", f"{tau:+.3f}"]
        print(f"| {column} | " + " | ".join(cells) + " |")


def roundoff(rid: str, recipes: dict, pub: dict) -> None:
    """The published computation of one architecture in float32 and in float64 (CPU):
    how much of the difference to the published (GPU float32) value is round-off."""
    from tfnas_ray.metrics.rnn_published import jacobian_pass, synaptic_saliency_of

    batch = BATCHES.get("nb-nlp")({})
    for dtype in (torch.float32, torch.float64):
        model = MetricContext("nb-nlp", json.dumps(recipes[rid]), seed=0, batch=batch).model().eval().to(dtype)
        embedded, _, hidden = jacobian_pass(model, batch.tokens)
        synaptic = synaptic_saliency_of(model)
        clean = embedded.detach().numpy().astype(np.float32)
        variance = np.var(clean, axis=1, keepdims=True)
        noise = np.random.RandomState(0).normal(size=clean.shape)
        inputs = torch.tensor((clean + 10.0 * variance * noise).astype(np.float32)).to(dtype).requires_grad_()
        out, _ = model.forward_embedded(inputs)
        out.backward(torch.ones_like(out))
        s0 = jacobian_covariance_score(embedded.grad.detach().numpy())
        s10 = jacobian_covariance_score(inputs.grad.numpy())
        print(f"{dtype}: synaptic {synaptic:.10g} (published {pub[rid]['synaptic_saliency']}), "
              f"jacobian_noise {abs(s0 - s10) - 1:.8g} (published {pub[rid]['jacobian_noise']}; S0 {s0:.8g}, S10 {s10:.8g}), "
              f"hidden {hidden:.10g} (published {pub[rid]['hidden_saliency']})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", type=int, default=25)
    parser.add_argument("--refresh", action="store_true")
    parser.add_argument("--summary", action="store_true", help="only the per-column table of both protocols")
    parser.add_argument("--roundoff", metavar="RECEPIE_ID", help="float32 vs float64 of one architecture's published computation")
    args = parser.parse_args()
    pub, data = load_all(args.archs, args.refresh)
    if args.roundoff:
        recipes = {str(json.loads(l)["recepie_id"]): json.loads(l)["recepie"] for l in (SHARED / "ptb_subset.jsonl").read_text().splitlines()}
        roundoff(args.roundoff, recipes, json.loads((SHARED / "published_values_sample.json").read_text())["values"])
        return
    if args.summary:
        recipes = {str(json.loads(l)["recepie_id"]): json.loads(l)["recepie"] for l in (SHARED / "ptb_subset.jsonl").read_text().splitlines()}
        summary(pub, data, recipes)
        return

    print("jacob_cov")
    compare("released: S(J), rows = samples", {i: d["S"]["0"] for i, d in data.items()}, pub, "jacob_cov")
    compare("S(J), rows = steps", {i: d["S_steps_J"] for i, d in data.items()}, pub, "jacob_cov")
    compare("S(e), rows = steps (embedding output)", {i: d["S_steps_e"] for i, d in data.items()}, pub, "jacob_cov")

    print("activation_distance")
    for n in range(1, 7):
        for subset in itertools.combinations(PASSES, n):
            vals = {i: logdet(sum(np.asarray(d["kernels"][p]) for p in subset)) for i, d in data.items()}
            rel = np.abs(np.array([vals[i] - pub[i]["activation_distance"] for i in vals])) / np.abs(
                np.array([pub[i]["activation_distance"] for i in vals]))
            if n <= 2 or rel.max() < 1e-3:
                compare("K over " + "+".join(subset), vals, pub, "activation_distance")
    diffs = {i: pub[i]["activation_distance"] - logdet(np.asarray(d["kernels"]["jac"]) + np.asarray(d["kernels"]["k"])) for i, d in data.items()}
    print("  published − released:", " ".join(f"{v:.4f}" for v in diffs.values()))

    print("jacobian_noise")
    released = {i: 1 - abs(d["S"]["0"] - d["S"]["10"]) for i, d in data.items()}
    compare("released 1 − |S(J) − S(J10)|", released, pub, "jacobian_noise")
    compare("−(1 − |S(J) − S(J10)|)", {i: -v for i, v in released.items()}, pub, "jacobian_noise")
    compare("|S(J) − S(J10)| + 1 ", {i: 2 - v for i, v in released.items()}, pub, "jacobian_noise")
    compare("S(J) − S(J10) (signed)", {i: d["S"]["0"] - d["S"]["10"] for i, d in data.items()}, pub, "jacobian_noise")
    compare("|S(J) − S(J10)| − 1", {i: abs(d["S"]["0"] - d["S"]["10"]) - 1 for i, d in data.items()}, pub, "jacobian_noise")
    print("jacobian_more_noise")
    compare("released S(J)S(J.1)S(J10)S(J100)", {i: d["S"]["0"] * d["S"]["0.1"] * d["S"]["10"] * d["S"]["100"] for i, d in data.items()}, pub, "jacobian_more_noise")
    for name, column in (("jacobian_noise_cosine", None), ("jacobian_cosine", None)):
        pass
    print("synaptic_saliency")
    for rule in data[next(iter(data))]["saliency"]:
        for first in (False, True):
            for dec in ("f64", "none", "only"):
                for prec in ("", "@f32"):
                    vals = {}
                    for i, d in data.items():
                        s = d["saliency"][rule]
                        total = 0.0
                        for g, (is_first, reads_x) in d["groups"].items():
                            if is_first is None or dec == "only":
                                continue
                            if is_first and not first:
                                continue
                            total += s[g + prec]
                        if dec != "none":
                            total += s["decoder"]
                        vals[i] = total
                    compare(f"{rule} first={first} decoder={dec} {prec}", vals, pub, "synaptic_saliency")
    print("hidden_saliency")
    for n in range(1, 6):
        for subset in itertools.combinations(("jac", "n0.1", "n10", "n100", "syn"), n):
            vals = {i: sum(sum(d["hidden"][p].values()) for p in subset) for i, d in data.items()}
            compare("Σ|h∂h| over " + "+".join(subset), vals, pub, "hidden_saliency")
    ratios = {i: pub[i]["hidden_saliency"] / sum(sum(d["hidden"][p].values()) for p in ("jac", "n0.1", "n10", "n100", "syn")) for i, d in data.items()}
    print("  published / released:", " ".join(f"{v:.3f}" for v in ratios.values()))


if __name__ == "__main__":
    main()
