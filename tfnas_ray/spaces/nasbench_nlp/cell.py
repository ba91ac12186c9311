"""One recurrent layer of a NAS-Bench-NLP cell, executed for speed.

Shapes: T steps, B batch, I layer input size, H hidden size, k hidden tuple size.

The parameters are stored as the reference stores them — per linear node, one weight
per input (H, in_size) and one bias (H,) — so initialisation draws them in the
reference order. Execution fuses them (concatenations of those tensors, never new
parameters): every weight that reads `x` becomes one (n·H, I) matrix applied to all T
steps in a single matmul; inside a step, every weight that
reads the same node is one matmul as soon as that node exists.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tfnas_ray.spaces.nasbench_nlp.recipe import Recipe

# CUDA graphs for gradient-free forwards are opt-in until a GPU has measured that they pay:
# captured per call and thrown away, they may cost more (a synchronisation and a cache
# flush per capture) than the launches they save.
CUDA_GRAPHS_ENV = "TFNAS_CUDA_GRAPHS"


def cuda_graphs_enabled() -> bool:
    """Whether gradient-free CUDA forwards record the step as a CUDA graph: set
    TFNAS_CUDA_GRAPHS=1 (read at every forward, so Ray workers started with it see it)."""
    return os.environ.get(CUDA_GRAPHS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# Set after the first failed capture: the process then runs the eager loop without trying
# again (one warning, not one per layer and window).
_capture_failed: list[str] = []

_ACTIVATIONS = {
    "activation_tanh": torch.tanh,
    "activation_sigm": torch.sigmoid,
    "activation_leaky_relu": F.leaky_relu,  # slope 0.01, as torch.nn.LeakyReLU()
}


class StepRecorder(Protocol):
    """Receives tensors from inside the step loop (metrics use it; training does not)."""

    def hidden(self, layer: int, step: int, h_prev_0: torch.Tensor) -> torch.Tensor:
        """Called with h_prev_0 (B, H) as it enters each step; returns the tensor to use
        (e.g. the same tensor made to retain its gradient)."""

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        """Called with every activation node's output (B, H)."""


# A recorder may also define
#     projection(layer, source, inputs, projected) -> None
# called with every fused matmul of the layer: `inputs` (N, in) @ Wᵀ = `projected`
# (N, n·H), W the weights of `RecurrentLayer.readers(source)` stacked in that order;
# source "x" is the all-steps input projection (N = T·B), any other is one step's node
# (N = B). Metrics that need weight gradients of one part of a batch take them from
# there (Σ_N gradᵀ·inputs) instead of having autograd form every weight's gradient.


class MultiLinear(nn.Module):
    """Σ_j W_j·in_j + b, one weight per input (the reference's linear node).

    Initialised like `nn.Linear` per weight (kaiming uniform, a = √5), then one bias
    uniform ±1/√fan_in of the first weight — in that order.
    """

    def __init__(self, input_sizes: list[int], hidden_size: int):
        super().__init__()
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(hidden_size, size)) for size in input_sizes]
        )
        self.bias = nn.Parameter(torch.empty(hidden_size))
        for weight in self.weights:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(input_sizes[0])
        nn.init.uniform_(self.bias, -bound, bound)


