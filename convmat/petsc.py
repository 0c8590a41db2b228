"""Convolution matrices as distributed PETSc matrices, applied and solved across MPI ranks.

A leaf of the package, imported explicitly (``from convmat import petsc``); it needs
``petsc4py`` (``pip install convmat[mpi]``, or Debian's ``python3-petsc4py``). Run a script
that uses it on several ranks with ``mpiexec -n 4 python my_script.py``; set
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` for the ranks.

Every rank builds only its own block of rows of ``W`` with convmat's builder restricted to a
range of output planes (see :func:`convmat.indices.build_csr_arrays`), in chunks of about
``CHUNK_BYTES``, and hands the arrays to PETSc as they are (no ``MatSetValues``): on one rank
the builder's CSR itself (``MatCreateSeqAIJWithArrays``); on several, a first pass counts each
row's entries in the diagonal block (the columns the rank owns) and the off-diagonal one, and a
second fills exact-size split arrays chunk by chunk (``MatCreateMPIAIJWithSplitArrays``). A
rank holds its share plus one chunk; no rank holds the global matrix.

Example, run as ``mpiexec -n 4 python deblur.py``::

    import numpy as np
    from convmat import petsc

    op = petsc.DistributedConvOperator(psf, (1, 256, 256, 256), padding="same")
    res = op.lsqr(blurred, damp=1e-2)     # KSPLSQR across the ranks; res.x on every rank
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import ConvMatrixTooLarge, format_bytes, memory_limit
from .geometry import ConvGeometry
from .indices import build_csr_arrays
from .matrix import conv_weight, prepare_conv
from .operator import GeometryShapes
from .result import DeconvolutionResult

__all__ = ["DistributedConvOperator", "conv_matrix", "plane_ranges"]


def _petsc() -> Any:
    try:
        from petsc4py import PETSc
    except ImportError as exc:
        raise ImportError(
            "convmat.petsc needs petsc4py: pip install convmat[mpi] (or Debian's "
            "python3-petsc4py)"
        ) from exc
    return PETSc


def _numpy_only(weight: Any) -> None:
    from .backend import array_namespace

    if array_namespace(weight) is not np:
        raise TypeError("convmat.petsc builds from NumPy weights (PETSc holds the matrix); "
                        "move the weight to the host first (convmat.to_cpu)")


def plane_ranges(geometry: ConvGeometry, ranks: int) -> list[tuple[int, int]]:
    """Output planes ``[start, stop)`` of each rank, balanced by stored entries.

    A plane is one ``(output channel, first-axis position)`` pair: a contiguous block of
    rows. Ranks get contiguous planes holding about equal numbers of entries.

    Examples
    --------
    A 3x3 kernel with padding 1 on 10 rows: the first and last planes read 2 rows, the
    others 3, so the cumulative entries per plane are 2, 5, 8, 11, ..., 26, 28, and each cut
    falls at the first plane boundary reaching 28/3 and 2*28/3 (11, 9 and 8 rows' worth):

    >>> from convmat import conv_geometry
    >>> g = conv_geometry((1, 1, 3, 3), (1, 10, 10), padding=1)
    >>> plane_ranges(g, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    o1 = geometry.output_size[0]
    counts = geometry.axis_plans[0].counts()
    per_plane = np.tile(counts, geometry.out_channels).astype(np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(per_plane)))
    targets = cumulative[-1] * np.arange(1, ranks) / ranks
    cuts = np.searchsorted(cumulative, targets, side="left").tolist()
    bounds = [0, *cuts, geometry.out_channels * o1]
    bounds = [min(max(b, 0), bounds[-1]) for b in bounds]
    for k in range(1, len(bounds)):  # keep them ordered
        bounds[k] = max(bounds[k], bounds[k - 1])
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def conv_matrix(
    weight: Any,
    input_shape: Sequence[int],
    *,
    comm: Any = None,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    max_bytes: int | None = None,
) -> Any:
    """The convolution matrix ``W`` as a PETSc AIJ ``Mat`` on ``comm`` (``seqaij`` on one rank).

    Arguments as :func:`convmat.conv_matrix` (every rank passes the same ones). Rank ``r``
    builds the rows of its :func:`plane_ranges` share only, in chunks; columns are
    distributed by PETSc. ``max_bytes`` bounds each rank's peak (its CSR share plus one
    chunk; default: half of the available memory). Values are cast to PETSc's scalar type.

    Raises
    ------
    TypeError
        A complex weight on a real PETSc build, or a CuPy weight.
    """
    _numpy_only(weight)
    weight, geometry = _prepare(weight, input_shape, dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode))
    PETSc = _petsc()
    comm = comm if comm is not None else PETSc.COMM_WORLD
    return _assemble(PETSc, comm, geometry, weight, max_bytes)


