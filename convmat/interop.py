"""Out to other ecosystems: a PyTorch sparse tensor, a PyLops ``LinearOperator``.

:func:`to_torch` turns a matrix (SciPy or CuPy sparse) or an operator's matrix into a
``torch.sparse_csr_tensor`` with its index dtype kept; :func:`to_pylops` wraps an operator
as a PyLops ``LinearOperator`` with ``dims`` / ``dimsd``, applied by the operator's own
products (its fastest path), so PyLops' and PyProximal's solvers run on it.

torch and pylops are imported only when these are called; ``import convmat`` imports
neither.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .algebra import Operator
from .backend import is_cupy_sparse
from .csr import is_sparse

__all__ = ["to_pylops", "to_torch"]


def to_torch(matrix: Any, device: Any = None) -> Any:
    """A sparse matrix (or an operator's matrix) as a ``torch.sparse_csr_tensor``.

    Parameters
    ----------
    matrix : SciPy or CuPy sparse matrix, or a convmat operator
        Any sparse format (converted to CSR; a writeable CSR matrix is shared with torch,
        not copied). An operator gives a copy of its linear part's ``.matrix`` (its
        ``offset``, if any, is ``torch.as_tensor(op.offset)``).
    device : str or torch.device, optional
        Where the tensor lives; default: where the matrix is (the CPU for SciPy, the current
        CUDA device for CuPy, handed over by DLPack without a copy).

    Returns
    -------
    torch.Tensor
        ``layout=torch.sparse_csr``, the matrix's shape and dtype; ``crow_indices`` and
        ``col_indices`` int32 or int64 as the matrix's (int64 for both when they differ).

    Raises
    ------
    TypeError
        Neither a sparse matrix nor a convmat operator.
    ValueError
        A CUDA ``device`` when torch has no CUDA.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from convmat import conv_matrix
    >>> W = conv_matrix(np.ones((3, 3)), (5, 5), padding=1)
    >>> T = to_torch(W)
    >>> T.layout, T.crow_indices().dtype, T.shape
    (torch.sparse_csr, torch.int32, torch.Size([25, 25]))
    >>> x = np.arange(25.0)
    >>> bool(np.allclose((T @ torch.from_numpy(x)).numpy(), W @ x))
    True
    """
    import torch

    owned = isinstance(matrix, Operator)  # the operator's own matrix: torch gets a copy
    if owned:
        matrix = matrix.matrix
    if not is_sparse(matrix):
        raise TypeError(f"matrix must be a SciPy or CuPy sparse matrix or a convmat operator, "
                        f"got {type(matrix).__name__}")
    if device is not None and torch.device(device).type == "cuda" \
            and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: this PyTorch has no CUDA device "
                         f"(torch {torch.__version__})")
    csr = matrix.tocsr() if matrix.format != "csr" else matrix
    indptr, indices = csr.indptr, csr.indices
    if indptr.dtype != indices.dtype:
        indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    if is_cupy_sparse(csr):
        crow, col, values = (torch.from_dlpack(a.copy() if owned else a)
                             for a in (indptr, indices, csr.data))
    else:
        crow, col, values = (torch.from_numpy(a.copy() if owned or not a.flags.writeable
                                              else a)
                             for a in (indptr, indices, csr.data))
    with warnings.catch_warnings():  # torch's notice that sparse CSR is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        out = torch.sparse_csr_tensor(crow, col, values, size=tuple(int(s) for s in csr.shape),
                                      check_invariants=False)  # a valid CSR by construction
    return out if device is None else out.to(device)


def to_pylops(op: Operator) -> Any:
    """A convmat operator as a PyLops ``LinearOperator`` with ``dims`` and ``dimsd``.

    Parameters
    ----------
    op : convmat operator
        A linear operator (a :class:`~convmat.ConvOperator`, a composition, ...). Its
        products (``@`` and ``.H``, on the operator's fastest path) apply the PyLops
        operator; the matrix is not formed.

    Returns
    -------
    pylops.LinearOperator
        ``dims = op.input_shape``, ``dimsd = op.output_shape``, the operator's dtype;
        ``matvec`` is ``op @ x`` and ``rmatvec`` ``op.H @ y``.

    Raises
    ------
    TypeError
        Not a convmat operator.
    ValueError
        An affine operator: PyLops operators are linear; pass ``op.linear`` and subtract
        ``op.offset`` from the data.

    Examples
    --------
    >>> import numpy as np
    >>> from pylops.utils import dottest
    >>> from convmat import ConvOperator
    >>> op = ConvOperator(np.ones((2, 1, 3, 3)), (1, 8, 8), stride=2)
    >>> P = to_pylops(op)
    >>> P.dims, P.dimsd
    ((1, 8, 8), (2, 3, 3))
    >>> bool(dottest(P, *P.shape))
    True
    """
    import pylops

    if not isinstance(op, Operator):
        raise TypeError(f"op must be a convmat operator, got {type(op).__name__}")
    if op.offset is not None:
        raise ValueError("op is affine (it has an offset); PyLops operators are linear: pass "
                         "op.linear and subtract op.offset from the data")
    return pylops.LinearOperator(Op=op, dtype=op.dtype, shape=op.shape, dims=op.input_shape,
                                 dimsd=op.output_shape, explicit=False,
                                 name="convmat")
