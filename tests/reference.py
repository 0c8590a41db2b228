"""A deliberately naive reference, in the style of the chapter's ``corr2d`` / ``trans_conv``.

Explicit Python loops over every output position (gather) or every input position (scatter),
channel and tap; padding modes as explicit index maps. Shares no code with convmat: it is what
convmat is checked against. The scatter reference (``trans_conv_*``) is written as its own loop,
not as the transpose of the gather reference, so that ``W.T`` is checked against something
that could disagree with it.

The checks at the end (``assert_canonical_csr``, ``assert_close``) recompute what they check
from the raw arrays with NumPy; they never read a flag or a bound that convmat sets itself.
"""

import itertools

import numpy as np


def pad_index(u, n, mode):
    """Input index that padded position ``u`` (in input coordinates) reads, or None."""
    if 0 <= u < n:
        return u
    if mode == "zeros":
        return None
    if mode == "replicate":
        return 0 if u < 0 else n - 1
    if mode == "circular":
        while u < 0:
            u += n
        while u >= n:
            u -= n
        return u
    if mode == "reflect":  # mirror about the edge samples, which are not repeated
        while u < 0 or u >= n:
            if u < 0:
                u = -u
            if u >= n:
                u = 2 * (n - 1) - u
        return u
    if mode == "symmetric":  # mirror about the edges, the edge samples repeated
        while u < 0 or u >= n:
            if u < 0:
                u = -u - 1
            if u >= n:
                u = 2 * n - 1 - u
        return u
    raise ValueError(mode)


def tap_source(p, t, stride, dilation, padding, sizes, mode):
    """Input multi-index that output ``p`` reads through tap ``t``, or None (dropped)."""
    idx = []
    for d in range(len(sizes)):
        u = stride[d] * p[d] + dilation[d] * t[d] - padding[d][0]
        q = pad_index(u, sizes[d], mode)
        if q is None:
            return None
        idx.append(q)
    return tuple(idx)


def _out_size(n, k, s, d, lo, hi):
    size = 0
    while s * size + d * (k - 1) <= n + lo + hi - 1:
        size += 1
    return size


def _ravel(idx, shape):
    flat = 0
    for i, n in zip(idx, shape, strict=True):
        flat = flat * n + i
    return flat


def conv_entries(w, input_shape, stride, padding, dilation, groups, mode, output_size=None):
    """The entries of W, gathered output by output (like ``corr2d``).

    ``w`` is ``(C_out, C_in/G, *k)``, ``input_shape`` ``(C_in, *n)``, ``padding`` a list of
    ``(lo, hi)`` pairs; ``output_size`` truncates the output (transposed conv). Returns
    ``({(row, col): value}, (rows, cols), output_shape)``: every (row, col) a tap reaches is
    a key, its value the sum of the taps folded there (zero when the weights sum to zero).
    """
    c_out, cin_g = w.shape[:2]
    k = w.shape[2:]
    c_in, n = input_shape[0], input_shape[1:]
    D = len(n)
    out = [_out_size(n[d], k[d], stride[d], dilation[d], *padding[d]) for d in range(D)]
    if output_size is not None:
        out = list(output_size)
    cout_g = c_out // groups
    entries = {}
    row = 0
    for co in range(c_out):
        g = co // cout_g
        for p in itertools.product(*[range(o) for o in out]):
            for cl in range(cin_g):
                ci = g * cin_g + cl
                for t in itertools.product(*[range(kk) for kk in k]):
                    idx = tap_source(p, t, stride, dilation, padding, n, mode)
                    if idx is not None:
                        col = ci
                        for d in range(D):
                            col = col * n[d] + idx[d]
                        entries[row, col] = entries.get((row, col), 0) + w[(co, cl) + t]
            row += 1
    shape = (c_out * int(np.prod(out)), c_in * int(np.prod(n)))
    return entries, shape, (c_out, *out)


def dense(entries, shape, dtype):
    """The dense matrix of ``entries``."""
    M = np.zeros(shape, dtype=dtype)
    for (r, c), v in entries.items():
        M[r, c] = v
    return M


