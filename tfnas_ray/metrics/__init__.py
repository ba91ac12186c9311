"""Training-free metrics: one registry, one module per metric family.

A metric is a pure function of a `MetricContext` (which holds the architecture, the
seed, the device and the metric minibatch) returning a float. The context builds the
model under the seed and caches *passes* — forward/backward computations that several
metrics read — so metrics scored together share one pass instead of rerunning it.

A metric name can have one implementation per search space (`jacob_cov` exists for RNN
cells and for transformers) and one generic implementation, for any space; the name is
what `--metric` takes and what the scores table says.

Every implementation declares what it reads from a model (`reads`, in the capability
vocabulary `tfnas_ray.spaces.CAPABILITIES`: the spec alone, any module, a recurrent
cell's steps, hidden states, attentions, an LM loss, …) and every space what its models
offer (`Space.capabilities`). `Metric.impl(space)` matches the two: the space's own
implementation where one is registered (the published values stay exact), else the
generic one (metrics/capability.py, through the space's `probe` pass) when the space
offers everything it reads, else one line saying what is missing.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from tfnas_ray.errors import TfnasError
from tfnas_ray.registry import Registry
from tfnas_ray.spaces import CAPABILITIES, check_capabilities

# The space key of a generic implementation: scored on every space that offers what it reads.
ANY_SPACE = "any"


class Direction(str, enum.Enum):
    """Which way a metric is expected to point: does a higher value predict a better
    trained model (lower loss, higher GLUE)? Declared, never assumed by the analysis:
    correlations are always reported signed."""

    HIGHER = "higher-is-better"
    LOWER = "lower-is-better"


# How a space's paper columns are computed (`--protocol`): "released" — as the authors'
# released code computes them (the default); "published" — as the computation that
# produced their published table, where the two differ (metrics/rnn_published.py).
PROTOCOLS = ("released", "published")
RELEASED = "released"


@dataclass(frozen=True)
class ProtocolVariant:
    """A metric's computation under a non-default protocol.

    Attributes:
        fn: the implementation under that protocol.
        summary: one line: what it computes and why it differs (or that it does not).
        differs: False when it is the released computation (registered only so that
            every column of the protocol shares one pass).
    """

    fn: Callable[["MetricContext"], float]
    summary: str
    differs: bool = True
    reads: tuple[str, ...] | None = None  # capabilities; None: those of the released implementation


@dataclass(frozen=True)
class MetricImpl:
    """One space's implementation of a metric (or the generic one, `ANY_SPACE`)."""

    fn: Callable[["MetricContext"], float]
    needs: tuple[str, ...]  # names of the passes it reads (shared between metrics)
    cost: str  # what it runs, for `tfnas metrics`: "forward", "forward+backward", …
    # What it reads from the model (`CAPABILITIES`); the space must offer all of it.
    reads: tuple[str, ...] = ()
    summary: str = ""  # this space's formula: one name may compute different things per space
    # Bumped whenever a change makes this implementation give other values: it enters
    # the identity of score shards (so a rerun recomputes the old values instead of
    # keeping them) and the scores table's `version` column.
    version: int = 1
    variants: Mapping[str, ProtocolVariant] = field(default_factory=dict)  # protocol -> variant

    def fn_for(self, protocol: str) -> Callable[["MetricContext"], float]:
        """The implementation under `protocol` (the released one where none differs)."""
        variant = self.variants.get(protocol)
        return variant.fn if variant is not None else self.fn

    def reads_for(self, protocol: str) -> tuple[str, ...]:
        """What the implementation under `protocol` reads."""
        variant = self.variants.get(protocol)
        return variant.reads if variant is not None and variant.reads is not None else self.reads


@dataclass
class Metric:
    """A metric name with its declared direction, its per-space implementations and its
    generic one."""

    name: str
    direction: Direction
    summary: str  # one line: formula and source (of the first space registered)
    impls: dict[str, MetricImpl] = field(default_factory=dict)  # space -> its own implementation
    # A trivial baseline (size, depth, width, FLOPs: metrics/baselines.py): free to score,
    # and what every comparison sets the other metrics against.
    baseline: bool = False
    # Scored on a space without its own implementation that offers everything it reads.
    generic: MetricImpl | None = None

    def formula(self, space: str) -> str:
        """The formula this metric computes on `space` (its own summary)."""
        return self.impl(space).summary or self.summary

    @property
    def differs_between_spaces(self) -> bool:
        """True when the same name is computed by different formulas on different spaces
        (e.g. `activation_distance`: a log-det over samples for RNNs, a sum over tokens for
        BERT), so its values are not comparable across spaces."""
        impls = [*self.impls.values(), *([self.generic] if self.generic is not None else [])]
        return len({impl.summary or self.summary for impl in impls}) > 1

    def impl(self, space: str) -> MetricImpl:
        """The implementation scored on `space`: its own, else the generic one if the
        space offers every capability it reads.

        Raises:
            TfnasError: neither applies (one line: what is read and not offered, or
                where the metric is defined); an unknown space.
        """
        own = self.impls.get(space)
        if own is not None:
            return own
        if self.generic is not None:
            offered = space_capabilities(space)
            missing = [c for c in self.generic.reads if c not in offered]
            if not missing:
                return self.generic
            raise TfnasError(
                f"metric {self.name!r} reads {', '.join(missing)}, which space {space!r} does not offer "
                f"(it offers: {', '.join(c for c in CAPABILITIES if c in offered)})"
            )
        raise TfnasError(
            f"metric {self.name!r} is not defined for space {space!r}; "
            f"it is defined for: {', '.join(sorted(self.impls))}"
        )

    def applies_to(self, space: str) -> bool:
        """Whether `impl(space)` gives an implementation."""
        if space in self.impls:
            return True
        return self.generic is not None and set(self.generic.reads) <= space_capabilities(space)


