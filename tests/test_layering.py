"""The package's layers, as DESIGN.md and STYLE.md draw them, checked on the source.

Every module under tfnas_ray/ is parsed with `ast`, and every import it makes — at the
top, inside functions, under `if TYPE_CHECKING:`, and `importlib.import_module("…")` /
`__import__("…")` with a literal name — is set against the boundaries:

- spaces/ and metrics/ never import ray or typer, nor the layers above them
  (distributed/, analysis/, pipeline, search_pipeline, api, cli): "Metrics know nothing
  of Ray", "`spaces/` and `metrics/` never import `ray` or `typer`" (DESIGN.md, STYLE.md 1);
- spaces/ never imports metrics/: "Spaces know nothing of metrics" (DESIGN.md);
- analysis/ (correlations, reports, search) never imports ray, typer, distributed/ or
  the job modules that call it (pipeline, search_pipeline, api, cli): it reads tables;
- ray is imported only in distributed/: "Ray lives in `distributed/`" (STYLE.md 1);
- typer only in cli.py, and nothing imports cli.py: "The CLI is the only place that
  knows about all of them" and "CLI stays thin" (DESIGN.md, STYLE.md);

and every `tfnas_ray…` name imported anywhere (package, tests, bench/, the Python blocks
of README.md and docs/) exists, so a module moved without its lazy imports fails here
rather than when a user first reaches that branch.

A second check imports spaces/, metrics/ and analysis/ in a fresh interpreter and finds
neither Ray nor typer loaded: what the per-file rules cannot see, an import that pulls
them in two modules down.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tfnas_ray"

_ABOVE_SPACES_AND_METRICS = (
    "ray", "typer", "tfnas_ray.distributed", "tfnas_ray.analysis", "tfnas_ray.pipeline",
    "tfnas_ray.search_pipeline", "tfnas_ray.api", "tfnas_ray.cli",
)


@dataclass(frozen=True)
class Rule:
    """Modules under `where` (a path relative to tfnas_ray/, a folder ending in "/" or one
    file) must not import `forbidden` (module names; their submodules too), except those
    under `unless`."""

    where: tuple[str, ...]  # "" is the whole package
    forbidden: tuple[str, ...]
    why: str
    unless: tuple[str, ...] = ()

    def covers(self, rel: str) -> bool:
        return any(_under(rel, w) for w in self.where) and not any(_under(rel, u) for u in self.unless)


def _under(rel: str, where: str) -> bool:
    """`rel` (a path relative to tfnas_ray/) is the file `where`, or lies in the folder
    `where` ("…/"); "" is the whole package."""
    return rel.startswith(where) if where == "" or where.endswith("/") else rel == where

RULES = (
    Rule(("spaces/", "metrics/"), _ABOVE_SPACES_AND_METRICS, "spaces/ and metrics/ know nothing of Ray, the CLI or the layers above them"),
    Rule(("spaces/",), ("tfnas_ray.metrics",), "spaces know nothing of metrics"),
    Rule(
        ("analysis/",),
        ("ray", "typer", "tfnas_ray.distributed", "tfnas_ray.pipeline", "tfnas_ray.search_pipeline", "tfnas_ray.api", "tfnas_ray.cli"),
        "analysis/ reads tables; it never calls up into the jobs, the CLI or Ray",
    ),
    Rule(("",), ("ray",), "Ray lives in distributed/", unless=("distributed/",)),
    Rule(("",), ("typer",), "typer lives in cli.py", unless=("cli.py",)),
    Rule(("",), ("tfnas_ray.cli",), "nothing imports the CLI: it is the top", unless=("cli.py",)),
)


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    text: str  # the statement as written
    targets: tuple[str, ...]  # the module names it reaches (and module.name for `from m import name`)
    module: str | None  # `from m import …`: m; otherwise None
    names: tuple[str, ...]  # `from m import a, b`: (a, b); `import a.b`: ("a.b",)


def _package_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts = parts[:-1]
    return ".".join(parts)


def imports_in(source: str, *, file: str, package: str = "") -> list[Import]:
    """Every import of `source`, wherever it stands in the file."""
    tree = ast.parse(source, filename=file)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = tuple(a.name for a in node.names)
            found.append(Import(file, node.lineno, ast.unparse(node), names, None, names))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            names = tuple(a.name for a in node.names)
            targets = (module, *(f"{module}.{n}" for n in names if n != "*"))
            found.append(Import(file, node.lineno, ast.unparse(node), targets, module, names))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            name = node.args[0].value
            found.append(Import(file, node.lineno, ast.unparse(node), (name,), None, (name,)))
    return found


def package_imports() -> list[tuple[str, Import]]:
    """(path relative to tfnas_ray/, import) of every module of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for imp in imports_in(path.read_text(), file=path.relative_to(REPO).as_posix(), package=_package_of(path)):
            out.append((rel, imp))
    return out


