"""A deliberately naive reference, in the style of the chapter's ``corr2d`` / ``trans_conv``.

Explicit Python loops over every output position, channel and tap; padding modes as
explicit index maps. Shares no code with convmat: it is what convmat is checked against.
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


def conv_matrix_reference(w, input_shape, stride, padding, dilation, groups, mode,
                          output_size=None):
    """Dense W of the convolution, written entry by entry (gather, like ``corr2d``).

    ``w`` is ``(C_out, C_in/G, *k)``, ``input_shape`` ``(C_in, *n)``, ``padding`` a list of
    ``(lo, hi)`` pairs; ``output_size`` truncates the output (transposed conv).
    """
    c_out, cin_g = w.shape[:2]
    k = w.shape[2:]
    c_in, n = input_shape[0], input_shape[1:]
    D = len(n)
    out = [_out_size(n[d], k[d], stride[d], dilation[d], *padding[d]) for d in range(D)]
    if output_size is not None:
        out = list(output_size)
    cout_g = c_out // groups
    W = np.zeros((c_out * int(np.prod(out)), c_in * int(np.prod(n))), dtype=w.dtype)
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
                        W[row, col] += w[(co, cl) + t]
            row += 1
    return W, (c_out, *out)


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


def trans_conv_reference(y, w, stride, padding, dilation, groups, mode, output_padding):
    """Transposed convolution of one sample ``y`` ``(C_in, *m)`` by scattering (``trans_conv``).

    ``w`` is ``(C_in, C_out/G, *k)``; every input value is broadcast through the kernel
    into the padded output, whose padding is then folded back (``mode``) or dropped.
    """
    c_in, cout_g = w.shape[:2]
    k = w.shape[2:]
    m = y.shape[1:]
    D = len(m)
    out = [
        (m[d] - 1) * stride[d] - padding[d][0] - padding[d][1] + dilation[d] * (k[d] - 1)
        + output_padding[d] + 1
        for d in range(D)
    ]
    cin_per_group = c_in // groups
    Y = np.zeros((cout_g * groups, *out), dtype=np.result_type(y, w))
    for ci in range(c_in):
        g = ci // cin_per_group
        for p in itertools.product(*[range(mm) for mm in m]):
            for cl in range(cout_g):
                for t in itertools.product(*[range(kk) for kk in k]):
                    # scatter: input p spreads to output stride*p + dilation*t - lo
                    idx = tap_source(p, t, stride, dilation, padding, out, mode)
                    if idx is not None:
                        Y[(g * cout_g + cl, *idx)] += y[(ci, *p)] * w[(ci, cl) + t]
    return Y
