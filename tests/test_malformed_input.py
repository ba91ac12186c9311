"""Malformed recipes and tables, thrown at every command that reads them (issue 13).

Each must be refused before any work: exit code 2 (input rejected up front, see the
README's "Exit codes"), one line `error: …` on stderr, and no file written. The checks
run before Ray starts, so these tests run in-process with no cluster. Adding a command
is one line in COMMANDS.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tfnas_ray import cli, tables

# command -> the argv that feeds it the malformed file `bad`, with a well-formed `good`
# table of the other kind where it needs two, and its outputs under `out`.
COMMANDS: dict[str, Callable[[str, str, str], list[str]]] = {
    "score": lambda bad, good, out: ["score", bad, "-m", "params", "--out", f"{out}/scores", "--no-progress"],
    "correlate": lambda bad, good, out: ["correlate", bad, good, "--out", f"{out}/correlations.parquet", "--resamples", "0"],
    "correlate-truth": lambda bad, good, out: ["correlate", good, bad, "--out", f"{out}/correlations.parquet", "--resamples", "0"],
    "train": lambda bad, good, out: ["train", bad, "--out", f"{out}/train", "--steps", "1"],
    "search": lambda bad, good, out: ["search", "nb-nlp", "--archs", bad, "-m", "params", "--out", f"{out}/search", "--no-progress"],
}
# What the malformed file stands for in each command (the other argument is well formed).
READS = {"score": "archs", "correlate": "scores", "correlate-truth": "truth", "train": "archs", "search": "archs"}
GOOD = {  # the well-formed table of the other kind: (kind, table)
    "correlate": ("truth", tables.from_rows("truth", [{"arch_id": "a", "target": "t", "value": 1.0}])),
    "correlate-truth": ("scores", tables.from_rows("scores", [{"arch_id": "a", "metric": "params", "value": 1.0}])),
}

# ---- malformed things -----------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_node_names = st.sampled_from(["x", "h_prev_0", "h_new_0", "node_1", "node_2", "h_prev_1", ""])
_ops = st.sampled_from(["linear", "blend", "elementwise_prod", "elementwise_sum", "activation_tanh", "activation_sigm", "activation_leaky_relu", "conv", "", "linear;"])
# Recipes that look like recipes: nodes with ops and inputs, but never a valid cell (no
# node uses the previous hidden state h_prev_0, which a valid cell must).
_recipe_like = st.dictionaries(
    _node_names.filter(lambda n: n != "h_prev_0"),
    st.fixed_dictionaries({"op": _ops, "input": st.lists(_node_names.filter(lambda n: n != "h_prev_0"), max_size=3)}),
    max_size=5,
).map(json.dumps)
malformed_specs = st.one_of(
    st.text(max_size=40).filter(lambda t: not t.strip().startswith("{")),  # not a JSON object
    _json.map(json.dumps).filter(lambda t: not t.startswith("{")),
    st.dictionaries(st.sampled_from(["nodes", "h_new_0", "a"]), _json, max_size=3).map(json.dumps),
    _recipe_like,
    st.integers(40, 3000).map(lambda d: "[" * d + "]" * d),  # deep
    st.integers(40, 3000).map(lambda d: '{"a":' * d + "0" + "}" * d),
    st.just('{"h_new_0": {"op": "linear", "input": ["' + "x" * 300_000 + '"]}}'),  # huge
)
_ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=12)


@st.composite
def malformed_archs(draw) -> pa.Table | bytes:
    """An archs table that no command may accept: bad specs, an unknown space, ids that
    cannot name a trial, a missing or uncastable column, or no rows."""
    n = draw(st.integers(1, 4))
    flaw = draw(st.sampled_from(["spec", "space", "arch_id", "missing", "type", "empty"]))
    ids = draw(st.lists(_ids, min_size=n, max_size=n, unique=True))
    rows = {"arch_id": ids, "space": ["nb-nlp"] * n, "spec": draw(st.lists(malformed_specs, min_size=n, max_size=n))}
    if flaw == "space":
        rows["space"] = draw(st.lists(st.text(max_size=10).filter(lambda s: s not in ("nb-nlp", "nb-bert")), min_size=n, max_size=n))
    elif flaw == "arch_id":  # the first id is unusable, every spec is also bad (score checks specs)
        ids[0] = draw(st.sampled_from(["a/b", "../x", ".h", "", "a b", "x" * 200]))
    elif flaw == "missing":
        del rows[draw(st.sampled_from(["arch_id", "space", "spec"]))]
    elif flaw == "type":
        rows[draw(st.sampled_from(["arch_id", "space", "spec"]))] = [[1, 2]] * n  # list<int64>: no cast to string
    elif flaw == "empty":
        return tables.from_rows("archs", [])
    return pa.table(rows)


@st.composite
def malformed_table(draw, kind: str) -> pa.Table | bytes:
    """A file that is not a `kind` table: not Parquet at all, or Parquet lacking a
    required column or holding one of an uncastable type."""
    flaw = draw(st.sampled_from(["bytes", "missing", "type"]))
    if flaw == "bytes":
        return draw(st.binary(max_size=64).filter(lambda b: not b.startswith(b"PAR1")))
    schema = tables.SCHEMAS[kind]
    required = [f.name for f in schema if not f.nullable]
    n = draw(st.integers(1, 3))
    columns = {f.name: pa.nulls(n, f.type) if f.nullable else pa.array(["a"] * n if f.type == pa.string() else [1] * n, f.type) for f in schema}
    victim = draw(st.sampled_from(required))
    if flaw == "missing":
        del columns[victim]
    else:
        columns[victim] = pa.array([[1, 2]] * n)
    return pa.table(columns)


def _write(thing: pa.Table | bytes, path: Path) -> None:
    if isinstance(thing, bytes):
        path.write_bytes(thing)
    else:
        pq.write_table(thing, path)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(command: str, thing: pa.Table | bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        bad, good = root / "bad.parquet", root / "good.parquet"
        _write(thing, bad)
        if command in GOOD:
            tables.write_table(*GOOD[command], good)
        before = _files(root)
        result = CliRunner().invoke(cli.app, COMMANDS[command](str(bad), str(good), str(root / "out")))
        assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert _files(root) == before, _files(root) - before  # nothing written, not even a directory


FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    # Were a check to let input through, the command must not reach somebody's cluster.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize("command", [c for c, kind in READS.items() if kind == "archs"])
@FUZZ
@given(archs=malformed_archs())
def test_malformed_archs_tables_are_refused_up_front(command, archs):
    _refused(command, archs)


@pytest.mark.parametrize("command", [c for c, kind in READS.items() if kind != "archs"])
@FUZZ
@given(data=st.data())
def test_malformed_scores_and_truth_tables_are_refused_up_front(command, data):
    _refused(command, data.draw(malformed_table(READS[command])))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_that_is_not_there_is_refused_up_front(command, tmp_path):
    argv = COMMANDS[command](str(tmp_path / "missing.parquet"), str(tmp_path / "missing.parquet"), str(tmp_path / "out"))
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr, result.output
    assert os.listdir(tmp_path) == []