def _reaches(target: str, forbidden: str) -> bool:
    return target == forbidden or target.startswith(forbidden + ".")


def violations(imports: list[tuple[str, Import]], rules=RULES) -> list[str]:
    """One line per import that crosses a boundary: file:line, the import, the rule."""
    lines = []
    for rel, imp in imports:
        for rule in rules:
            if not rule.covers(rel):
                continue
            hit = sorted({f for f in rule.forbidden for t in imp.targets if _reaches(t, f)})
            if hit:
                lines.append(f"{imp.file}:{imp.line}: `{imp.text}` imports {', '.join(hit)} ({rule.why})")
    return lines


def test_the_package_keeps_its_layers():
    imports = package_imports()
    assert len({imp.file for _, imp in imports}) > 50  # the walk found the package
    found = violations(imports)
    assert not found, "imports across the package's layers (DESIGN.md):\n" + "\n".join(found)


def test_a_crossing_is_named_with_file_line_and_import():
    """The checker itself, on sources written to break each rule: an import inside a
    function, a `from tfnas_ray import x` spelling, a relative import and an
    `importlib.import_module` each fail, naming where."""
    cases = {
        "tfnas_ray/analysis/report.py": ("tfnas_ray.analysis", "def f():\n    from tfnas_ray.pipeline import run_baselines\n"),
        "tfnas_ray/metrics/x.py": ("tfnas_ray.metrics", "import os\nfrom tfnas_ray import distributed\n"),
        "tfnas_ray/spaces/hf.py": ("tfnas_ray.spaces", "from ..metrics import load_metrics\n"),
        "tfnas_ray/spaces/nasbench_bert/y.py": ("tfnas_ray.spaces.nasbench_bert", "import importlib\nm = importlib.import_module('ray.util')\n"),
        "tfnas_ray/tables.py": ("tfnas_ray", "if True:\n    import typer.main\n"),
    }
    imports = []
    for file, (package, source) in cases.items():
        rel = file.removeprefix("tfnas_ray/")
        imports += [(rel, imp) for imp in imports_in(source, file=file, package=package)]
    found = violations(imports)
    assert found[0] == (
        "tfnas_ray/analysis/report.py:2: `from tfnas_ray.pipeline import run_baselines` imports tfnas_ray.pipeline "
        "(analysis/ reads tables; it never calls up into the jobs, the CLI or Ray)"
    )
    assert found[1].startswith("tfnas_ray/metrics/x.py:2: `from tfnas_ray import distributed` imports tfnas_ray.distributed")
    assert found[2].startswith("tfnas_ray/spaces/hf.py:1: `from ..metrics import load_metrics` imports tfnas_ray.metrics (spaces know nothing of metrics)")
    assert any(f.startswith("tfnas_ray/spaces/nasbench_bert/y.py:2: `importlib.import_module('ray.util')` imports ray (spaces/") for f in found)
    assert any(f.startswith("tfnas_ray/tables.py:2: `import typer.main` imports typer (typer lives in cli.py)") for f in found)
    # allowed: the same imports where the layers permit them
    fine = [("cli.py", imp) for imp in imports_in("import typer\nfrom tfnas_ray.pipeline import score_table\n", file="tfnas_ray/cli.py", package="tfnas_ray")]
    fine += [("distributed/scorer.py", imp) for imp in imports_in("import ray\n", file="tfnas_ray/distributed/scorer.py", package="tfnas_ray.distributed")]
    assert violations(fine) == []


