"""Deliberately naive references of the layers around convolutions (``convmat.layers``).

Plain Python loops over every output position (gather) or every input position (scatter),
in the style of the D2L chapter's ``corr2d``: no code is shared with convmat, no sparse
matrix is built. One sample ``x`` of shape ``(C, *spatial)`` goes in, one comes out.

The index formulas of PyTorch's interpolation (``aten/src/ATen/native/UpSample.h``) are
written here once more, one scalar at a time; ``floorf`` of a double is reproduced by
rounding to float32 first (``np.float32``), as C does.
"""

import itertools
import math

import numpy as np


def _positions(shape):
    return itertools.product(*[range(s) for s in shape])


# --------------------------------------------------------------------------- pooling
def pool_out_size(n, k, s, p, ceil_mode):
    """Number of pooling windows, counted one window at a time (PyTorch's rules)."""
    if k > n + 2 * p:
        return 0
    o = 0
    while True:
        start = o * s - p
        if ceil_mode:
            # a window is kept while the previous one ended before the padded end, and it
            # starts inside the input or its left padding
            ok = (o == 0 or (o - 1) * s - p + k < n + p) and start < n
        else:
            ok = start + k <= n + p
        if not ok:
            return o
        o += 1


def _windows(n, k, s, p, out):
    """Per axis, per output: (first, last+1) of the window in the padded frame."""
    return [(o * s - p, o * s - p + k) for o in range(out)]


def pool_reference(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                   divisor_override=None, average=True):
    """Average (or, with ``average=False``, sum) pooling of one sample by loops."""
    C, n = x.shape[0], x.shape[1:]
    D = len(n)
    out = [pool_out_size(n[d], kernel[d], stride[d], padding[d], ceil_mode) for d in range(D)]
    wins = [_windows(n[d], kernel[d], stride[d], padding[d], out[d]) for d in range(D)]
    y = np.zeros((C, *out), dtype=x.dtype)
    for c in range(C):
        for o in _positions(out):
            total = 0
            inside = 1
            padded = 1
            for d in range(D):
                a, b = wins[d][o[d]]
                padded *= min(b, n[d] + padding[d]) - a
                inside *= min(b, n[d]) - max(a, 0)
            ranges = []
            for d in range(D):
                a, b = wins[d][o[d]]
                ranges.append(range(max(a, 0), min(b, n[d])))
            for idx in itertools.product(*ranges):
                total += x[(c, *idx)]
            if not average:
                y[(c, *o)] = total
            elif divisor_override is not None:
                y[(c, *o)] = total / divisor_override
            else:
                y[(c, *o)] = total / (padded if count_include_pad else inside)
    return y


def pool_transpose_reference(y, input_shape, kernel, stride, padding, count_include_pad=True,
                             divisor_override=None):
    """Adjoint of average pooling: every ``y`` scattered, divided, over its window."""
    C, n = input_shape[0], input_shape[1:]
    D = len(n)
    x = np.zeros(input_shape, dtype=y.dtype)
    for c in range(C):
        for o in _positions(y.shape[1:]):
            starts = [o[d] * stride[d] - padding[d] for d in range(D)]
            padded = 1
            inside = 1
            for d in range(D):
                a, b = starts[d], starts[d] + kernel[d]
                padded *= min(b, n[d] + padding[d]) - a
                inside *= min(b, n[d]) - max(a, 0)
            div = divisor_override or (padded if count_include_pad else inside)
            for t in _positions(kernel):
                idx = [starts[d] + t[d] for d in range(D)]
                if all(0 <= idx[d] < n[d] for d in range(D)):
                    x[(c, *idx)] += y[(c, *o)] / div
    return x


def adaptive_windows(n, out):
    """Per output position: the window ``[floor(i*n/out), ceil((i+1)*n/out))``."""
    return [(math.floor(i * n / out), math.ceil((i + 1) * n / out)) for i in range(out)]


def adaptive_avg_pool_reference(x, output_size):
    """Adaptive average pooling of one sample by loops."""
    C, n = x.shape[0], x.shape[1:]
    D = len(n)
    wins = [adaptive_windows(n[d], output_size[d]) for d in range(D)]
    y = np.zeros((C, *output_size), dtype=x.dtype)
    for c in range(C):
        for o in _positions(output_size):
            ranges = [range(*wins[d][o[d]]) for d in range(D)]
            total = 0
            count = 0
            for idx in itertools.product(*ranges):
                total += x[(c, *idx)]
                count += 1
            y[(c, *o)] = total / count
    return y


