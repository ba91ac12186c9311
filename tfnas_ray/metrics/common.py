"""Numerical building blocks shared by metric families (pure numpy/torch)."""

from __future__ import annotations

import numpy as np
import torch

from tfnas_ray.metrics import MetricFailure, check_finite

EIGEN_OFFSET = 1e-5  # k in −Σ[log(λ+k) + 1/(λ+k)] (Mellor et al. 2021; Serianni & Kalita 2023)


def correlation_matrix(rows: np.ndarray, *, what: str) -> np.ndarray:
    """Pearson correlation between the rows of `rows` (variables × observations), float64.

    Raises:
        MetricFailure: a row is constant (its correlation is undefined) or not finite.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(rows)):
        raise MetricFailure(f"{what} contains NaN or inf")
    spread = rows.std(axis=1)
    constant = np.flatnonzero(spread == 0)
    if constant.size:
        raise MetricFailure(
            f"{what}: {constant.size} of {rows.shape[0]} variables are constant "
            f"(first: index {constant[0]}), so their correlation is undefined"
        )
    return np.corrcoef(rows)


def eigen_score(corr: np.ndarray, *, what: str, k: float = EIGEN_OFFSET) -> float:
    """−Σ_i [log(λ_i + k) + 1/(λ_i + k)] over the eigenvalues of a symmetric matrix.

    Uses the symmetric solver (eigvalsh): eigenvalues are real and sorted, with no
    spurious imaginary parts from round-off.
    """
    eigenvalues = np.linalg.eigvalsh(corr)
    with np.errstate(all="ignore"):
        score = -np.sum(np.log(eigenvalues + k) + 1.0 / (eigenvalues + k))
    return check_finite(score, what)


def log_abs_det(matrix: np.ndarray, *, what: str) -> float:
    """log|det K| by LU (slogdet); a singular K is a recorded failure."""
    sign, logdet = np.linalg.slogdet(np.asarray(matrix, dtype=np.float64))
    if sign == 0:
        raise MetricFailure(f"{what}: the kernel matrix is singular")
    return check_finite(logdet, what)


def hamming_kernel_update(kernel: torch.Tensor, activations: torch.Tensor) -> None:
    """K += c cᵀ + (1−c)(1−c)ᵀ with c = 1[activations > 0], per sample (row).

    K counts, for each pair of samples, the units on which their binary codes agree
    (Mellor et al. 2021, NASWOT). Codes are multiplied in float32 — exact, since each
    product sums at most a few thousand ones — and accumulated in float64.
    """
    codes = (activations.detach().reshape(activations.shape[0], -1) > 0).float()
    flipped = 1.0 - codes
    kernel += (codes @ codes.t() + flipped @ flipped.t()).double()


def saliency_sum(tensors, grads) -> float:
    """Σ |t ⊙ ∂t| over pairs, skipping tensors without a gradient (they count 0)."""
    total = 0.0
    for tensor, grad in zip(tensors, grads):
        if grad is not None:
            total += float((tensor.detach() * grad).abs().sum())
    return total


def grasp_saliency(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    """GraSP's −Σ θ ⊙ (H g) over `params`, g = ∂loss/∂θ held constant, H the Hessian of
    `loss` (Wang et al. 2020, as zero-cost-nas): z = Σ g·∂loss/∂θ, Hg = ∂z/∂θ. `loss` must
    come from a graph built with gradients enabled; parameters it does not reach count 0,
    and so does one whose gradient does not depend on any parameter (Hg is None).
    Accumulated in double precision."""
    first = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    reached = [(p, g) for p, g in zip(params, first) if g is not None]
    z = sum((g.detach() * g).sum() for _, g in reached)
    hessian_g = torch.autograd.grad(z, [p for p, _ in reached], allow_unused=True)
    total = 0.0
    for (weight, _), hg in zip(reached, hessian_g):
        if hg is not None:
            total -= float((weight.detach().double() * hg.double()).sum())
    return total