# ---- every tfnas_ray name imported exists ------------------------------------------------


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(path: Path) -> tuple[set[str], bool]:
    """Names a module defines at its top level (under `if`/`try` too), and whether it
    has a module `__getattr__` (then any name may exist)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    return names, "__getattr__" in names


def _python_blocks(document: Path) -> list[tuple[int, str]]:
    """(first line, code) of each ```python block, doctest prompts stripped."""
    text = document.read_text()
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        code = "\n".join(re.sub(r"^(>>> |\.\.\. )", "", line) for line in match.group(1).splitlines())
        blocks.append((text[: match.start()].count("\n") + 2, code))
    return blocks


def _all_imports() -> list[Import]:
    found = [imp for _, imp in package_imports()]
    for folder in ("tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found += imports_in(path.read_text(), file=path.relative_to(REPO).as_posix(), package=_package_of(path))
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for first, code in _python_blocks(document):
            for imp in imports_in(code, file=document.relative_to(REPO).as_posix()):
                found.append(Import(imp.file, imp.line + first - 1, imp.text, imp.targets, imp.module, imp.names))
    return found


def test_every_imported_tfnas_ray_name_exists():
    missing = []
    for imp in _all_imports():
        if imp.module is None:  # `import a.b` / import_module("a.b"): the module must exist
            missing += [f"{imp.file}:{imp.line}: `{imp.text}`: no module {n}" for n in imp.names if n.split(".")[0] == "tfnas_ray" and _module_file(n) is None]
            continue
        if imp.module.split(".")[0] != "tfnas_ray":
            continue
        path = _module_file(imp.module)
        if path is None:
            missing.append(f"{imp.file}:{imp.line}: `{imp.text}`: no module {imp.module}")
            continue
        defined, dynamic = _top_level_names(path)
        for name in imp.names:
            if name != "*" and not dynamic and name not in defined and _module_file(f"{imp.module}.{name}") is None:
                missing.append(f"{imp.file}:{imp.line}: `{imp.text}`: {imp.module} has no {name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)


def test_the_name_check_sees_a_stale_import():
    stale = imports_in("def f():\n    from tfnas_ray.nb_bert_protocol import NbBertOptions\n", file="x.py")
    assert _module_file(stale[0].module) is None
    present = imports_in("from tfnas_ray.spaces.nasbench_bert.protocol import NbBertOptions, check_applies\n", file="x.py")
    defined, _ = _top_level_names(_module_file(present[0].module))
    assert {"NbBertOptions", "check_applies", "NB_BERT", "READINGS"} <= defined


def test_no_package_defines_a_name_its_submodule_replaces():
    """A package's `def x` / `x = …` beside a submodule `x.py` is replaced by the module
    the first time `package.x` is imported (Python sets the attribute), so
    `from package import x` gives a function or a module depending on what ran before."""
    clashes = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        submodules = {p.stem for p in init.parent.glob("*.py") if p.name != "__init__.py"}
        submodules |= {p.name for p in init.parent.iterdir() if (p / "__init__.py").is_file()}
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined = {node.name}
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            else:
                continue
            for name in sorted(defined & submodules):
                clashes.append(f"{init.relative_to(REPO).as_posix()}:{node.lineno}: {name} is also the submodule {name}")
    assert not clashes, "names replaced by a submodule on import:\n" + "\n".join(clashes)


# ---- what an import really loads --------------------------------------------------------


def test_spaces_metrics_and_analysis_load_without_ray_or_typer():
    """Every module of spaces/, metrics/ and analysis/ imported (and every metric
    registered) in a fresh interpreter: neither Ray, typer nor a module above them is
    loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import tfnas_ray.spaces, tfnas_ray.metrics, tfnas_ray.analysis\n"
        "for pkg in (tfnas_ray.spaces, tfnas_ray.metrics, tfnas_ray.analysis):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "tfnas_ray.metrics.load_metrics()\n"
        "above = ('ray', 'typer', 'tfnas_ray.distributed', 'tfnas_ray.pipeline', 'tfnas_ray.search_pipeline', 'tfnas_ray.api', 'tfnas_ray.cli')\n"
        "print('\\n'.join(sorted(m for m in sys.modules if any(m == a or m.startswith(a + '.') for a in above))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"loaded by spaces/, metrics/ or analysis/: {done.stdout.split()}"