def adaptive_transpose_reference(y, input_shape):
    """Adjoint of adaptive average pooling, by scattering."""
    C, n = input_shape[0], input_shape[1:]
    D = len(n)
    out = y.shape[1:]
    wins = [adaptive_windows(n[d], out[d]) for d in range(D)]
    x = np.zeros(input_shape, dtype=y.dtype)
    for c in range(C):
        for o in _positions(out):
            ranges = [range(*wins[d][o[d]]) for d in range(D)]
            count = math.prod(len(r) for r in ranges)
            for idx in itertools.product(*ranges):
                x[(c, *idx)] += y[(c, *o)] / count
    return x


# --------------------------------------------------------------------------- interpolation
def _f32(v):
    return float(np.float32(v))


def interp_taps(n, out, mode, align_corners, scale_factor, small):
    """Per output position of one axis: a list of (input index, weight), scalar by scalar.

    ``small``: PyTorch's 2-D nearest kernel for small outputs (``nearest_idx``).
    """
    taps = []
    for i in range(out):
        if mode in ("nearest", "nearest-exact"):
            if small:
                if mode == "nearest" and out == n:
                    src = i
                elif mode == "nearest" and out == 2 * n:
                    src = i // 2
                else:
                    if scale_factor is not None:
                        scale = np.float32(1.0 / scale_factor)
                    else:
                        scale = np.float32(n) / np.float32(out)
                    if mode == "nearest":
                        src = math.floor(np.float32(i) * scale)
                    else:
                        src = math.floor(_f32((i + 0.5) * float(scale)))
            else:
                scale = 1.0 / scale_factor if scale_factor is not None else n / out
                if mode == "nearest":
                    src = math.floor(_f32(scale * i))
                else:
                    real = max(scale * (i + 0.5) - 0.5, 0.0)
                    src = math.floor(_f32(real + 0.5))
            taps.append([(min(src, n - 1), 1.0)])
            continue
        if out == n:
            taps.append([(i, 1.0)])
            continue
        if align_corners:
            scale = (n - 1) / (out - 1) if out > 1 else 0.0
            real = scale * i
        else:
            scale = 1.0 / scale_factor if scale_factor is not None else n / out
            real = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(math.floor(_f32(real)), n - 1)
        lam = min(max(real - i0, 0.0), 1.0)
        i1 = i0 + 1 if i0 < n - 1 else i0
        taps.append([(i0, 1.0 - lam), (i1, lam)])
    return taps


def interpolate_reference(x, out, mode, align_corners=False, scale_factors=None):
    """``F.interpolate`` of one sample by loops: the product of the per-axis taps."""
    C, n = x.shape[0], x.shape[1:]
    D = len(n)
    scale_factors = scale_factors or [None] * D
    small = D == 2 and sum(out) <= 128
    taps = [interp_taps(n[d], out[d], mode, align_corners, scale_factors[d], small)
            for d in range(D)]
    y = np.zeros((C, *out), dtype=x.dtype)
    for c in range(C):
        for o in _positions(out):
            total = 0
            for combo in itertools.product(*[taps[d][o[d]] for d in range(D)]):
                w = 1.0
                for _, wd in combo:
                    w *= wd
                total += w * x[(c, *[i for i, _ in combo])]
            y[(c, *o)] = total
    return y


def interpolate_transpose_reference(y, input_shape, mode, align_corners=False,
                                    scale_factors=None):
    """Adjoint of interpolation: every output scattered to its sources with its weights."""
    C, n = input_shape[0], input_shape[1:]
    D = len(n)
    out = y.shape[1:]
    scale_factors = scale_factors or [None] * D
    small = D == 2 and sum(out) <= 128
    taps = [interp_taps(n[d], out[d], mode, align_corners, scale_factors[d], small)
            for d in range(D)]
    x = np.zeros(input_shape, dtype=y.dtype)
    for c in range(C):
        for o in _positions(out):
            for combo in itertools.product(*[taps[d][o[d]] for d in range(D)]):
                w = 1.0
                for _, wd in combo:
                    w *= wd
                x[(c, *[i for i, _ in combo])] += w * y[(c, *o)]
    return x


# --------------------------------------------------------------------------- permutations
def _offset_index(offsets, r):
    flat = 0
    for i in offsets:
        flat = flat * r + i
    return flat