def csr_arrays(entries, shape, dtype):
    """``(data, indices, indptr)`` of ``entries``: rows in order, columns ascending."""
    keys = sorted(entries)
    data = np.array([entries[key] for key in keys], dtype=dtype)
    indices = np.array([c for _, c in keys], dtype=np.int64)
    counts = np.bincount(np.array([r for r, _ in keys], dtype=np.int64), minlength=shape[0])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return data, indices, indptr


def conv_matrix_reference(w, input_shape, stride, padding, dilation, groups, mode,
                          output_size=None):
    """Dense W of the convolution, written entry by entry (gather, like ``corr2d``).

    Returns ``(W, output_shape)``; see :func:`conv_entries`.
    """
    entries, shape, out_shape = conv_entries(w, input_shape, stride, padding, dilation, groups,
                                             mode, output_size)
    return dense(entries, shape, w.dtype), out_shape


def conv_reference(x, w, stride, padding, dilation, groups, mode):
    """``y = conv(x)`` for one sample ``x`` of shape ``(C_in, *n)``, by loops."""
    c_out, cin_g = w.shape[:2]
    k = w.shape[2:]
    n = x.shape[1:]
    D = len(n)
    out = [_out_size(n[d], k[d], stride[d], dilation[d], *padding[d]) for d in range(D)]
    cout_g = c_out // groups
    y = np.zeros((c_out, *out), dtype=np.result_type(x, w))
    for co in range(c_out):
        g = co // cout_g
        for p in itertools.product(*[range(o) for o in out]):
            acc = 0
            for cl in range(cin_g):
                for t in itertools.product(*[range(kk) for kk in k]):
                    idx = tap_source(p, t, stride, dilation, padding, n, mode)
                    if idx is not None:
                        acc += w[(co, cl) + t] * x[(g * cin_g + cl, *idx)]
            y[(co, *p)] = acc
    return y


def trans_conv_size(m, k, stride, padding, dilation, output_padding):
    """Spatial output size of a transposed convolution (PyTorch's formula), per axis."""
    return [
        (m[d] - 1) * stride[d] - padding[d][0] - padding[d][1] + dilation[d] * (k[d] - 1)
        + output_padding[d] + 1
        for d in range(len(m))
    ]


def _fold(u, size, mode):
    """Where a value scattered to padded output position ``u`` lands (None: dropped)."""
    if 0 <= u < size:
        return u
    if mode == "zeros":
        return None
    if mode == "replicate":  # the padded copies of an edge sample came from that sample
        return 0 if u < 0 else size - 1
    if mode == "circular":  # the copy at u came from u mod size
        return u % size
    if mode == "symmetric":  # the copy at -1-j came from j, the copy at size+j from size-1-j
        return -u - 1 if u < 0 else 2 * size - 1 - u
    if mode == "reflect":  # the copy at -j came from j, the copy at size-1+j from size-1-j
        return -u if u < 0 else 2 * (size - 1) - u
    raise ValueError(mode)


def trans_conv_reference(y, w, stride, padding, dilation, groups, mode, output_padding=None,
                         output_size=None):
    """Transposed convolution of one sample ``y`` ``(C_in, *m)`` by scattering (``trans_conv``).

    ``w`` is ``(C_in, C_out/G, *k)``. As the chapter's ``trans_conv``: every input value
    ``y[ci, p]`` is multiplied by the whole kernel and added into the (padded) output at
    ``stride*p + dilation*t - lo``; the padding is then folded back onto the samples it was
    copied from (``mode``), or dropped (``zeros``). The output size is ``output_size`` or,
    from ``output_padding``, PyTorch's formula.
    """
    c_in, cout_g = w.shape[:2]
    k = w.shape[2:]
    m = y.shape[1:]
    D = len(m)
    out = (list(output_size) if output_size is not None else
           trans_conv_size(m, k, stride, padding, dilation, output_padding))
    cin_per_group = c_in // groups
    Y = np.zeros((cout_g * groups, *out), dtype=np.result_type(y, w))
    for ci in range(c_in):
        g = ci // cin_per_group
        for p in itertools.product(*[range(mm) for mm in m]):
            for cl in range(cout_g):
                for t in itertools.product(*[range(kk) for kk in k]):
                    target = []
                    for d in range(D):
                        u = stride[d] * p[d] + dilation[d] * t[d] - padding[d][0]
                        target.append(_fold(u, out[d], mode))
                    if None not in target:
                        Y[(g * cout_g + cl, *target)] += y[(ci, *p)] * w[(ci, cl) + t]
    return Y


