"""ONNX graphs in: the exact affine operator of a graph of linear nodes.

:func:`from_onnx` walks an ONNX graph (a ``ModelProto`` or a file) node by node, from its
one input to its one output, and composes each node's operator: ``A(x)`` equals the graph's
output for one sample or a batch. The batch axis (the first of the graph's input) is never
mixed: every node maps one sample ``input_shape`` (the input's shape without its first
axis).

Each node kind is one entry of :data:`NODES`. The pooling and resizing nodes are separable:
one sparse factor per axis of the sample, put together by :func:`convmat.kron_matrix`, with
the formulas of the ONNX operator specification in each factor's docstring.

onnx is imported only when :func:`from_onnx` is called; ``import convmat`` never imports it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .algebra import MatrixOperator, Operator
from .layers import batch_norm_operator, channel_affine_operator, pad_operator
from .modules import Value
from .operator import ConvOperator
from .separable import kron_matrix

__all__ = ["NODES", "average_pool_factor", "from_onnx", "resize_factor"]

#: ONNX tensor element types convmat maps (TensorProto.FLOAT, DOUBLE).
_ELEM_TYPES: dict[int, np.dtype] = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}


class Node:
    """One ONNX node with its attributes, and what its inputs are in the walk so far."""

    def __init__(self, proto: Any, values: dict[str, Value], consts: dict[str, np.ndarray],
                 dtype: np.dtype, batch: int | None) -> None:
        from onnx import helper

        self.batch = batch  # the graph input's batch size, None where symbolic
        self.proto = proto
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        self.values = values
        self.consts = consts
        self.dtype = dtype

    def __str__(self) -> str:
        p = self.proto
        return f"node {p.name!r} ({p.op_type}, inputs {list(p.input)})"

    def error(self, message: str) -> ValueError:
        """A ValueError that names the node, its op type and inputs."""
        return ValueError(f"{self}: {message}")

    def value(self, i: int = 0) -> Value:
        """Input ``i``, which must be a value of the network (not a constant)."""
        name = self.proto.input[i]
        if name not in self.values:
            raise self.error(f"input {i} ({name!r}) must come from the graph's input, but "
                             "it is a constant")
        return self.values[name]

    def const(self, i: int, default: Any = None) -> Any:
        """Input ``i``, which must be a constant (initializer or Constant node), or default."""
        if i >= len(self.proto.input) or not self.proto.input[i]:
            return default
        name = self.proto.input[i]
        if name not in self.consts:
            raise self.error(f"input {i} ({name!r}) must be a constant (an initializer or a "
                             "Constant node), but it depends on the graph's input")
        return self.consts[name]

    def ints(self, name: str, default: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(v) for v in self.attrs.get(name, default))

    def string(self, name: str, default: str) -> str:
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- per-axis rules
def same_pads(n: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """``auto_pad`` SAME: the output is ``ceil(n / stride)``, the extra pad at the end (UPPER).

    ``total = max(0, (ceil(n/s) - 1)*s + d*(k - 1) + 1 - n)``; SAME_UPPER puts
    ``total // 2`` first, SAME_LOWER ``total - total // 2``.
    """
    out = -(-n // stride)
    total = max(0, (out - 1) * stride + dilation * (k - 1) + 1 - n)
    lo = total // 2 if upper else total - total // 2
    return lo, total - lo


def average_pool_factor(n: int, k: int, stride: int, dilation: int, lo: int, hi: int,
                        ceil_mode: bool, count_include_pad: bool) -> sp.csr_array:
    """One axis of ``AveragePool``: ``(out, n)``, each row the window's weights.

    With ``span = d*(k - 1) + 1``, ``out = floor((n + lo + hi - span) / s) + 1`` (``ceil``
    with ``ceil_mode``, less one when the last window starts past ``n + lo``). Window ``j``
    reads padded positions ``p = j*s + t*d`` (``t < k``) below ``n + lo + hi``; its divisor is
    their number with ``count_include_pad``, else the number inside the input
    (``lo <= p < lo + n``). The N-d divisor is the product of the axes' (the window is a box).

    Examples
    --------
    >>> average_pool_factor(4, 2, 2, 1, 1, 1, False, True).toarray()
    array([[0.5, 0. , 0. , 0. ],
           [0. , 0.5, 0.5, 0. ],
           [0. , 0. , 0. , 0.5]])
    """
    span = dilation * (k - 1) + 1
    size = (n + lo + hi - span) / stride + 1
    out = math.ceil(size) if ceil_mode else math.floor(size)
    if ceil_mode and (out - 1) * stride >= n + lo:
        out -= 1
    if out < 1:
        raise ValueError(f"the window spans {span} > padded input {n + lo + hi}; the output "
                         "would be empty")
    p = np.arange(out)[:, None] * stride + np.arange(k)[None, :] * dilation
    inside = (p >= lo) & (p < lo + n)
    counted = p < n + lo + hi if count_include_pad else inside
    divisor = counted.sum(axis=1, keepdims=True)
    weights = np.where(inside, 1.0 / np.maximum(divisor, 1), 0.0)
    rows = np.broadcast_to(np.arange(out)[:, None], p.shape)
    return sp.csr_array((weights[inside], (rows[inside], p[inside] - lo)), shape=(out, n))


#: ``coordinate_transformation_mode`` -> source coordinate of output ``y`` (float64).
_COORDINATES: dict[str, Callable[[np.ndarray, float, int, float, int], np.ndarray]] = {
    "half_pixel": lambda y, s, n, w, wi: (y + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda y, s, n, w, wi: (
        np.full(wi, -0.5) if wi == 1 else (y + 0.5) / s - 0.5),
    "align_corners": lambda y, s, n, w, wi: (
        np.zeros(wi) if wi == 1 else y * (n - 1) / (wi - 1)),
    "asymmetric": lambda y, s, n, w, wi: y / s,
    "half_pixel_symmetric": lambda y, s, n, w, wi: (
        n / 2 * (1 - wi / w) + (y + 0.5) / s - 0.5),
}

#: ``nearest_mode`` -> whether a fractional part ``r`` rounds up.
_NEAREST: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": lambda r: r > 0.5,
    "round_prefer_ceil": lambda r: r >= 0.5,
    "floor": lambda r: np.zeros(r.shape, dtype=bool),
    "ceil": lambda r: r > 0,
}


def resize_factor(n: int, out: int, scale: float, mode: str, coordinates: str,
                  nearest_mode: str) -> sp.csr_array:
    """One axis of ``Resize`` (no antialiasing): ``(out, n)``.

    The source coordinate ``x`` of output ``y`` follows ``coordinate_transformation_mode``
    (``w = scale * n``, ``wi = out`` the resized length): ``half_pixel``
    ``(y + 0.5)/scale - 0.5``; ``pytorch_half_pixel`` the same, or ``-0.5`` when ``wi == 1``;
    ``align_corners`` ``y (n - 1)/(wi - 1)``, or 0 when ``wi == 1``; ``asymmetric``
    ``y / scale``; ``half_pixel_symmetric`` ``n/2 (1 - wi/w) + (y + 0.5)/scale - 0.5``. (The
    specification's ``length_resized`` is the integer ``wi``, as onnxruntime and PyTorch read
    it; ``onnx.reference`` uses ``w``, which differs when ``scale * n`` is not an integer.) With
    ``x0 = floor(x)`` and ``r = x - x0``, every index clamped to ``[0, n - 1]``:

    * ``nearest``: ``x0``, or ``x0 + 1`` when ``nearest_mode`` rounds ``r`` up;
    * ``linear``: ``1 - r`` on ``x0`` and ``r`` on ``x0 + 1``.

    Examples
    --------
    >>> resize_factor(2, 4, 2.0, "linear", "half_pixel", "floor").toarray()
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]])
    """
    y = np.arange(out, dtype=np.float64)
    x = _COORDINATES[coordinates](y, scale, n, scale * n, out)
    x0 = np.floor(x)
    r = x - x0
    x0 = x0.astype(np.int64)
    rows = np.arange(out)
    if mode == "nearest":
        cols = np.clip(x0 + _NEAREST[nearest_mode](r), 0, n - 1)
        return sp.csr_array((np.ones(out), (rows, cols)), shape=(out, n))
    cols = np.clip(np.stack([x0, x0 + 1], axis=1), 0, n - 1)
    weights = np.stack([1 - r, r], axis=1)
    m = sp.coo_array((weights.ravel(), (np.repeat(rows, 2), cols.ravel())), shape=(out, n))
    return sp.csr_array(m)  # duplicates (clamped indices) summed


# --------------------------------------------------------------------------- nodes
def _padding(node: Node, nd: int, kernel: Sequence[int], strides: Sequence[int],
             dilations: Sequence[int], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` per spatial axis from ``auto_pad`` and ``pads`` (Conv, AveragePool)."""
    auto = node.string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return tuple(same_pads(n, k, s, d, auto == "SAME_UPPER") for n, k, s, d in zip(
            shape[1:], kernel, strides, dilations, strict=True))
    if auto == "VALID":
        return ((0, 0),) * nd
    if auto != "NOTSET":
        raise node.error(f"auto_pad={auto!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, "
                         "VALID")
    pads = node.ints("pads", (0,) * (2 * nd))
    if len(pads) != 2 * nd:
        raise node.error(f"pads={pads} needs {2 * nd} values (begin, then end, per axis)")
    return tuple((pads[i], pads[nd + i]) for i in range(nd))


