"""Hugging Face model families as search spaces (space `hf`).

A *family* is a TOML file (read with `tomllib`) naming a `transformers` model type, the
task, fixed config settings, the choices per hyper-parameter and constraints:

    name = "tiny-gpt2"
    model_type = "gpt2"          # any key of transformers' CONFIG_MAPPING
    task = "causal-lm"           # or "masked-lm"
    constraints = ["n_embd % n_head == 0"]

    [fixed]                      # config arguments every model gets
    vocab_size = 30522
    n_positions = 128

    [choices]                    # config argument -> the values it may take
    n_layer = [1, 2, 3, 4]
    n_embd = [32, 64, 128]
    n_head = [2, 4]

A constraint is a Python expression over the config arguments with integer arithmetic
(+ - * // %), comparisons, `and`, `or`, `not` — nothing else is evaluated.

An architecture's spec is self-contained canonical JSON,
`{"config": {...fixed and chosen, sorted}, "model_type": ..., "task": ...}`, so scoring,
building and counting parameters need only the archs table, never the TOML file; the
arch_id hashes it (`content_id("hf", spec)`): the same model gets the same id whichever
file (or family name) drew it. Config keys are canonicalised through the config class's
`attribute_map` (GPT-2's `hidden_size` is `n_embd`), so aliases do not split ids.

Models are built from config only: `AutoModelForCausalLM.from_config(config,
attn_implementation="eager")` (or `AutoModelForMaskedLM`), eager so attention
probabilities can be read; no hub, no weights.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from tfnas_ray.errors import TfnasError
from tfnas_ray.spaces import SPACES, content_id

NAME = "hf"
TASKS = ("causal-lm", "masked-lm")
FILE_KEYS = ("name", "model_type", "task", "description", "fixed", "choices", "constraints")
# Spaces up to this many combinations are enumerated (exact count, uniform shuffle);
# larger ones are sampled by rejection with a per-draw cap.
ENUMERATE_LIMIT = 1_000_000
MAX_REJECTIONS_PER_DRAW = 1_000
_EXAMPLES = "examples"  # package folder of the shipped families


# ---- constraints: a safe subset of Python expressions -----------------------------------

_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp,
    ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Div, ast.Compare, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load, ast.Constant,
)


@dataclass(frozen=True)
class Constraint:
    """One constraint expression, parsed and checked once."""

    text: str
    _code: Any = field(repr=False, compare=False)
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: Any, *, known: set[str], where: str) -> "Constraint":
        if not isinstance(text, str):
            raise TfnasError(f"{where}: a constraint must be a string expression, got {text!r}")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as err:
            raise TfnasError(f"{where}: constraint {text!r} is not an expression ({err.msg})") from None
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise TfnasError(
                    f"{where}: constraint {text!r} uses {type(node).__name__}; allowed: names, numbers, "
                    "+ - * / // %, comparisons, and/or/not"
                )
            if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
                raise TfnasError(f"{where}: constraint {text!r} has the constant {node.value!r}; only numbers are allowed")
        names = frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
        unknown = sorted(names - known)
        if unknown:
            raise TfnasError(f"{where}: constraint {text!r} names {', '.join(unknown)}, not a fixed or chosen setting ({', '.join(sorted(known))})")
        return cls(text=text, _code=compile(tree, where, "eval"), names=names)

    def holds(self, values: Mapping[str, Any]) -> bool:
        try:
            return bool(eval(self._code, {"__builtins__": {}}, dict(values)))  # noqa: S307 — AST checked above
        except ZeroDivisionError:
            return False


# ---- the transformers side ------------------------------------------------------------


def _config_class(model_type: Any, *, where: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        close = sorted(k for k in CONFIG_MAPPING.keys() if isinstance(model_type, str) and model_type[:3] in k)[:8]
        hint = f"; close: {', '.join(close)}" if close else ""
        raise TfnasError(f"{where}: model_type {model_type!r} is not a transformers model type{hint}")
    return CONFIG_MAPPING[model_type]


def _task_mapping(task: str):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if task == "causal-lm" else MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _check_task(model_type: str, task: Any, *, where: str) -> None:
    if task not in TASKS:
        raise TfnasError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    if model_type not in _task_mapping(task):
        other = [t for t in TASKS if t != task and model_type in _task_mapping(t)]
        hint = f"; it has {other[0]}" if other else ""
        raise TfnasError(f"{where}: transformers has no {task} model for model_type {model_type!r}{hint}")


def _known_keys(config_class) -> tuple[set[str], Mapping[str, str]]:
    """(the config's own argument names, alias -> name)."""
    return set(config_class().to_dict()), dict(getattr(config_class, "attribute_map", {}) or {})


def _canonical_keys(config: Mapping[str, Any], config_class, *, where: str) -> dict[str, Any]:
    """Aliases mapped to the config's own names; an unknown key is an error (a config
    class stores any keyword silently, so a typo would otherwise build the default)."""
    known, aliases = _known_keys(config_class)
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = aliases.get(key, key)
        if name not in known:
            raise TfnasError(f"{where}: {key!r} is not a setting of {config_class.__name__} (e.g. {', '.join(sorted(k for k in known if not k.startswith('_'))[:6])}, …)")
        if name in out:
            raise TfnasError(f"{where}: {key!r} and {name!r} are the same setting of {config_class.__name__}; give it once")
        out[name] = value
    return out


def make_config(model_type: str, config: Mapping[str, Any], *, where: str):
    """The transformers config of `config` (strictly validated by transformers).

    Raises:
        TfnasError: transformers rejects a value (the message names it).
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **dict(config))
    except Exception as err:  # noqa: BLE001 — transformers raises many types for bad values
        message = " ".join(str(err).split())
        raise TfnasError(f"{where}: transformers rejects {model_type} config {json.dumps(dict(config), sort_keys=True)}: {message}") from None


def _model_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForMaskedLM


def build_model(model_type: str, task: str, config: Mapping[str, Any], *, where: str = "hf spec", device: Any = None):
    """A freshly initialised model (draws from torch's global generator), eval mode.

    Raises:
        TfnasError: transformers rejects the config or the model (e.g. a width not a
            multiple of the heads), in one line.
    """
    import torch

    cfg = make_config(model_type, config, where=where)
    try:
        if device is not None:
            with torch.device(device):
                model = _model_class(task).from_config(cfg, attn_implementation="eager")
        else:
            model = _model_class(task).from_config(cfg, attn_implementation="eager")
    except Exception as err:  # noqa: BLE001 — model constructors raise ValueError, AssertionError, …
        message = " ".join(str(err).split()) or type(err).__name__
        raise TfnasError(f"{where}: transformers cannot build {model_type} {task} from {json.dumps(dict(config), sort_keys=True)}: {message}") from None
    return model.eval()


# ---- specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HfSpec:
    """One architecture: a model type, a task, and its full config arguments."""

    model_type: str
    task: str
    config: Mapping[str, Any]

    def canonical(self) -> str:
        return json.dumps(
            {"config": dict(sorted(self.config.items())), "model_type": self.model_type, "task": self.task},
            sort_keys=True, separators=(",", ":"),
        )

    @classmethod
    def parse(cls, spec: Any) -> "HfSpec":
        """Parse and check a spec (dict or JSON); config keys canonicalised.

        Raises:
            TfnasError: malformed JSON, a missing or unknown key, an unknown model type,
                task or config setting, or a value transformers rejects.
        """
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise TfnasError(f"hf spec is not JSON: {err.msg} at position {err.pos}") from None
        if not isinstance(spec, Mapping):
            raise TfnasError(f"hf spec must be a JSON object, got {type(spec).__name__}")
        keys = {"model_type", "task", "config"}
        if set(spec) != keys:
            raise TfnasError(f"hf spec keys {sorted(spec)}; expected exactly {sorted(keys)}")
        where = "hf spec"
        config_class = _config_class(spec["model_type"], where=where)
        _check_task(spec["model_type"], spec["task"], where=where)
        if not isinstance(spec["config"], Mapping):
            raise TfnasError(f"hf spec: config must be an object, got {spec['config']!r}")
        config = _canonical_keys(spec["config"], config_class, where=where)
        make_config(spec["model_type"], config, where=where)
        return cls(model_type=spec["model_type"], task=spec["task"], config=config)


# ---- families --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A model family read from a space file: what `sample` draws from.

    Implements `tfnas_ray.spaces.Space`, under the space name `hf` (`name`): the archs
    it draws are `hf` architectures whatever family drew them.

    Attributes:
        family: the family's name (the file's `name`, default its stem).
        model_type, task: as in the file.
        fixed: config arguments every model gets (canonical keys).
        choices: config argument -> its allowed values, in file order.
        constraints: expressions every drawn config satisfies.
        path: where it was read from.
    """

    family: str
    model_type: str
    task: str
    fixed: Mapping[str, Any]
    choices: Mapping[str, tuple]
    constraints: tuple[Constraint, ...]
    path: str
    description: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)  # the config class's alias -> name, for constraints
    name = NAME  # the space column of what it draws (a class attribute, not a field)

    # -- the Space protocol (drawing) --

    def combinations(self) -> int:
        return math.prod(len(v) for v in self.choices.values())

    def _admits(self, chosen: Mapping[str, Any]) -> bool:
        values = {**self.fixed, **chosen}
        values.update({alias: values[name] for alias, name in self.aliases.items() if name in values})
        return all(c.holds(values) for c in self.constraints)

    def valid(self) -> list[dict[str, Any]]:
        """Every combination of choices that satisfies the constraints, in file order.

        Raises:
            TfnasError: the space is too large to enumerate (ENUMERATE_LIMIT).
        """
        if self.combinations() > ENUMERATE_LIMIT:
            raise TfnasError(f"space {self.family}: {self.combinations():,} combinations are too many to enumerate (limit {ENUMERATE_LIMIT:,})")
        keys = list(self.choices)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.choices.values()) if self._admits(dict(zip(keys, combo)))]

    def size(self) -> int | None:
        """How many distinct configurations the space holds (None: too large to count)."""
        return len(self.valid()) if self.combinations() <= ENUMERATE_LIMIT else None

    def spec(self, chosen: Mapping[str, Any]) -> HfSpec:
        return HfSpec(model_type=self.model_type, task=self.task, config={**self.fixed, **chosen})

    def sample(self, n: int, *, seed: int) -> list[str]:
        """`n` distinct canonical specs, uniform over the configurations that satisfy the
        constraints, reproducibly and prefix-stably (`sample(m)[:k] == sample(k)`), with
        its own `random.Random(seed)`. Each drawn config is built on the meta device
        (no memory), so a config transformers rejects fails here, naming it.

        Raises:
            TfnasError: n < 0, n more than the space holds (names how many exist), or a
                drawn config transformers cannot build.
        """
        if n < 0:
            raise TfnasError(f"n must be >= 0, got {n}")
        rng = random.Random(seed)
        if self.combinations() <= ENUMERATE_LIMIT:
            pool = self.valid()
            if n > len(pool):
                raise TfnasError(
                    f"space {self.family} holds {len(pool)} distinct configurations satisfying its constraints "
                    f"(of {self.combinations()} combinations); asked for {n}"
                )
            rng.shuffle(pool)
            drawn = pool[:n]
        else:
            drawn, seen, rejections = [], set(), 0
            while len(drawn) < n:
                chosen = {k: rng.choice(v) for k, v in self.choices.items()}
                key = json.dumps(chosen, sort_keys=True)
                if key in seen or not self._admits(chosen):
                    rejections += 1
                    if rejections > MAX_REJECTIONS_PER_DRAW * max(n, 1):
                        raise TfnasError(f"space {self.family}: only {len(drawn)} distinct valid configurations found in {rejections} rejected draws; asked for {n}")
                    continue
                seen.add(key)
                drawn.append(chosen)
        specs = []
        for chosen in drawn:
            spec = self.spec(chosen)
            try:
                build_model(spec.model_type, spec.task, spec.config, where=f"space {self.family}", device="meta")
            except TfnasError as err:
                raise TfnasError(f"{err}; add a constraint that excludes it") from None
            specs.append(spec.canonical())
        return specs

    def arch_id(self, spec: str) -> str:
        return content_id(NAME, spec)

    def canonicalize(self, spec: Any) -> str:
        return SPACE.canonicalize(spec)

    def build(self, spec: Any, **options: Any):
        return SPACE.build(spec, **options)

    def count_parameters(self, spec: Any, **options: Any) -> int:
        return SPACE.count_parameters(spec, **options)

    def describe(self) -> str:
        size = self.size()
        return (
            f"{self.family}: {self.model_type} {self.task}, choices "
            + ", ".join(f"{k} {list(v)}" for k, v in self.choices.items())
            + (f"; {size} configurations" if size is not None else "")
        )