def space_capabilities(space: str) -> frozenset[str]:
    """What the models of registered space `space` offer (`Space.capabilities`).

    Raises:
        TfnasError: an unknown space (listing the known ones).
    """
    from tfnas_ray.spaces import get_space

    return frozenset(get_space(space).capabilities)


METRICS: Registry[Metric] = Registry("metric")
PASSES: Registry[Callable[["MetricContext"], Any]] = Registry("pass")  # key: "space/pass"
BATCHES: Registry[Callable[[Mapping[str, Any]], Any]] = Registry("metric batch")  # key: space

_METRIC_MODULES: Sequence[str] = (
    "tfnas_ray.metrics.rnn_paper",
    "tfnas_ray.metrics.rnn_published",
    "tfnas_ray.metrics.rnn_standard",
    "tfnas_ray.metrics.transformer",
    "tfnas_ray.metrics.capability",
    "tfnas_ray.metrics.baselines",
)


def load_metrics() -> Registry[Metric]:
    """Import every metric module (idempotent) and return the registry."""
    for module in _METRIC_MODULES:
        importlib.import_module(module)
    return METRICS


def get_metric(name: str) -> Metric:
    return load_metrics().get(name)


def directions() -> dict[str, str]:
    """{metric: its declared direction ("higher-is-better" / "lower-is-better")} of every
    registered metric: what the analysis orients merits by."""
    return {name: metric.direction.value for name, metric in load_metrics().items()}


def baseline_metrics() -> list[str]:
    """Every metric registered as a trivial baseline (metrics/baselines.py), of any space,
    in registry order."""
    return [name for name, metric in load_metrics().items() if metric.baseline]


def register_metric(
    name: str,
    *,
    space: str,
    direction: Direction,
    summary: str,
    reads: Sequence[str] = (),
    needs: Sequence[str] = (),
    cost: str = "",
    version: int = 1,
    baseline: bool = False,
) -> Callable[[Callable[["MetricContext"], float]], Callable[["MetricContext"], float]]:
    """Register `fn(ctx) -> float` as the implementation of metric `name` for `space`
    (`ANY_SPACE`: the generic implementation, scored on every space without its own that
    offers what it reads).

    `reads` (at least one, from `CAPABILITIES`): what the implementation reads from the
    model — "spec" when the spec alone is read. The first registration of a name fixes its direction, summary and whether it is a
    trivial baseline (`baseline`: read from the spec alone, set against every other
    metric); a later one for another space must declare the same direction and the same
    `baseline`. (name, space) may be registered once.
    `version` (an integer from 1) must be bumped by a change that alters the values, so
    that scores computed by the old code are recomputed, never reused.
    """
    if not isinstance(version, int) or version < 1:
        raise TfnasError(f"metric {name!r} for space {space!r}: version must be an integer >= 1, got {version!r}")

    def decorator(fn: Callable[["MetricContext"], float]) -> Callable[["MetricContext"], float]:
        if name in METRICS:
            metric = METRICS.get(name)
            if metric.direction != direction:
                raise TfnasError(
                    f"metric {name!r} declared {direction.value} for space {space!r} "
                    f"but {metric.direction.value} elsewhere"
                )
            if metric.baseline != baseline:
                raise TfnasError(
                    f"metric {name!r} registered with baseline={baseline} for space {space!r} "
                    f"but baseline={metric.baseline} elsewhere"
                )
        else:
            metric = Metric(name=name, direction=direction, summary=summary, baseline=baseline)
            METRICS.add(name, metric)
        if space in metric.impls or (space == ANY_SPACE and metric.generic is not None):
            raise TfnasError(f"metric {name!r} is already registered for space {space!r}")
        where = f"metric {name!r} for space {space!r}"
        if not reads:
            raise TfnasError(f"{where} declares no capability it reads; give reads= from: {', '.join(CAPABILITIES)}")
        impl = MetricImpl(
            fn=fn, needs=tuple(needs), cost=cost, summary=summary, version=version,
            reads=check_capabilities(reads, what=where),
        )
        if space == ANY_SPACE:
            metric.generic = impl
        else:
            metric.impls[space] = impl
        return fn

    return decorator