def _conv_inputs(node: Node) -> tuple[Value, np.ndarray, Any, int]:
    x = node.value(0)
    w = node.const(1)
    if w is None:
        raise node.error("the weight (input 1) is missing")
    nd = w.ndim - 2
    if len(x.shape) != nd + 1:
        raise node.error(f"a {nd}-d kernel {w.shape} needs samples (C, {nd} spatial axes), "
                         f"but the input has shape {x.shape}")
    kernel = node.ints("kernel_shape", w.shape[2:])
    if kernel != tuple(w.shape[2:]):
        raise node.error(f"kernel_shape={kernel} differs from the weight's {w.shape[2:]}")
    bias = node.const(2)
    return x, w.astype(node.dtype), None if bias is None else bias.astype(node.dtype), nd


def _conv(node: Node) -> Operator:
    x, w, bias, nd = _conv_inputs(node)
    strides, dilations = node.ints("strides", (1,) * nd), node.ints("dilations", (1,) * nd)
    padding = _padding(node, nd, w.shape[2:], strides, dilations, x.shape)
    return x.then(ConvOperator(w, x.shape, stride=strides, padding=padding,
                               dilation=dilations, groups=int(node.attrs.get("group", 1)),
                               bias=bias))


def _conv_transpose(node: Node) -> Operator:
    x, w, bias, nd = _conv_inputs(node)
    strides, dilations = node.ints("strides", (1,) * nd), node.ints("dilations", (1,) * nd)
    output_padding = node.ints("output_padding", (0,) * nd)
    auto = node.string("auto_pad", "NOTSET")
    target = node.ints("output_shape", ())
    if not target and auto not in ("SAME_UPPER", "SAME_LOWER"):  # output_shape wins over pads
        padding = _padding(node, nd, w.shape[2:], strides, dilations, x.shape)
    else:  # pads from the output shape (n * stride for SAME without output_shape)
        if not target:
            target = tuple(n * s for n, s in zip(x.shape[1:], strides, strict=True))
        target = target[-nd:]
        pairs: list[tuple[int, int]] = []
        for n, k, s, d, extra, t in zip(x.shape[1:], w.shape[2:], strides, dilations,
                                        output_padding, target, strict=True):
            total = s * (n - 1) + extra + d * (k - 1) + 1 - t
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pairs.append((lo, total - lo))
        padding = tuple(pairs)
    grow = [(max(-lo, 0), max(-hi, 0)) for lo, hi in padding]  # an output past the full one
    op: Operator = ConvOperator.transposed(
        w, x.shape, stride=strides, padding=tuple((max(lo, 0), max(hi, 0))
                                                  for lo, hi in padding),
        output_padding=output_padding, dilation=dilations,
        groups=int(node.attrs.get("group", 1)), bias=None if any(map(any, grow)) else bias)
    if any(map(any, grow)):  # zeros around the full output, then the bias everywhere
        op = pad_operator(op.output_shape, tuple(p for g in reversed(grow) for p in g),
                          dtype=node.dtype) @ op
        if bias is not None:
            op = channel_affine_operator(op.output_shape, np.ones(len(bias)), bias,
                                         dtype=node.dtype) @ op
    return x.then(op)