def shipped_families() -> dict[str, Path]:
    """The families shipped inside the package: name (file stem) -> path."""
    folder = resources.files(__package__) / _EXAMPLES
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def resolve(space_file: str | Path) -> Path:
    """A space file by path, or a shipped family by name (`tiny-gpt2`).

    Raises:
        TfnasError: neither an existing file nor a shipped name.
    """
    path = Path(space_file)
    if path.is_file():
        return path
    shipped = shipped_families()
    if str(space_file) in shipped:
        return shipped[str(space_file)]
    raise TfnasError(f"--space {str(space_file)!r} is neither a file nor a shipped family ({', '.join(sorted(shipped))})")


def load_family(space_file: str | Path) -> Family:
    """Read and check a space file (see the module doc) before any work starts.

    Raises:
        TfnasError: one line naming the file and the problem: TOML syntax, an unknown
            key, model type, task or config setting, an empty or non-list choice, a value
            transformers' config class rejects, a bad constraint, or constraints that
            leave no configuration.
    """
    path = resolve(space_file)
    where = str(space_file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise TfnasError(f"space file {where}: not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TfnasError(f"space file {where}: cannot read it: {err}") from None
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise TfnasError(f"space file {where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(FILE_KEYS)}")
    for key in ("model_type", "task", "choices"):
        if key not in data:
            raise TfnasError(f"space file {where}: missing {key!r}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TfnasError(f"space file {where}: name must be a non-empty string, got {name!r}")
    config_class = _config_class(data["model_type"], where=f"space file {where}")
    _check_task(data["model_type"], data["task"], where=f"space file {where}")
    fixed_raw, choices_raw = data.get("fixed", {}), data["choices"]
    for key, table in (("fixed", fixed_raw), ("choices", choices_raw)):
        if not isinstance(table, dict):
            raise TfnasError(f"space file {where}: [{key}] must be a table, got {table!r}")
    if not choices_raw:
        raise TfnasError(f"space file {where}: [choices] is empty; give at least one setting with its values")
    fixed = _canonical_keys(fixed_raw, config_class, where=f"space file {where}: [fixed]")
    choices_named = _canonical_keys(choices_raw, config_class, where=f"space file {where}: [choices]")
    both = sorted(set(fixed) & set(choices_named))
    if both:
        raise TfnasError(f"space file {where}: {', '.join(both)} is both fixed and chosen; give it in one table")
    choices: dict[str, tuple] = {}
    for key, values in choices_named.items():
        if not isinstance(values, list) or not values:
            raise TfnasError(f"space file {where}: choices.{key} must be a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise TfnasError(f"space file {where}: choices.{key} lists a value twice: {values!r}")
        for value in values:  # each value alone, on the fixed settings: the config class's own checks
            make_config(data["model_type"], {**fixed, key: value}, where=f"space file {where}: choices.{key} = {value!r}")
        choices[key] = tuple(values)
    raw_constraints = data.get("constraints", [])
    if not isinstance(raw_constraints, list):
        raise TfnasError(f"space file {where}: constraints must be a list of expressions, got {raw_constraints!r}")
    aliases = {a: n for a, n in _known_keys(config_class)[1].items() if n in set(fixed) | set(choices)}
    known = set(fixed) | set(choices) | set(aliases)
    constraints = tuple(Constraint.parse(c, known=known, where=f"space file {where}") for c in raw_constraints)
    family = Family(
        family=name, model_type=data["model_type"], task=data["task"], fixed=fixed, choices=choices,
        constraints=constraints, path=str(path), description=str(data.get("description", "")), aliases=aliases,
    )
    if family.combinations() <= ENUMERATE_LIMIT and family.size() == 0:
        raise TfnasError(f"space file {where}: the constraints ({'; '.join(c.text for c in constraints)}) leave none of the {family.combinations()} combinations")
    return family


def drawing_space(space_name: str, space_file: str | Path | None):
    """The space to draw from: `space_name`'s, or for `hf` the family of `space_file`.

    Raises:
        TfnasError: --space given for another space, or an unknown space name.
    """
    from tfnas_ray.spaces import get_space

    if space_file is None:
        return get_space(space_name)
    if space_name != NAME:
        raise TfnasError(f"--space {str(space_file)!r} applies to space hf only, not to {space_name!r}")
    return load_family(space_file)


class HfSpace:
    """The `hf` space (implements `tfnas_ray.spaces.Space` for specs); drawing needs a
    family (`load_family`), since the space file says what to draw from."""

    name = NAME
    # What every family built from config offers (eager attention, so probabilities;
    # hidden states; an LM head). A family that lacks one at run time is told so per
    # model by the metrics' probe, never scored on a guess.
    capabilities = frozenset({"spec", "module", "activations", "input_embeddings", "hidden_states", "attentions", "lm_loss"})

    def parse(self, spec: Any) -> HfSpec:
        return HfSpec.parse(spec)

    def canonicalize(self, spec: Any) -> str:
        return HfSpec.parse(spec).canonical()

    def sample(self, n: int, *, seed: int) -> list[str]:
        raise TfnasError("space hf draws from a model family: give --space FILE (a .toml space file or a shipped family: "
                         + ", ".join(sorted(shipped_families())) + ")")

    def arch_id(self, spec: str) -> str:
        return content_id(NAME, spec)

    def build(self, spec: Any, **options: Any):
        """A freshly initialised model of `spec` (torch's global generator), eval mode.

        Raises:
            TfnasError: an option (hf models take none) or an invalid spec.
        """
        if options:
            raise TfnasError(f"hf models take no build options, got {sorted(options)}")
        parsed = HfSpec.parse(spec)
        return build_model(parsed.model_type, parsed.task, parsed.config)

    def count_parameters(self, spec: Any, **options: Any) -> int:
        """`model.num_parameters()` of the model (tied weights once), counted on a model
        built on the meta device: no memory, no initialisation."""
        if options:
            raise TfnasError(f"hf models take no build options, got {sorted(options)}")
        parsed = HfSpec.parse(spec)
        return int(build_model(parsed.model_type, parsed.task, parsed.config, device="meta").num_parameters())


SPACE = HfSpace()
SPACES.add(NAME, SPACE)