def _prepare(weight: Any, input_shape: Any, options: dict[str, Any]) -> tuple[Any, Any]:
    """``(weight, geometry)`` validated before PETSc is touched; channels last refused."""
    weight, _, geometry = prepare_conv(weight, input_shape, **options)
    if geometry.channels_last:
        raise ValueError(
            "convmat.petsc builds channels-first matrices (each rank writes whole output "
            "planes); layout='channels_last' is not supported: use layout='channels_first' "
            "with data moved to (C, *spatial)")
    return weight, geometry


#: Environment variables in which MPI launchers give the number of ranks on this node.
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                        "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


def ranks_on_node(comm: Any) -> int:
    """Ranks of ``comm`` that share this node's memory (each gets its part of the default).

    From MPI itself (``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`` through mpi4py) when
    available, else from the launcher's environment (Open MPI, MPICH, MVAPICH, Slurm), else
    every rank of ``comm`` (the safe assumption: all on one node).
    """
    try:
        mpi_comm = comm.tompi4py()
        from mpi4py import MPI

        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return max(1, int(node.Get_size()))
        finally:
            node.Free()
    except (ImportError, AttributeError, RuntimeError):  # no mpi4py, or no shared split
        pass
    for name in LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), comm.getSize())
    return max(1, comm.getSize())


def _assemble(PETSc: Any, comm: Any, geometry: ConvGeometry, weight: Any,  # noqa: N803
              max_bytes: int | None) -> Any:
    scalar = np.dtype(PETSc.ScalarType)
    if np.dtype(geometry.dtype).kind == "c" and scalar.kind != "c":
        raise TypeError(f"weight dtype {geometry.dtype} is complex but this PETSc build's "
                        f"scalar type is {scalar.name}")
    size, rank = comm.getSize(), comm.getRank()
    q0, q1 = plane_ranges(geometry, size)[rank]
    per_plane = math.prod(geometry.output_size[1:])
    rows, cols = geometry.conv_shape
    index = np.dtype(PETSc.IntType)
    from .indices import plane_offset

    local_nnz = plane_offset(geometry, q1) - plane_offset(geometry, q0)
    local_rows = (q1 - q0) * per_plane
    if max(rows, cols, geometry.nnz) >= np.iinfo(index).max:
        raise ValueError(f"W of shape {geometry.shape} with nnz={geometry.nnz:,} needs 64-bit "
                         f"indices but this PETSc build uses {index.name}")
    share = local_nnz * (scalar.itemsize + index.itemsize) + (local_rows + 1) * index.itemsize
    chunks = _chunks(geometry, q0, q1, CHUNK_BYTES)
    peak = share + max((_chunk_bytes(geometry, a, b, scalar, index) for a, b in chunks), default=0)
    limit, source = memory_limit(max_bytes, sharers=ranks_on_node(comm))
    if limit is not None and peak > limit:
        raise ConvMatrixTooLarge(
            f"rank {rank}: its share of W (nnz={local_nnz:,}) needs {peak:,} bytes at peak "
            f"({format_bytes(peak)}), over the limit of {limit:,} bytes ({source})"
        )
    geometry = geometry if geometry.dtype == scalar.name else _with_dtype(geometry, scalar)
    w = np.ascontiguousarray(conv_weight(geometry, weight), dtype=scalar)
    if size == 1:  # the builder's arrays are PETSc's own (MatCreateSeqAIJWithArrays)
        data, indices, indptr = build_csr_arrays(geometry, w, np, planes=(q0, q1))
        csr = (indptr.astype(index, copy=False), indices.astype(index, copy=False), data)
        return PETSc.Mat().createAIJWithArrays((rows, cols), csr, comm=comm)
    layout = PETSc.Vec().createMPI((PETSc.DECIDE, cols), comm=comm)
    cstart, cend = layout.getOwnershipRange()
    layout.destroy()
    # Pass 1: count each row's entries in the diagonal block (columns this rank owns).
    d_nnz = np.empty(local_rows, dtype=index)
    o_nnz = np.empty(local_rows, dtype=index)
    for a, b in chunks:
        _, indices, indptr = build_csr_arrays(geometry, None, np, planes=(a, b))
        inside = np.concatenate(([0], np.cumsum((indices >= cstart) & (indices < cend))))
        lo, hi = (a - q0) * per_plane, (b - q0) * per_plane
        d_nnz[lo:hi] = np.diff(inside[indptr])
        o_nnz[lo:hi] = np.diff(indptr) - d_nnz[lo:hi]
        del indices, indptr, inside
    # Pass 2: the exact-size split arrays (MatCreateMPIAIJWithSplitArrays: PETSc uses them
    # as they are), filled chunk by chunk; the diagonal block's columns are local.
    di = np.zeros(local_rows + 1, dtype=index)
    oi = np.zeros(local_rows + 1, dtype=index)
    np.cumsum(d_nnz, out=di[1:])
    np.cumsum(o_nnz, out=oi[1:])
    del d_nnz, o_nnz
    dj, dv = np.empty(int(di[-1]), dtype=index), np.empty(int(di[-1]), dtype=scalar)
    oj, ov = np.empty(int(oi[-1]), dtype=index), np.empty(int(oi[-1]), dtype=scalar)
    for a, b in chunks:
        data, indices, _ = build_csr_arrays(geometry, w, np, planes=(a, b))
        inside = (indices >= cstart) & (indices < cend)
        lo, hi = (a - q0) * per_plane, (b - q0) * per_plane
        d0, d1, o0, o1 = int(di[lo]), int(di[hi]), int(oi[lo]), int(oi[hi])
        np.subtract(indices[inside], cstart, out=dj[d0:d1], casting="unsafe")
        dv[d0:d1] = data[inside]
        outside = ~inside
        oj[o0:o1] = indices[outside]
        ov[o0:o1] = data[outside]
        del data, indices, inside, outside
    sizes = ((local_rows, rows), (cend - cstart, cols))
    return PETSc.Mat().createAIJWithArrays(sizes, ((di, dj, dv), (oi, oj, ov)), comm=comm)