def _separable(x: Value, factors: list[Any], dtype: np.dtype, out: tuple[int, ...],
               name: str) -> Operator:
    matrix = kron_matrix(factors, dtype=dtype)
    return x.then(MatrixOperator(matrix, x.shape, out, name=name))


def _average_pool(node: Node) -> Operator:
    x = node.value(0)
    nd = len(x.shape) - 1
    if node.proto.op_type == "GlobalAveragePool":
        kernel, strides, dilations = x.shape[1:], (1,) * nd, (1,) * nd
        padding, ceil_mode, include = ((0, 0),) * nd, False, False
    else:
        kernel = node.ints("kernel_shape", ())
        if len(kernel) != nd:
            raise node.error(f"kernel_shape={kernel} needs {nd} values for samples of shape "
                             f"{x.shape}")
        strides, dilations = node.ints("strides", (1,) * nd), node.ints("dilations", (1,) * nd)
        padding = _padding(node, nd, kernel, strides, dilations, x.shape)
        ceil_mode = bool(node.attrs.get("ceil_mode", 0))
        include = bool(node.attrs.get("count_include_pad", 0))
    try:
        factors = [average_pool_factor(n, k, s, d, lo, hi, ceil_mode, include)
                   for n, k, s, d, (lo, hi) in zip(x.shape[1:], kernel, strides, dilations,
                                                   padding, strict=True)]
    except ValueError as exc:
        raise node.error(str(exc)) from exc
    factors.insert(0, sp.eye_array(x.shape[0], format="csr"))
    out = tuple(f.shape[0] for f in factors)
    return _separable(x, factors, node.dtype, out, node.proto.op_type)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