class RecurrentLayer(nn.Module):
    """One layer: runs a recipe's step over a sequence.

    Args:
        recipe: the validated cell.
        input_size: I, the size of `x`.
        hidden_size: H, the size of every node other than `x`.
        weight_drop: dropout probability on every linear weight that does not read `x`
            (AWD-LSTM's DropConnect on recurrent weights; NAS-Bench-NLP's wdrop).
    """

    def __init__(self, recipe: Recipe, input_size: int, hidden_size: int, weight_drop: float = 0.0):
        super().__init__()
        self.recipe = recipe
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_drop = weight_drop
        # Reference order: every linear node's weights then bias, in recipe order.
        self.linears = nn.ModuleDict()
        for node in recipe.nodes:
            if node.op == "linear":
                sizes = [input_size if i == "x" else hidden_size for i in node.inputs]
                self.linears[_key(node.name)] = MultiLinear(sizes, hidden_size)
        # The layer's reset (CustomRNN.reset_parameters): everything re-drawn U(±1/√H).
        stdv = 1.0 / math.sqrt(hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -stdv, stdv)
        self._plan_fusion()

    def _plan_fusion(self) -> None:
        """Group (node, input position) pairs by the node they read."""
        self._x_readers: list[tuple[str, int]] = []  # (node, j) with input j == "x"
        self._readers: dict[str, list[tuple[str, int]]] = {}  # source -> (node, j)
        for node in self.recipe.nodes:
            if node.op != "linear":
                continue
            for j, source in enumerate(node.inputs):
                if source == "x":
                    self._x_readers.append((node.name, j))
                else:
                    self._readers.setdefault(source, []).append((node.name, j))

    def readers(self, source: str) -> list[tuple[str, int, nn.Parameter]]:
        """(node, input position, weight) of every linear input that reads `source`
        ("x" or a node), in the row order of that source's fused projection."""
        pairs = self._x_readers if source == "x" else self._readers.get(source, [])
        return [(node, j, self.linears[_key(node)].weights[j]) for node, j in pairs]

    def _weight(self, node: str, j: int) -> torch.Tensor:
        weight = self.linears[_key(node)].weights[j]
        if self.recipe.node(node).inputs[j] != "x" and self.weight_drop and self.training:
            weight = F.dropout(weight, p=self.weight_drop, training=True)
        return weight

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: tuple[torch.Tensor, ...],
        *,
        layer_index: int = 0,
        recorder: StepRecorder | None = None,
        capture: bool | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the cell over `inputs` (T, B, I) from `hidden` (k tensors of (B, H)).

        Args:
            capture: record the step once and replay it (`_captured_steps`); None: on
                CUDA, without gradients, in eval mode, when `cuda_graphs_enabled()`.
                Values are those of the loop; a capture that fails falls back to the
                loop with one warning per process.

        Returns:
            outputs (T, B, H): h_new_0 after every step; the final hidden tuple.
        """
        T, B, _ = inputs.shape
        H = self.hidden_size
        project = getattr(recorder, "projection", None)

        # All steps' x-projections in one matmul: (T·B, I) @ (I, n·H) -> (T, B, n·H).
        x_slices: dict[str, list[tuple[torch.Tensor, ...]]] = {}  # node -> per input, T steps
        if self._x_readers:
            weights = torch.cat([self._weight(n, j) for n, j in self._x_readers], dim=0)
            flat = inputs.reshape(T * B, -1)
            projected = flat @ weights.t()  # (T·B, n·H)
            if project is not None:
                project(layer_index, "x", flat, projected)
            projected = projected.view(T, B, len(self._x_readers), H)
            for position, (node, _) in enumerate(self._x_readers):
                # unbind once: the backward of T separate step slices would zero-fill a
                # full (T, B, H) gradient per step (quadratic in T); unbind's is one stack.
                x_slices.setdefault(node, []).append(projected[:, :, position].unbind(0))
        source_weights = {
            source: torch.cat([self._weight(n, j) for n, j in readers], dim=0).t()
            for source, readers in self._readers.items()
        }

        if capture is None:  # auto: opted in, CUDA, gradient-free, eval — where launches dominate
            capture = (
                cuda_graphs_enabled() and inputs.is_cuda and not torch.is_grad_enabled() and not self.training
            )
        if capture and not _capture_failed:
            captured = self._captured_steps(x_slices, tuple(hidden), source_weights, T, layer_index, recorder)
            if captured is not None:
                return captured
        outputs = []
        state = tuple(hidden)
        for t in range(T):
            x_parts = {node: [chunks[t] for chunks in slices] for node, slices in x_slices.items()}
            state = self._step(x_parts, state, source_weights, layer_index, t, recorder, project)
            outputs.append(state[0])
        return torch.stack(outputs, dim=0), state

    def _step(self, x_parts, state, source_weights, layer_index, t, recorder, project):
        """One step: x's projections for this step (node -> chunks), the hidden tuple in,
        the hidden tuple out."""
        B, H = state[0].shape
        values: dict[str, torch.Tensor] = {}
        partial: dict[str, list[torch.Tensor]] = {node: list(chunks) for node, chunks in x_parts.items()}

        def publish(name: str, value: torch.Tensor) -> None:
            values[name] = value
            readers = self._readers.get(name)
            if readers:
                projected = value @ source_weights[name]  # (B, n·H)
                if project is not None:
                    project(layer_index, name, value, projected)
                projected = projected.view(B, len(readers), H)
                for (node, _), chunk in zip(readers, projected.unbind(1)):
                    partial.setdefault(node, []).append(chunk)

        for i, h in enumerate(state):
            if i == 0 and recorder is not None:
                h = recorder.hidden(layer_index, t, h)
            publish(f"h_prev_{i}", h)
        for name in self.recipe.order:
            node = self.recipe.node(name)
            ins = node.inputs
            if node.op == "linear":
                value = _sum(partial.pop(name)) + self.linears[_key(name)].bias
            elif node.op == "blend":
                z, a, b = (values[i] for i in ins)
                value = z * a + (1 - z) * b
            elif node.op == "elementwise_prod":
                value = values[ins[0]] * values[ins[1]]
            elif node.op == "elementwise_sum":
                value = values[ins[0]] + values[ins[1]]
            else:
                value = _ACTIVATIONS[node.op](values[ins[0]])
                if recorder is not None:
                    recorder.activation(layer_index, t, name, value)
            publish(name, value)
        return tuple(values[f"h_new_{i}"] for i in range(self.recipe.hidden_tuple_size))

    def _captured_steps(self, x_slices, state, source_weights, T, layer_index, recorder):
        """The step recorded once and replayed T times (gradient-free only).

        A CUDA graph on a GPU: one launch per step instead of one per op, which is what
        bounds a small recurrent step there. Static buffers carry the step's inputs
        (x's projections, the hidden tuple) and outputs (the new tuple, every activation
        node's output, handed to the recorder after each replay). Off CUDA the same
        buffers are refilled by re-running the step eagerly (`_EagerStepGraph`), which
        only exists so that this logic is tested without a GPU.

        Returns:
            (outputs, final hidden tuple), or None when recording the step failed (the
            caller then runs the plain loop; `_capture_failed` keeps it from retrying).
        """
        static_x = {node: [chunks[0].clone() for chunks in slices] for node, slices in x_slices.items()}
        static_state = tuple(h.clone() for h in state)
        activations = _ActivationBuffers()

        def step():
            activations.rewind()
            return self._step(static_x, static_state, source_weights, layer_index, 0, activations, None)

        graph = _step_graph(static_state[0])
        try:
            new_state = graph.capture(step)
        except torch.OutOfMemoryError:
            raise  # not a capture fault: the scorer's out-of-memory handling decides
        except RuntimeError as error:  # torch reports capture faults as RuntimeError
            # Nothing was handed to the recorder yet: the caller reruns the plain loop.
            _capture_failed.append(str(error))
            warnings.warn(
                f"recording the recurrent step as a graph failed ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                "running the step loop instead for the rest of this process",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        outputs = []
        for t in range(T):
            for node, slices in x_slices.items():
                for buffer, chunks in zip(static_x[node], slices):
                    buffer.copy_(chunks[t])
            if recorder is not None:
                recorder.hidden(layer_index, t, static_state[0].clone())
            graph.replay()
            if recorder is not None:
                for name, value in activations.outputs:
                    recorder.activation(layer_index, t, name, value)
            for buffer, value in zip(static_state, new_state):
                buffer.copy_(value)
            outputs.append(new_state[0].clone())
        return torch.stack(outputs, dim=0), tuple(h.clone() for h in static_state)


class _ActivationBuffers:
    """A recorder inside a captured step: keeps each activation output (the graph's
    static tensors); on an eager re-run, copies the new values into those."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self._position: int | None = None  # None while the first run fills `outputs`

    def rewind(self) -> None:
        self._position = 0 if self.outputs else None

    def hidden(self, layer: int, step: int, h: torch.Tensor) -> torch.Tensor:
        return h

    def activation(self, layer: int, step: int, node: str, output: torch.Tensor) -> None:
        if self._position is None:
            self.outputs.append((node, output))
        else:
            self.outputs[self._position][1].copy_(output)
            self._position += 1


class _CudaStepGraph:
    def capture(self, step):
        # Warm up on a side stream (cuBLAS handles, allocator pools), as torch.cuda.graph
        # requires, then record the step; replay() reruns it on the same buffers.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            out = step()
        return out

    def replay(self) -> None:
        self._graph.replay()


def _step_graph(like: torch.Tensor):
    """The recorder of a step for tensors like `like` (a seam: tests inject a failing one)."""
    return _CudaStepGraph() if like.is_cuda else _EagerStepGraph()


class _EagerStepGraph:
    def capture(self, step):
        self._step = step
        self._out = step()
        return self._out

    def replay(self) -> None:
        for buffer, value in zip(self._out, self._step()):
            buffer.copy_(value)


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def _key(name: str) -> str:
    # ModuleDict keys may not contain "."; recipe names rarely do, but be safe.
    return name.replace(".", "·")