def trans_conv_entries(w, input_shape, stride, padding, dilation, groups, mode,
                       output_padding=None, output_size=None):
    """The entries of the transposed convolution's matrix, by the same scatter loop.

    Column ``(ci, p)`` (one input value of the transposed conv) receives ``w[ci, cl, t]`` at
    the output it is scattered to: ``trans_conv_reference`` with ``Y[...] += K[...]`` for
    ``Y[...] += X[...] * K[...]``. Returns ``(entries, (rows, cols), output_shape)`` as
    :func:`conv_entries`.
    """
    c_in, cout_g = w.shape[:2]
    k = w.shape[2:]
    m = input_shape[1:]
    D = len(m)
    out = (list(output_size) if output_size is not None else
           trans_conv_size(m, k, stride, padding, dilation, output_padding))
    out_shape = (cout_g * groups, *out)
    cin_per_group = c_in // groups
    entries = {}
    for ci in range(c_in):
        g = ci // cin_per_group
        for p in itertools.product(*[range(mm) for mm in m]):
            col = _ravel((ci, *p), (c_in, *m))
            for cl in range(cout_g):
                for t in itertools.product(*[range(kk) for kk in k]):
                    target = []
                    for d in range(D):
                        u = stride[d] * p[d] + dilation[d] * t[d] - padding[d][0]
                        target.append(_fold(u, out[d], mode))
                    if None not in target:
                        row = _ravel((g * cout_g + cl, *target), out_shape)
                        entries[row, col] = entries.get((row, col), 0) + w[(ci, cl) + t]
    return entries, (int(np.prod(out_shape)), c_in * int(np.prod(m))), out_shape


# --------------------------------------------------------------------------- checks


def assert_canonical_csr(W):
    """``W`` is a well-formed canonical CSR, recomputed from its arrays.

    ``indptr`` starts at 0, is non-decreasing and ends at ``nnz``; every column index is in
    range; within each row the column indices strictly increase (sorted, no duplicates).
    SciPy's ``check_format(full_check=True)`` accepts unsorted and duplicate indices, and
    ``has_canonical_format`` is a flag the builder sets itself: neither proves this.
    """
    assert W.format == "csr"
    rows, cols = W.shape
    indptr = np.asarray(W.indptr).astype(np.int64)
    indices = np.asarray(W.indices).astype(np.int64)
    nnz = indices.size
    assert np.asarray(W.data).shape == (nnz,)
    assert indptr.shape == (rows + 1,)
    assert indptr[0] == 0 and indptr[-1] == nnz
    assert np.all(np.diff(indptr) >= 0), "indptr decreases"
    if nnz == 0:
        return
    assert indices.min() >= 0 and indices.max() < cols, "column index out of range"
    first = np.zeros(nnz, dtype=bool)  # entries that start a row
    first[indptr[:-1][indptr[:-1] < nnz]] = True
    ok = (np.diff(indices) > 0) | first[1:]
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"column indices not strictly increasing within a row at entries {bad[:5] + 1} "
        f"(rows {np.searchsorted(indptr, bad[:5] + 1, side='right') - 1})"
    )


def eps(dtype):
    """Machine epsilon of ``dtype`` (of its real part for complex dtypes)."""
    return float(np.finfo(np.dtype(dtype)).eps)


def gamma(n, dtype):
    """``n u / (1 - n u)``, ``u = eps/2``: the relative error bound of an ``n``-term dot product.

    A sum of ``n`` products computed in floating point differs from the exact one by at
    most ``gamma(n) * sum |a_i| |b_i|`` (Higham, *Accuracy and Stability*, 3.1); a complex
    product adds ``2`` to ``n``.
    """
    nu = n * eps(dtype) / 2
    assert nu < 0.5
    return nu / (1 - nu)