def _pad(node: Node) -> Operator:
    x = node.value(0)
    rank = len(x.shape) + 1
    pads = node.const(1)
    pads = node.ints("pads", ()) if pads is None else tuple(int(p) for p in pads)
    value = node.const(2, node.attrs.get("value", 0.0))
    value = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    axes = node.const(3)
    axes = range(rank) if axes is None else [int(a) % rank for a in axes]
    axes = list(axes)
    if len(pads) != 2 * len(axes):
        raise node.error(f"pads has {len(pads)} values for {len(axes)} axes")
    full = [(0, 0)] * rank
    for i, a in enumerate(axes):
        full[a] = (pads[i], pads[len(axes) + i])
    if full[0] != (0, 0) or full[1] != (0, 0):
        raise node.error(f"pads {full[0]} on the batch axis and {full[1]} on the channel axis:"
                         " convmat pads the spatial axes only")
    mode = node.string("mode", "constant")
    if mode not in _PAD_MODES:
        raise node.error(f"mode={mode!r} is not one of {', '.join(_PAD_MODES)}")
    torch_order = tuple(p for lo_hi in reversed(full[2:]) for p in lo_hi)
    return x.then(pad_operator(x.shape, torch_order, _PAD_MODES[mode],
                               value if mode == "constant" else 0.0, dtype=node.dtype))