def pixel_shuffle_reference(x, r):
    """N-d pixel shuffle by loops over the output."""
    Cin, h = x.shape[0], x.shape[1:]
    D = len(h)
    C = Cin // r**D
    y = np.zeros((C, *[s * r for s in h]), dtype=x.dtype)
    for c in range(C):
        for o in _positions(y.shape[1:]):
            hs = [v // r for v in o]
            offs = [v % r for v in o]
            y[(c, *o)] = x[(c * r**D + _offset_index(offs, r), *hs)]
    return y


def pixel_unshuffle_reference(x, r):
    """N-d pixel unshuffle by loops over the output."""
    C, n = x.shape[0], x.shape[1:]
    D = len(n)
    h = [s // r for s in n]
    y = np.zeros((C * r**D, *h), dtype=x.dtype)
    for c in range(C):
        for offs in _positions([r] * D):
            for hs in _positions(h):
                y[(c * r**D + _offset_index(offs, r), *hs)] = x[
                    (c, *[hs[d] * r + offs[d] for d in range(D)])]
    return y


def pixel_shuffle_transpose_reference(y, r):
    """Adjoint of the pixel shuffle: every output scattered back to where it came from."""
    C, big = y.shape[0], y.shape[1:]
    D = len(big)
    x = np.zeros((C * r**D, *[s // r for s in big]), dtype=y.dtype)
    for c in range(C):
        for o in _positions(big):
            x[(c * r**D + _offset_index([v % r for v in o], r), *[v // r for v in o])] += \
                y[(c, *o)]
    return x


# --------------------------------------------------------------------------- pad and crop
def pad_source(j, n, lo, hi, mode):
    """Input index output ``j`` of a padded axis reads, or None (the fill value)."""
    if mode == "circular":  # PyTorch crops first, then wraps within what is left
        a, b = max(-lo, 0), max(-hi, 0)
        m = n - a - b
        v = j - max(lo, 0)
        while v < 0:
            v += m
        while v >= m:
            v -= m
        return a + v
    u = j - lo
    if 0 <= u < n:
        return u
    if mode == "constant":
        return None
    if mode == "replicate":
        return 0 if u < 0 else n - 1
    if mode == "reflect":
        while u < 0 or u >= n:
            if u < 0:
                u = -u
            if u >= n:
                u = 2 * (n - 1) - u
        return u
    if mode == "symmetric":  # NumPy's: mirrored about the edge, the edge sample repeated
        return -u - 1 if u < 0 else 2 * n - 1 - u
    raise ValueError(mode)


def _pad_pairs(pad, D):
    pairs = [(0, 0)] * D
    for j in range(len(pad) // 2):
        pairs[D - 1 - j] = (pad[2 * j], pad[2 * j + 1])
    return pairs


def pad_reference(x, pad, mode="constant", value=0.0):
    """``F.pad`` of one sample ``(C, *spatial)`` (spatial axes only) by loops."""
    C, n = x.shape[0], x.shape[1:]
    D = len(n)
    pairs = _pad_pairs(pad, D)
    out = [n[d] + pairs[d][0] + pairs[d][1] for d in range(D)]
    y = np.zeros((C, *out), dtype=np.result_type(x, value))
    for c in range(C):
        for o in _positions(out):
            src = [pad_source(o[d], n[d], *pairs[d], mode) for d in range(D)]
            y[(c, *o)] = value if any(s is None for s in src) else x[(c, *src)]
    return y


def pad_transpose_reference(y, input_shape, pad, mode="constant"):
    """Adjoint of the padding (linear part): outputs scattered to the inputs they copy."""
    C, n = input_shape[0], input_shape[1:]
    D = len(n)
    pairs = _pad_pairs(pad, D)
    x = np.zeros(input_shape, dtype=y.dtype)
    for c in range(C):
        for o in _positions(y.shape[1:]):
            src = [pad_source(o[d], n[d], *pairs[d], mode) for d in range(D)]
            if all(s is not None for s in src):
                x[(c, *src)] += y[(c, *o)]
    return x


def crop_reference(x, start, stop):
    """``x[:, start_1:stop_1, ...]`` by loops."""
    C = x.shape[0]
    D = len(start)
    out = [stop[d] - start[d] for d in range(D)]
    y = np.zeros((C, *out), dtype=x.dtype)
    for c in range(C):
        for o in _positions(out):
            y[(c, *o)] = x[(c, *[start[d] + o[d] for d in range(D)])]
    return y


# --------------------------------------------------------------------------- channel maps
def channel_affine_reference(x, scale, shift=None):
    """``scale[c] * x[c] + shift[c]`` by loops."""
    y = np.zeros(x.shape, dtype=np.result_type(x, np.asarray(scale)))
    for c in range(x.shape[0]):
        for o in _positions(x.shape[1:]):
            y[(c, *o)] = scale[c] * x[(c, *o)] + (0 if shift is None else shift[c])
    return y


def batch_norm_reference(x, mean, var, weight, bias, eps):
    """Eval-mode batch norm, as the textbook writes it: ``(x - mean) / sqrt(var + eps)``."""
    y = np.zeros(x.shape, dtype=x.dtype)
    for c in range(x.shape[0]):
        for o in _positions(x.shape[1:]):
            y[(c, *o)] = (x[(c, *o)] - mean[c]) / math.sqrt(var[c] + eps) * weight[c] + bias[c]
    return y
