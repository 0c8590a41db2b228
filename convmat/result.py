"""The outcome of a deconvolution: :class:`DeconvolutionResult` and its stop reasons.

The solvers report why they stopped as a code (SciPy's ``istop`` of ``lsqr`` and ``lsmr``,
which :func:`convmat.solvers.cgls` and :func:`convmat.solvers.lsqr` share); this module puts
those codes in words, says which of them count as converged, and holds the frozen record
that :func:`convmat.deconvolve` returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CONVERGED", "STOP_REASONS", "Y_IS_ZERO", "DeconvolutionResult", "start_reason"]

# SciPy's istop codes for lsqr and lsmr (and ours), in words. Code 0 ("the start is
# already a solution") has several true readings, told apart by start_reason.
STOP_REASONS = {
    # A x = b is the stacked system [W; lam D; damp I] x = [y; 0; 0]; x0 = 0 without a
    # start. lsqr and lsmr test ||A|| and ||x - x0|| through their estimates; cgls stops
    # on 1 when ||b - A x|| <= btol ||b||, which implies the test stated.
    1: "residual small: ||b - A x|| <= btol ||b|| + atol ||A|| ||x - x0||",
    2: "least-squares solution: the normal-equation residual ||A^H (b - A x)|| is within "
       "atol (relative to ||A|| ||b - A x||; for cgls, to its value at x0)",
    3: "condition number estimate of the system exceeds conlim",
    4: "residual small to machine precision",
    5: "least-squares solution to machine precision",
    6: "condition number estimate too large for machine precision",
    7: "iteration limit reached (maxiter)",
}
Y_IS_ZERO = "y is zero: x = 0 is the exact solution"
#: The ``istop`` codes that count as converged.
CONVERGED = {0, 1, 2, 4, 5}


def start_reason(x0_given: bool, exact: bool) -> str:
    """Why a solver stopped before its first iteration (SciPy's ``istop=0``), truly."""
    if not x0_given:  # y is not zero (solved before): the start x = 0 had A^H b = W^H y = 0
        return ("W^H y = 0: x = 0 is a least-squares solution (y is not zero but is "
                "orthogonal to the range of W)")
    if exact:
        return "x0 is an exact solution: the residual of the (stacked) system at x0 is zero"
    return "x0 is a least-squares solution: the normal equations hold at x0"


@dataclasses.dataclass(frozen=True)
class DeconvolutionResult:
    """Outcome of :func:`deconvolve`.

    Attributes
    ----------
    x : ndarray
        The solution, shaped like the operator's input (batched when ``y`` was).
    method : str
        The solver that ran.
    iterations : int or tuple of int
        Iterations (per sample for a batch).
    stop_reason : str or tuple of str
        Why the solver stopped, in words.
    converged : bool or tuple of bool
        False when it stopped on the iteration limit or an ill-conditioning guard.
    residual_norm : float or tuple of float
        ``||W x - y||``, computed from the returned ``x``.
    normal_residual_norm : float or tuple of float
        ``||A^H (b - A x)||`` of the solved (stacked, damped) system ``A x = b``: zero at a
        least-squares solution.
    history : dict of str to ndarray, or tuple of them, or None
        Per iteration (when asked): ``residual_norm`` (``||b - A x_k||`` of the stacked
        system, including the damping term) and ``normal_residual_norm``.
    choice : ParameterChoice, or tuple of them, or None
        When a rule chose ``damp`` or ``lam``: the value, the curve it came from and why
        (:class:`convmat.regularization.ParameterChoice`).
    """

    x: Any
    method: str
    iterations: Any
    stop_reason: Any
    converged: Any
    residual_norm: Any
    normal_residual_norm: Any
    history: Any = None
    choice: Any = None

    def __repr__(self) -> str:
        x = self.x
        return (
            f"DeconvolutionResult(method={self.method!r}, x.shape={tuple(x.shape)}, "
            f"iterations={self.iterations}, converged={self.converged}, "
            f"stop_reason={self.stop_reason!r}, residual_norm={self.residual_norm}, "
            f"normal_residual_norm={self.normal_residual_norm})"
        )