#: Bytes of CSR built at once while streaming a rank's share into PETSc.
CHUNK_BYTES = 64 * 2**20


def _chunk_bytes(g: ConvGeometry, a: int, b: int, scalar: np.dtype, index: np.dtype) -> int:
    from .indices import plane_offset

    nnz = plane_offset(g, b) - plane_offset(g, a)
    rows = (b - a) * math.prod(g.output_size[1:])
    return nnz * (scalar.itemsize + index.itemsize) + (rows + 1) * (index.itemsize + 8)


def _chunks(g: ConvGeometry, q0: int, q1: int, budget: int) -> list[tuple[int, int]]:
    """Planes ``[q0, q1)`` cut into runs of whole planes of about ``budget`` CSR bytes.

    A plane larger than the budget is a chunk of its own.
    """
    if q1 <= q0:
        return []
    rest = (g.in_channels // g.groups) * math.prod(p.total for p in g.axis_plans[1:])
    counts = g.axis_plans[0].counts()[np.arange(q0, q1) % g.output_size[0]]
    ends = np.cumsum(counts * rest) * 12  # CSR bytes up to the end of each plane (approx.)
    chunk_of = ends // max(1, budget)
    cuts = np.flatnonzero(np.diff(chunk_of)) + 1  # first plane of each new chunk
    bounds = [q0, *(q0 + int(c) for c in cuts), q1]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _with_dtype(geometry: ConvGeometry, dtype: np.dtype) -> ConvGeometry:
    import dataclasses

    return dataclasses.replace(geometry, dtype=dtype.name)


class DistributedConvOperator(GeometryShapes):
    """A convolution distributed over the ranks of ``comm``: ``W`` as a PETSc AIJ matrix.

    ``apply`` / ``apply_transpose`` take and return whole NumPy arrays (the same on every
    rank: convenient for small problems); ``mult`` / ``mult_transpose`` work on PETSc
    ``Vec`` s (use them for large ones); ``lsqr`` solves with PETSc's ``KSPLSQR``.

    Parameters
    ----------
    weight, input_shape, **options
        As :class:`convmat.ConvOperator` (``stride``, ``padding``, ``dilation``,
        ``groups``, ``padding_mode``, ``max_bytes``).
    comm : PETSc communicator, optional
        Default ``PETSc.COMM_WORLD``.
    """

    def __init__(self, weight: Any, input_shape: Sequence[int], *, comm: Any = None,
                 **options: Any) -> None:
        _numpy_only(weight)
        max_bytes = options.pop("max_bytes", None)
        weight, geometry = _prepare(weight, input_shape, options)
        PETSc = _petsc()  # noqa: N806
        self.comm = comm if comm is not None else PETSc.COMM_WORLD
        self.geometry = geometry
        self.matrix = _assemble(PETSc, self.comm, geometry, weight, max_bytes)
        self._petsc = PETSc

    # ---------------------------------------------------------------- PETSc vectors
    def create_vecs(self) -> tuple[Any, Any]:
        """``(x, y)``: PETSc vectors laid out for an input and an output."""
        return self.matrix.createVecs()

    def mult(self, x: Any, y: Any) -> None:
        """``y = W x`` on PETSc vectors."""
        self.matrix.mult(x, y)

    def mult_transpose(self, y: Any, x: Any) -> None:
        """``x = W^T y`` on PETSc vectors."""
        self.matrix.multTranspose(y, x)

    def to_vec(self, array: Any, *, output: bool = False) -> Any:
        """A PETSc vector holding this rank's part of a whole array (input or output)."""
        x, y = self.create_vecs()
        vec = y if output else x
        start, stop = vec.getOwnershipRange()
        vec.array[:] = np.asarray(array, dtype=vec.array.dtype).reshape(-1)[start:stop]
        return vec

    def gather(self, vec: Any) -> np.ndarray:
        """The whole vector on every rank, as a NumPy array."""
        scatter, whole = self._petsc.Scatter.toAll(vec)
        scatter.scatter(vec, whole, addv=self._petsc.InsertMode.INSERT,
                        mode=self._petsc.ScatterMode.FORWARD)
        out = whole.getArray().copy()
        scatter.destroy()
        whole.destroy()
        return out

    # ---------------------------------------------------------------- NumPy arrays
    def apply(self, x: Any) -> np.ndarray:
        """``W @ x`` for a whole input array (same on every rank); returns the whole output."""
        _, out = self.create_vecs()
        self.matrix.mult(self.to_vec(x), out)
        return self.gather(out).reshape(self.output_shape)

    def apply_transpose(self, y: Any) -> np.ndarray:
        """``W.T @ y`` for a whole output array; returns the whole input-shaped array."""
        out, _ = self.create_vecs()
        self.matrix.multTranspose(self.to_vec(y, output=True), out)
        return self.gather(out).reshape(self.input_shape)

    def gather_matrix(self) -> Any:
        """The whole ``W`` as a ``scipy.sparse.csr_array`` on every rank (small problems)."""
        import scipy.sparse as sp

        PETSc = self._petsc  # noqa: N806
        rows, cols = self.shape
        every_row = PETSc.IS().createStride(rows, 0, 1, comm=PETSc.COMM_SELF)
        every_col = PETSc.IS().createStride(cols, 0, 1, comm=PETSc.COMM_SELF)
        (whole,) = self.matrix.createSubMatrices(every_row, every_col)
        indptr, indices, data = whole.getValuesCSR()
        return sp.csr_array((data.copy(), indices.copy(), indptr.copy()), shape=(rows, cols))

    # ---------------------------------------------------------------- solving
    def lsqr(self, y: Any, *, damp: float = 0.0, rtol: float = 1e-6,
             maxiter: int | None = None, x0: Any = None,
             options_prefix: str | None = None) -> DeconvolutionResult:
        """``min ||W x - y||^2 + damp^2 ||x||^2`` with PETSc's ``KSPLSQR`` across the ranks.

        ``y`` is a whole NumPy array (the same on every rank; ``x`` comes back whole on
        every rank) or a PETSc ``Vec`` laid out like ``create_vecs()[1]`` (for large
        problems: ``x`` comes back as a distributed ``Vec``). KSPLSQR has no damping
        parameter: with ``damp > 0`` it runs on the stacked shell operator ``[W; damp I]``
        with right-hand side ``[y; 0]``. ``rtol`` is KSP's relative tolerance, which
        KSPLSQR's default test applies both to the residual (a consistent system) and to
        the normal-equation residual (a least-squares solution); ``rtol=0`` runs exactly
        ``maxiter`` iterations. Returns the :class:`~convmat.DeconvolutionResult` of
        :func:`convmat.deconvolve`.

        With ``options_prefix`` (e.g. ``"deblur_"``) the KSP reads PETSc's options database
        after these settings (``KSPSetFromOptions``): ``-deblur_ksp_monitor``,
        ``-deblur_ksp_type lsmr``, ``-deblur_ksp_max_it 50`` and the like, from the command
        line or ``PETSc.Options()``, override them. The reported ``method`` is the KSP type
        that ran.
        """
        PETSc = self._petsc  # noqa: N806
        distributed = isinstance(y, PETSc.Vec)
        if distributed:
            if y.getSize() != self.shape[0]:
                raise ValueError(f"y has {y.getSize()} entries but W has {self.shape[0]} rows")
            b = y.copy()
        else:
            y = np.asarray(y)
            if y.size != self.shape[0] or not np.all(np.isfinite(y)):
                raise ValueError(
                    f"y must be finite with {self.shape[0]} entries (output shape "
                    f"{self.output_shape}), got shape {y.shape}")
            b = self.to_vec(y, output=True)
        for name, value in (("damp", damp), ("rtol", rtol)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
        n = self.shape[1]
        maxiter = maxiter if maxiter is not None else 2 * n
        if x0 is None:
            x, _ = self.create_vecs()
            x.set(0.0)
        else:
            x = x0.copy() if isinstance(x0, PETSc.Vec) else self.to_vec(x0)
        a, rhs = (self.matrix, b) if damp == 0 else self._damped(damp, b)
        ksp = PETSc.KSP().create(self.comm)
        ksp.setType(PETSc.KSP.Type.LSQR)
        ksp.getPC().setType(PETSc.PC.Type.NONE)
        ksp.setOperators(a)
        ksp.setTolerances(rtol=rtol, atol=0.0, max_it=maxiter)
        ksp.setInitialGuessNonzero(x0 is not None)
        if options_prefix is not None:
            ksp.setOptionsPrefix(options_prefix)
            ksp.setFromOptions()
        ksp.solve(rhs, x)
        reason = ksp.getConvergedReason()
        iterations = ksp.getIterationNumber()
        kind, maxiter = str(ksp.getType()), ksp.getTolerances()[3]
        ksp.destroy()
        # norms of the returned x, computed exactly: r = b - W x, W^T r - damp^2 x
        r = b.duplicate()
        self.matrix.mult(x, r)
        r.aypx(-1.0, b)
        normal = x.duplicate()
        self.matrix.multTranspose(r, normal)
        normal.axpy(-damp * damp, x)
        result_x = x if distributed else self.gather(x).reshape(self.input_shape)
        return DeconvolutionResult(
            x=result_x, method=f"petsc-ksp{kind}", iterations=iterations,
            stop_reason=_reason_words(PETSc, reason, maxiter), converged=reason > 0,
            residual_norm=float(r.norm()), normal_residual_norm=float(normal.norm()),
        )

    def _damped(self, damp: float, b: Any) -> tuple[Any, Any]:
        """The shell matrix ``[W; damp I]`` and the vector ``[b; 0]``."""
        PETSc = self._petsc  # noqa: N806
        w = self.matrix
        (m_local, m), (n_local, n) = w.getSizes()
        xv, yv = w.createVecs()

        class Stacked:
            def mult(self, mat: Any, x: Any, out: Any) -> None:
                w.mult(x, yv)
                arr = out.getArray()
                arr[:m_local] = yv.getArray()
                arr[m_local:] = damp * x.getArray()

            def multTranspose(self, mat: Any, u: Any, out: Any) -> None:  # noqa: N802
                arr = u.getArray(readonly=True)
                yv.getArray()[:] = arr[:m_local]
                w.multTranspose(yv, out)
                out.getArray()[:] += damp * arr[m_local:]

        shell = PETSc.Mat().createPython(((m_local + n_local, m + n), (n_local, n)),
                                         Stacked(), comm=self.comm)
        shell.setUp()
        stacked = shell.createVecLeft()
        arr = stacked.getArray()
        arr[:m_local] = b.getArray()
        arr[m_local:] = 0.0
        return shell, stacked


def _reason_words(PETSc: Any, reason: int, maxiter: int) -> str:  # noqa: N803
    names = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
    name = names.get(reason, str(reason))
    if name == "DIVERGED_MAX_IT" or name == "DIVERGED_ITS":
        return f"iteration limit reached (maxiter={maxiter})"
    words = {
        "CONVERGED_RTOL": "residual small: ||W x - y|| <= rtol ||y||",
        "CONVERGED_RTOL_NORMAL": "least-squares solution: normal-equation residual within "
                                 "tolerance",
        "CONVERGED_ATOL": "residual below the absolute tolerance",
        "CONVERGED_ATOL_NORMAL": "least-squares solution: normal-equation residual below "
                                 "the absolute tolerance",
        "CONVERGED_ITS": "ran the requested number of iterations",
    }
    return words.get(name, f"KSP: {name}")