def score_version(impl: MetricImpl) -> str:
    """The scores table's `version` of values computed by `impl`: the package version
    and the implementation's version, e.g. "0.1.0+m2"."""
    import tfnas_ray

    return f"{tfnas_ray.__version__}+m{impl.version}"


def register_protocol_variant(
    name: str, *, space: str, protocol: str, summary: str, differs: bool = True, reads: Sequence[str] | None = None
) -> Callable[[Callable[["MetricContext"], float]], Callable[["MetricContext"], float]]:
    """Register `fn(ctx) -> float` as metric `name`'s computation for `space` under
    `protocol`; the released implementation must already be registered. `reads`: what
    the variant reads (`CAPABILITIES`), where it differs from the released one."""
    if protocol not in PROTOCOLS or protocol == RELEASED:
        raise TfnasError(f"protocol {protocol!r}: a variant needs one of {', '.join(p for p in PROTOCOLS if p != RELEASED)}")

    def decorator(fn: Callable[["MetricContext"], float]) -> Callable[["MetricContext"], float]:
        impl = METRICS.get(name).impls.get(space)
        if impl is None:
            raise TfnasError(f"metric {name!r} has no implementation of its own for space {space!r} to vary")
        if protocol in impl.variants:
            raise TfnasError(f"metric {name!r} already has a {protocol!r} variant for space {space!r}")
        variant_reads = None if reads is None else check_capabilities(reads, what=f"metric {name!r} for space {space!r} under {protocol!r}")
        variants = {**impl.variants, protocol: ProtocolVariant(fn=fn, summary=summary, differs=differs, reads=variant_reads)}
        METRICS.get(name).impls[space] = dataclasses.replace(impl, variants=variants)
        return fn

    return decorator


def register_pass(space: str, name: str) -> Callable[[Callable], Callable]:
    """Register a shared pass `fn(ctx) -> artifact` under `space/name`."""

    def decorator(fn: Callable[["MetricContext"], Any]) -> Callable[["MetricContext"], Any]:
        PASSES.add(f"{space}/{name}", fn)
        return fn

    return decorator


def register_batch(space: str) -> Callable[[Callable], Callable]:
    """Register the function that builds `space`'s metric minibatch from options."""

    def decorator(fn: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
        BATCHES.add(space, fn)
        return fn

    return decorator


class MetricContext:
    """Everything a metric may read for one architecture, with shared, cached passes.

    The model is built once under `seed` (torch's global generator is forked, so the
    caller's random state is untouched) and every `model()` call returns a fresh copy
    of that pristine model, so no metric sees another's gradients or mutations.

    Attributes:
        space: the space's registry name.
        spec: the canonical spec.
        seed: the seed the model is initialised with.
        device: the torch device metrics run on.
        batch: the space's metric minibatch (on CPU; passes move it to `device`).
        options: space-specific model options (e.g. `as_trained` for nb-bert); the
            batch may add its own (`batch.model_options`, e.g. the vocabulary size).
        wanted: the metrics being scored together, so a pass can serve all of them
            (e.g. run as many layers as the deepest requested layer metric needs).
        protocol: which computation of the paper's columns (`PROTOCOLS`); the batch
            says (`batch.protocol`), "released" for batches without one.
        pass_counts: how many times each pass actually ran (1 when shared).
    """

    def __init__(
        self,
        space: str,
        spec: str,
        *,
        seed: int,
        batch: Any,
        device: str | torch.device = "cpu",
        options: Mapping[str, Any] | None = None,
        wanted: Sequence[str] = (),
    ):
        self.space = space
        self.spec = spec
        self.seed = int(seed)
        self.batch = batch
        self.device = torch.device(device)
        self.options = dict(options or {})
        self.wanted = frozenset(wanted)
        self.protocol = getattr(batch, "protocol", RELEASED)
        self.pass_counts: Counter[str] = Counter()
        self._pristine: torch.nn.Module | None = None  # built lazily, never handed out
        self._passes: dict[str, Any] = {}  # pass name -> artifact

    def model(self) -> torch.nn.Module:
        """A fresh copy of the model as initialised under `self.seed`, on `self.device`."""
        if self._pristine is None:
            from tfnas_ray.spaces import get_space

            space = get_space(self.space)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                options = {**getattr(self.batch, "model_options", {}), **self.options}
                self._pristine = space.build(self.spec, **options)
            self._pristine.to(self.device)
        return copy.deepcopy(self._pristine)

    def run_pass(self, name: str) -> Any:
        """The artifact of pass `name`, computed on first request and then shared."""
        if name not in self._passes:
            fn = PASSES.get(f"{self.space}/{name}")
            self._passes[name] = fn(self)
            self.pass_counts[name] += 1
        return self._passes[name]


class MetricFailure(Exception):
    """A metric could not produce a number for this architecture (recorded, not raised
    to the user): a constant hidden unit, a singular matrix, a NaN."""


def check_finite(value: float, what: str) -> float:
    """Return `value` as a float, or raise MetricFailure naming `what` if not finite."""
    value = float(value)
    if not math.isfinite(value):
        raise MetricFailure(f"{what} is {value}")
    return value