def assert_close(got, ref, scale, terms, dtype, exact=False):
    """``|got - ref| <= 2 gamma(terms + 2) * scale`` elementwise (both sides rounded).

    ``scale`` is ``sum |w| |x|`` of each output, computed independently in float64;
    ``terms`` the most products one output sums. ``exact``: integer-valued data, whose
    sums are exact in any dtype, so equality is required.
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if exact:
        np.testing.assert_array_equal(got, ref)
        return
    bound = 2 * gamma(terms + 2, dtype) * np.asarray(scale, dtype=np.float64)
    err = np.abs(got.astype(np.complex128) - ref.astype(np.complex128))
    bad = err > bound
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} entries off by more than 2*gamma({terms + 2})*scale "
        f"for {np.dtype(dtype).name}: worst error {err[bad].max():.3g} vs bound "
        f"{bound[bad][np.argmax(err[bad])]:.3g}"
    )


def assert_matrix_equals(W, entries, shape):
    """``W`` (a SciPy CSR on the host) is canonical and holds exactly ``entries``.

    Same shape, same values (compared densely when small, for a readable failure), and the
    same stored pattern: every (row, col) a tap reaches is stored, explicit zeros included
    (the pattern depends on the geometry only), and nothing else.
    """
    assert W.shape == tuple(shape), (W.shape, shape)
    assert_canonical_csr(W)
    if shape[0] * shape[1] <= 1_000_000:
        np.testing.assert_array_equal(W.toarray(), dense(entries, shape, W.dtype))
    data, indices, indptr = csr_arrays(entries, shape, W.dtype)
    np.testing.assert_array_equal(np.asarray(W.indptr), indptr, err_msg="row lengths differ")
    np.testing.assert_array_equal(np.asarray(W.indices), indices, err_msg="patterns differ")
    np.testing.assert_array_equal(np.asarray(W.data), data, err_msg="values differ")


# --------------------------------------------------------------------------- drawn cases
# ``case`` is a ``strategies.Case``: shapes with channel axes (``case.full``), resolved
# ``case.pads`` and ``case.out_size``, all computed without convmat.


def case_entries(case, w):
    """``(entries, (rows, cols), output_shape)`` of the matrix convmat builds for ``case``."""
    fw = case.full(w)
    if case.transposed:
        return trans_conv_entries(fw, case.full_input_shape, case.stride, case.pads,
                                  case.dilation, case.groups, case.mode,
                                  output_size=case.out_size)
    return conv_entries(fw, case.full_input_shape, case.stride, case.pads, case.dilation,
                        case.groups, case.mode)


def case_apply(case, w, x):
    """The operator of ``case`` applied to one sample ``x`` (shape with channel axis)."""
    fw = case.full(w)
    if case.transposed:
        return trans_conv_reference(x, fw, case.stride, case.pads, case.dilation, case.groups,
                                    case.mode, output_size=case.out_size)
    return conv_reference(x, fw, case.stride, case.pads, case.dilation, case.groups, case.mode)


def case_adjoint(case, w, y):
    """The transpose of the operator of ``case`` applied to one output sample ``y``.

    A convolution's transpose is the scatter (``trans_conv_reference``) onto the input size;
    a transposed convolution's is the gather (``conv_reference``), cut to its input size
    when ``output_padding >= stride`` made the convolution's natural output longer.
    """
    fw = case.full(w)
    if case.transposed:
        full = conv_reference(y, fw, case.stride, case.pads, case.dilation, case.groups,
                              case.mode)
        m = case.full_input_shape[1:]
        return full[(slice(None), *(slice(0, mm) for mm in m))]
    return trans_conv_reference(y, fw, case.stride, case.pads, case.dilation, case.groups,
                                case.mode, output_size=case.full_input_shape[1:])


def assert_affine_matches(A, x, ref, rtol):
    """An affine operator against a reference batch: shapes, ``A(x)`` for the batch and one
    sample, and ``A.matrix @ x + offset`` (``x`` a batch, ``ref`` its reference output)."""
    scale = np.abs(ref).max() + 1.0
    assert A.output_shape == ref.shape[1:]
    np.testing.assert_allclose(A(x), ref, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(A(x[-1]), ref[-1], rtol=rtol, atol=rtol * scale)
    flat = A.matrix @ x[-1].ravel()
    if A.offset is not None:
        flat = flat + A.offset.ravel()
    np.testing.assert_allclose(flat, ref[-1].ravel(), rtol=rtol, atol=rtol * scale)