def _resize(node: Node) -> Operator:
    x = node.value(0)
    rank = len(x.shape) + 1
    mode = node.string("mode", "nearest")
    coordinates = node.string("coordinate_transformation_mode", "half_pixel")
    nearest_mode = node.string("nearest_mode", "round_prefer_floor")
    for name, value, allowed in (("mode", mode, ("nearest", "linear")),
                                 ("coordinate_transformation_mode", coordinates,
                                  tuple(_COORDINATES)),
                                 ("nearest_mode", nearest_mode, tuple(_NEAREST)),
                                 ("keep_aspect_ratio_policy",
                                  node.string("keep_aspect_ratio_policy", "stretch"),
                                  ("stretch",))):
        if value not in allowed:
            raise node.error(f"{name}={value!r} is not supported (supported: "
                             f"{', '.join(allowed)})")
    if node.attrs.get("antialias", 0):
        raise node.error("antialias=1 is not supported")
    axes = node.attrs.get("axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    full = (node.batch or 1, *x.shape)
    scales_in, sizes_in = node.const(2), node.const(3)
    scales, sizes = [1.0] * rank, list(full)
    if sizes_in is not None and np.size(sizes_in):
        for a, s in zip(axes, sizes_in, strict=True):
            sizes[a] = int(s)
            scales[a] = int(s) / full[a]
    elif scales_in is not None and np.size(scales_in):
        for a, s in zip(axes, scales_in, strict=True):
            scales[a] = float(s)
            sizes[a] = math.floor(full[a] * float(s))
    else:
        raise node.error("neither scales (input 2) nor sizes (input 3) is given")
    if sizes_in is not None and np.size(sizes_in) and 0 in axes:
        if sizes[0] != (node.batch or 1):  # the batch size itself (1 where symbolic, as Shape)
            raise node.error(f"sizes[0]={sizes[0]} resizes the batch axis (of size "
                             f"{node.batch or 'unknown'}): not supported; give axes")
    elif scales[0] != 1:
        raise node.error(f"resizing the batch axis (scale {scales[0]}) is not supported")
    factors = [resize_factor(n, out, scale, mode, coordinates, nearest_mode)
               for n, out, scale in zip(full[1:], sizes[1:], scales[1:], strict=True)]
    return _separable(x, factors, node.dtype, tuple(sizes[1:]), "Resize")


def _batch_norm(node: Node) -> Operator:
    x = node.value(0)
    if node.attrs.get("training_mode", 0):
        raise node.error("training_mode=1 normalises by each batch's statistics: not a "
                         "fixed affine map")
    scale, bias, mean, var = (node.const(i) for i in range(1, 5))
    return x.then(batch_norm_operator(x.shape, mean, var, scale, bias,
                                      float(node.attrs.get("epsilon", 1e-5)),
                                      dtype=node.dtype))


def _broadcast(node: Node, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A constant broadcast against a batch ``(N, *shape)``: one sample's worth."""
    c = np.asarray(c)
    if c.ndim > len(shape) + 1 or (c.ndim == len(shape) + 1 and c.shape[0] != 1):
        raise node.error(f"the constant of shape {c.shape} spans the batch axis of samples "
                         f"{shape}")
    if c.ndim == len(shape) + 1:
        c = c[0]
    try:
        out = np.broadcast_shapes(c.shape, shape)
    except ValueError:
        out = None
    if out != shape:
        raise node.error(f"the constant of shape {c.shape} does not broadcast to the "
                         f"samples' shape {shape} (it would change it to {out})")
    return np.broadcast_to(c, shape).astype(node.dtype)


def _elementwise(node: Node) -> Operator:
    kind = node.proto.op_type
    a_name, b_name = node.proto.input[0], node.proto.input[1]
    if a_name in node.values and b_name in node.values:
        if kind not in ("Add", "Sub"):
            raise node.error(f"{kind} of two values of the network is nonlinear")
        a, b = node.values[a_name], node.values[b_name]
        if a.shape != b.shape:
            raise node.error(f"{kind} of values of shapes {a.shape} and {b.shape}")
        op_b = b.operator(node.dtype)
        return a.operator(node.dtype) + (op_b if kind == "Add" else -op_b)
    first = a_name in node.values
    x = node.values[a_name if first else b_name]
    c = _broadcast(node, node.const(1 if first else 0), x.shape)
    n = math.prod(x.shape)
    if kind == "Add" or (kind == "Sub" and first):
        diag, offset = np.ones(n), (c if kind == "Add" else -c)
    elif kind == "Sub":
        diag, offset = -np.ones(n), c
    elif kind == "Mul":
        diag, offset = c.reshape(-1), None
    elif first:  # Div by a constant
        diag, offset = 1 / c.reshape(-1), None
    else:
        raise node.error("Div of a constant by a value of the network is nonlinear")
    matrix = sp.diags_array(diag.astype(node.dtype), format="csr")
    return x.then(MatrixOperator(matrix, x.shape, x.shape, offset=offset, name=kind))


def _reshape(node: Node) -> tuple[int, ...]:
    x = node.value(0)
    target = [int(t) for t in node.const(1)]
    full = (node.batch or 1, *x.shape)  # a fixed batch may be written into the target
    allowzero = bool(node.attrs.get("allowzero", 0))
    out = [full[i] if t == 0 and not allowzero else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        raise node.error(f"shape {target} has more than one -1")
    if -1 in out:
        known = math.prod(t for t in out if t != -1)
        out[out.index(-1)] = math.prod(full) // known if known else 0
    if math.prod(out) != math.prod(full) or not out or out[0] != full[0]:
        raise node.error(f"shape {target} does not keep the batch axis first for samples "
                         f"{x.shape}")
    return tuple(out[1:])


def _flatten(node: Node) -> tuple[int, ...]:
    x = node.value(0)
    axis = int(node.attrs.get("axis", 1))
    if axis % (len(x.shape) + 1) != 1:
        raise node.error(f"axis={axis} mixes the batch axis; convmat maps Flatten with "
                         "axis=1 (one row per sample)")
    return (math.prod(x.shape),)


def _dense(node: Node, x: Value, w: np.ndarray, bias: Any) -> Operator:
    """``x @ w.T + bias`` on the last axis of the samples: ``I (x) w``."""
    if x.shape[-1] != w.shape[1]:
        raise node.error(f"the weight of shape {w.shape} takes a last axis of {w.shape[1]}, "
                         f"but the samples have shape {x.shape}")
    rows = math.prod(x.shape[:-1])
    matrix = sp.kron(sp.eye_array(rows), sp.csr_array(w.astype(node.dtype)), format="csr")
    out = (*x.shape[:-1], w.shape[0])
    offset = None if bias is None else _broadcast(node, bias, out)
    return x.then(MatrixOperator(matrix, x.shape, out, offset=offset, name=node.proto.op_type))


def _gemm(node: Node) -> Operator:
    x = node.value(0)
    if node.attrs.get("transA", 0):
        raise node.error("transA=1 transposes the batch into the features: not supported")
    if len(x.shape) != 1:
        raise node.error(f"Gemm takes (N, K) inputs; the samples have shape {x.shape}")
    b = node.const(1)
    b = b.T if node.attrs.get("transB", 0) else b
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    c = node.const(2)
    return _dense(node, x, alpha * b.T, None if c is None else beta * np.asarray(c))


def _matmul(node: Node) -> Operator:
    x = node.value(0)
    b = np.asarray(node.const(1))
    if b.ndim != 2:
        raise node.error(f"the constant operand has shape {b.shape}; convmat maps x @ B with "
                         "a 2-D B")
    return _dense(node, x, b.T, None)


def _reduce(node: Node) -> Operator:
    """``ReduceMean`` / ``ReduceSum`` over axes of the samples: a row of ``1/n`` (or ones)."""
    x = node.value(0)
    rank = len(x.shape) + 1
    axes = node.const(1)
    axes = node.attrs.get("axes", []) if axes is None else axes
    axes = sorted({int(a) % rank for a in np.asarray(axes).reshape(-1)})
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x.operator(node.dtype)
        axes = list(range(rank))
    if 0 in axes:
        raise node.error(f"axes {axes} include the batch axis: convmat maps one sample")
    keep = bool(node.attrs.get("keepdims", 1))
    mean = node.proto.op_type == "ReduceMean"
    factors = [sp.csr_array(np.full((1, n), 1 / n if mean else 1.0)) if a + 1 in axes
               else sp.eye_array(n, format="csr") for a, n in enumerate(x.shape)]
    out = tuple(1 if a + 1 in axes else n for a, n in enumerate(x.shape)
                if keep or a + 1 not in axes)
    return _separable(x, factors, node.dtype, out, node.proto.op_type)


def _identity(node: Node) -> Value:
    if node.proto.op_type == "Dropout" and bool(np.asarray(node.const(2, False)).any()):
        raise node.error("training_mode is true: the dropout is random, not a fixed map")
    if len(node.proto.output) > 1 and node.proto.output[1]:
        raise node.error("the dropout mask (output 1) is used; convmat maps inference, "
                         "where the mask is all ones")
    return node.value(0)


Handler = Callable[[Node], "Operator | Value | tuple[int, ...]"]

#: ONNX op type -> handler (an operator, an unchanged value, or a new sample shape).
NODES: dict[str, Handler] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _average_pool,
    "Pad": _pad,
    "Resize": _resize,
    "BatchNormalization": _batch_norm,
    "Add": _elementwise,
    "Sub": _elementwise,
    "Mul": _elementwise,
    "Div": _elementwise,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "Identity": _identity,
    "Dropout": _identity,
}


def _fold_constants(proto: Any, consts: dict[str, np.ndarray], opsets: Any) -> None:
    """Fold a node whose inputs are all constants into constants (ONNX's reference runs it).

    These are the exporters' shape arithmetic: ``Constant``, ``ConstantOfShape``, ``Concat``,
    ``Gather``, ``Unsqueeze``, ...
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if proto.op_type == "Constant":
        value = next(helper.get_attribute_value(a) for a in proto.attribute)
        consts[proto.output[0]] = (numpy_helper.to_array(value)
                                   if hasattr(value, "dims") else np.asarray(value))
        return
    inputs = [name for name in proto.input if name]
    graph = helper.make_graph(
        [proto], "fold",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(
            consts[name].dtype), consts[name].shape) for name in inputs],
        [helper.make_tensor_value_info(name, 0, None) for name in proto.output if name])
    model = helper.make_model(graph, opset_imports=list(opsets))
    outputs = ReferenceEvaluator(model).run(None, {name: consts[name] for name in inputs})
    for name, value in zip([n for n in proto.output if n], outputs, strict=True):
        consts[name] = np.asarray(value)


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, a path or bytes, got "
                        f"{type(model).__name__}")
    return model


def from_onnx(model: Any, input_shape: Sequence[int] | None = None) -> Operator:
    """The exact affine operator of an ONNX graph of linear nodes.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        A graph with one input (besides its initializers) and one output, of the nodes in
        :data:`NODES`: ``Conv`` and ``ConvTranspose`` (every ``auto_pad``, asymmetric
        ``pads``, ``output_shape``, ``output_padding``, ``group``, ``dilations``,
        ``strides``), ``AveragePool``, ``GlobalAveragePool``, ``Pad``, ``Resize`` (nearest
        and linear), ``BatchNormalization``, ``Add`` / ``Sub`` / ``Mul`` / ``Div`` by
        constants (and ``Add`` / ``Sub`` of two values: residual connections), ``Reshape``,
        ``Flatten``, ``Gemm`` / ``MatMul`` by constant weights, ``ReduceMean`` /
        ``ReduceSum`` over the sample's axes, ``Identity``, ``Dropout`` (inference). Weights
        are initializers or ``Constant`` nodes; nodes whose inputs are all constants (the
        exporters' shape arithmetic, ``Shape`` of a value included) are folded into
        constants by ``onnx.reference``.
    input_shape : tuple of int, optional
        One sample's shape: the graph input's shape without its first (batch) axis. Default:
        read from the graph (every axis but the first must be fixed).

    Returns
    -------
    Operator
        ``input_shape -> output shape`` (one sample): ``A(x)`` the graph's output for one
        sample or a batch, ``A.matrix`` the linear part, ``A.offset`` the biases. Its dtype
        is the graph input's (float32 or float64).

    Notes
    -----
    The semantics are the ONNX specification's. Where runtimes differ from it, convmat keeps
    the specification: ``ConvTranspose`` with ``auto_pad`` SAME gives ``n * stride`` outputs
    (onnxruntime gives ``s (n - 1) + k`` when the stride exceeds the kernel); ``AveragePool``
    SAME pads by the dilated window, and a negative total pad (kernel below the stride) is
    0. A fixed batch size written into a ``Reshape`` target (as exporters do) or the
    ``sizes`` of a ``Resize`` is the graph input's first dimension (1 where symbolic, as
    ``Shape`` reports it). ``Resize`` computes its source coordinates in float64.

    Raises
    ------
    TypeError
        ``model`` not a model, a path or bytes; an input element type other than float or
        double.
    ValueError
        An unsupported node (named with its op type and inputs), or an option of a node
        convmat does not map; a graph without exactly one input and one output; a shape
        that cannot be read.

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> w = np.ones((2, 1, 3, 3))
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1, 6, 6])],
    ...     [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
    ...     [numpy_helper.from_array(w, "w")])
    >>> A = from_onnx(helper.make_model(graph))
    >>> A.input_shape, A.output_shape
    ((1, 6, 6), (2, 3, 3))
    """
    model = _load(model)
    graph = model.graph
    from onnx import numpy_helper

    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"from_onnx maps graphs with one input and one output; this one has "
                         f"inputs {[i.name for i in inputs]} and outputs "
                         f"{[o.name for o in graph.output]}")
    (inp,) = inputs
    tensor = inp.type.tensor_type
    if tensor.elem_type not in _ELEM_TYPES:
        raise TypeError(f"input {inp.name!r} has ONNX element type {tensor.elem_type}; "
                        "convmat maps float (1) and double (11) inputs")
    dtype = _ELEM_TYPES[tensor.elem_type]
    if input_shape is None:
        dims = list(tensor.shape.dim)[1:]
        if not tensor.HasField("shape") or any(d.dim_value < 1 for d in dims):
            raise ValueError(f"input {inp.name!r} has no fixed shape after its batch axis "
                             f"({[d.dim_param or d.dim_value for d in dims]}): give "
                             "input_shape")
        input_shape = [d.dim_value for d in dims]
    shape = tuple(int(s) for s in input_shape)
    first = list(tensor.shape.dim)[:1]
    batch = first[0].dim_value if first and first[0].dim_value > 0 else None
    values = {inp.name: Value(None, shape)}
    for proto in graph.node:
        node = Node(proto, values, consts, dtype, batch)
        if proto.op_type == "Shape" and proto.input[0] in values:  # known: batch, then shape
            full = np.array([batch or 1, *values[proto.input[0]].shape], dtype=np.int64)
            consts[proto.output[0]] = full[node.attrs.get("start", 0):node.attrs.get("end")]
            continue
        if all(name in consts or not name for name in proto.input):  # constant folding
            _fold_constants(proto, consts, model.opset_import)
            continue
        if proto.op_type not in NODES:
            raise node.error(f"op type {proto.op_type!r} is not supported (supported: "
                             f"{', '.join(NODES)})")
        made = NODES[proto.op_type](node)
        if isinstance(made, tuple):  # a new sample shape
            x = node.value(0)
            made = Value(x.operator(dtype).reshape(output_shape=made), made)
        elif isinstance(made, Operator):
            made = Value(made, made.output_shape)
        values[proto.output[0]] = made
    out = graph.output[0].name
    if out not in values:
        raise ValueError(f"the graph's output {out!r} does not depend on its input")
    return values[out].operator(dtype)
