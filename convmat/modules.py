"""PyTorch modules in: the exact affine operator of a module, or of a network at an input.

:func:`from_torch` reads a ``torch.nn`` module (a layer, a ``Sequential``, or any network
``torch.fx`` can trace, residual additions included) and returns the convmat operator that
*is* the module: ``A(x) == module(x)``, ``A.matrix`` the linear part and ``A.offset`` the
bias. With ``at=x`` it returns the affine map a piecewise-linear network is in the linear
region of ``x``: ReLUs become diagonal masks, max pooling a selection matrix.

PyTorch is imported only when :func:`from_torch` is called; ``import convmat`` never
imports it. The parameters are copied out of torch (detached, on the CPU, with their dtype),
so the operator does not change when the module trains later.

Each supported module kind is one entry of :data:`CONVERTERS` (its class name, and a
function from the module and the input shape of one sample to an operator).
"""

from __future__ import annotations

import math
import numbers
import operator as _operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .algebra import MatrixOperator, Operator, identity_operator
from .layers import (
    adaptive_avg_pool_operator,
    avg_pool_operator,
    batch_norm_operator,
    pad_operator,
    pixel_shuffle_operator,
    pixel_unshuffle_operator,
    upsample_operator,
)
from .operator import ConvOperator

__all__ = ["CONVERTERS", "PIECEWISE_LINEAR", "Value", "from_torch"]

#: dtypes a module's parameters may have (those of convmat's operators).
MODULE_DTYPES = ("float32", "float64", "complex64", "complex128")


# --------------------------------------------------------------------------- helpers
def _array(t: Any, dtype: Any = None) -> np.ndarray:
    """A NumPy copy of a tensor: detached, on the CPU, its dtype kept or ``dtype``."""
    return np.array(t.detach().cpu().numpy(), dtype=dtype, copy=True)


def _unwrapped(m: Any) -> type:
    """The class of ``m``, the original one for a parametrized module.

    ``weight_norm``, ``spectral_norm`` and any ``torch.nn.utils.parametrize`` make a subclass
    ``Parametrized<Name>``; its ``weight`` is the parametrized weight, read as any other.
    """
    cls = type(m)
    if getattr(m, "parametrizations", None) is not None and cls.__name__.startswith(
            "Parametrized"):
        cls = cls.__bases__[0]
    return cls


def _name(m: Any) -> str:
    """The class name of ``m`` (of the original class, for a parametrized module)."""
    return _unwrapped(m).__name__


def _spatial(name: str, shape: tuple[int, ...], nd: int) -> None:
    """Check that one sample ``(C, *spatial)`` has ``nd`` spatial axes."""
    if len(shape) != nd + 1:
        raise ValueError(
            f"{name} takes one sample of shape (C, {nd} spatial axes), a {nd + 1}-D input, "
            f"but the input there has shape {shape}")


class Reshape:
    """A module that only reshapes one sample (``Flatten``, ``Unflatten``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _batch_dim(name: str, dim: int, rank: int, what: str) -> int:
    """``dim`` of a batched ``rank + 1``-D tensor as an axis of one sample (never the batch)."""
    full = dim + rank + 1 if dim < 0 else dim
    if not 0 <= full <= rank:
        raise ValueError(f"{name}: {what}={dim} is out of range for a batch of "
                         f"{rank}-D samples")
    if full == 0:
        raise ValueError(f"{name}: {what}={dim} is the batch axis; convmat maps one sample, "
                         "so the batch axis must stay")
    return full - 1


# --------------------------------------------------------------------------- converters
def _conv(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    nd = len(m.kernel_size)
    _spatial(_name(m), shape, nd)
    bias = None if m.bias is None else _array(m.bias, dtype)
    weight = _array(m.weight, dtype)
    if m.transposed:
        return ConvOperator.transposed(
            weight, shape, stride=m.stride, padding=m.padding,
            output_padding=m.output_padding, dilation=m.dilation, groups=m.groups, bias=bias)
    padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    return ConvOperator(weight, shape, stride=m.stride, padding=padding, dilation=m.dilation,
                        groups=m.groups, padding_mode=m.padding_mode, bias=bias)


def _linear(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    w = _array(m.weight, dtype)
    if not shape or shape[-1] != w.shape[1]:
        raise ValueError(f"Linear(in_features={w.shape[1]}) needs a last axis of "
                         f"{w.shape[1]}, but the input there has shape {shape}")
    rows = math.prod(shape[:-1])
    matrix = sp.kron(sp.eye_array(rows, dtype=w.dtype), sp.csr_array(w), format="csr")
    out = (*shape[:-1], w.shape[0])
    offset = None if m.bias is None else np.broadcast_to(_array(m.bias, dtype), out)
    return MatrixOperator(matrix, shape, out, offset=offset, name="linear")


def _avg_pool(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    nd = int(_name(m)[-2])
    _spatial(_name(m), shape, nd)
    return avg_pool_operator(shape, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                             m.count_include_pad, getattr(m, "divisor_override", None),
                             dtype=dtype)


def _adaptive_avg_pool(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    nd = int(_name(m)[-2])
    _spatial(_name(m), shape, nd)
    return adaptive_avg_pool_operator(shape, m.output_size, dtype=dtype)


def _upsample(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    if m.mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear"):
        raise ValueError(f"Upsample(mode={m.mode!r}) is not supported; supported modes: "
                         "'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear'")
    return upsample_operator(shape, m.size, m.scale_factor, m.mode, m.align_corners,
                             recompute_scale_factor=m.recompute_scale_factor, dtype=dtype)


def _batch_norm(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    nd = int(_name(m)[-2])
    if nd == 1 and len(shape) not in (1, 2):
        raise ValueError(f"BatchNorm1d takes samples (C,) or (C, L), but the input there has "
                         f"shape {shape}")
    if nd > 1:
        _spatial(_name(m), shape, nd)
    if m.running_mean is None or m.running_var is None:
        raise ValueError(f"{_name(m)}(track_running_stats=False) normalises by the "
                         "statistics of each batch: it is not a fixed affine map")
    weight = None if m.weight is None else _array(m.weight, dtype)
    bias = None if m.bias is None else _array(m.bias, dtype)
    return batch_norm_operator(shape, _array(m.running_mean, dtype),
                               _array(m.running_var, dtype), weight,
                               bias, m.eps, dtype=dtype)


_PAD_MODES = {"ZeroPad": "constant", "ConstantPad": "constant", "ReflectionPad": "reflect",
              "ReplicationPad": "replicate", "CircularPad": "circular"}


def _pad(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    name = _name(m)
    _spatial(name, shape, int(name[-2]))
    mode = _PAD_MODES[name[:-2]]
    value = getattr(m, "value", 0.0) if mode == "constant" else 0.0
    return pad_operator(shape, tuple(m.padding), mode, value, dtype=dtype)


def _identity(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    return identity_operator(shape, dtype)


def _flatten(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Reshape:
    rank = len(shape)
    start = _batch_dim("Flatten", m.start_dim, rank, "start_dim")
    end = _batch_dim("Flatten", m.end_dim, rank, "end_dim")
    if end < start:
        raise ValueError(f"Flatten: start_dim={m.start_dim} comes after end_dim={m.end_dim}")
    return Reshape((*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:]))


def _unflatten(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Reshape:
    dim = m.dim
    axis = _batch_dim("Unflatten", dim, len(shape), "dim")
    sizes = [int(s) for s in m.unflattened_size]
    if sizes.count(-1) == 1:
        known = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = shape[axis] // known if known else 0
    if math.prod(sizes) != shape[axis]:
        raise ValueError(f"Unflatten(unflattened_size={tuple(m.unflattened_size)}) does not "
                         f"fit axis {dim} of size {shape[axis]}")
    return Reshape((*shape[:axis], *sizes, *shape[axis + 1:]))


def _pixel_shuffle(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    _spatial("PixelShuffle", shape, 2)
    return pixel_shuffle_operator(shape, m.upscale_factor, dtype=dtype)


def _pixel_unshuffle(m: Any, shape: tuple[int, ...], dtype: np.dtype) -> Operator:
    _spatial("PixelUnshuffle", shape, 2)
    return pixel_unshuffle_operator(shape, m.downscale_factor, dtype=dtype)


Converter = Callable[[Any, tuple[int, ...], np.dtype], "Operator | Reshape"]

#: Linear modules: class name -> converter ``(module, sample shape, dtype) -> operator``.
CONVERTERS: dict[str, Converter] = {
    **{f"Conv{d}d": _conv for d in (1, 2, 3)},
    **{f"ConvTranspose{d}d": _conv for d in (1, 2, 3)},
    **{f"AvgPool{d}d": _avg_pool for d in (1, 2, 3)},
    **{f"AdaptiveAvgPool{d}d": _adaptive_avg_pool for d in (1, 2, 3)},
    **{f"BatchNorm{d}d": _batch_norm for d in (1, 2, 3)},
    **{f"{kind}{d}d": _pad for kind in _PAD_MODES for d in (1, 2, 3)},
    "Upsample": _upsample,
    "UpsamplingNearest2d": _upsample,
    "UpsamplingBilinear2d": _upsample,
    "PixelShuffle": _pixel_shuffle,
    "PixelUnshuffle": _pixel_unshuffle,
    "Identity": _identity,
    **{name: _identity for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                    "AlphaDropout", "FeatureAlphaDropout")},
    "Flatten": _flatten,
    "Unflatten": _unflatten,
    "Linear": _linear,
}

#: Piecewise-linear modules: linear in the region of a point (``from_torch(..., at=x)``).
PIECEWISE_LINEAR = ("ReLU", "ReLU6", "LeakyReLU", "Hardtanh",
                    *(f"MaxPool{d}d" for d in (1, 2, 3)),
                    *(f"AdaptiveMaxPool{d}d" for d in (1, 2, 3)))

#: Modules that are random in training mode (when their ``p > 0``).
_RANDOM = ("Dropout", "AlphaDropout", "FeatureAlphaDropout")


# --------------------------------------------------------------------------- local maps
def _activation(m: Any, value: Any, out: Any, dtype: np.dtype) -> Operator:
    """The affine map of an activation at ``value`` (one sample), as its backward sees it.

    ``diag(slope) x + offset``: the slope is the rule of the module's backward at
    ``value``; the offset holds the output where the slope is 0 (a saturated ``Hardtanh``
    is the constant it clamps to).
    """
    v, y = _array(value), _array(out)
    name = _name(m)
    if name == "ReLU":
        slope = (v > 0).astype(dtype)  # threshold_backward: the gradient where the result > 0
    elif name == "LeakyReLU":
        slope = np.where(v > 0, 1.0, m.negative_slope).astype(dtype)
    else:  # Hardtanh and ReLU6: zero at and beyond the bounds (hardtanh_backward)
        slope = ((v > m.min_val) & (v < m.max_val)).astype(dtype)
    offset = np.where(slope == 0, y, 0).astype(dtype)
    shape = tuple(v.shape)
    matrix = sp.diags_array(slope.reshape(-1), format="csr")
    return MatrixOperator(matrix, shape, shape, offset=offset if offset.any() else None,
                          name=f"{name.lower()}_slope")


def _max_pool(m: Any, value: Any, dtype: np.dtype) -> Operator:
    """The selection matrix of a max pooling at ``value`` (one sample ``(C, *n)``)."""
    import torch.nn.functional as F

    name = _name(m)
    nd = int(name[-2])
    _spatial(name, tuple(value.shape), nd)
    batch = value[None]
    if name.startswith("Adaptive"):
        fn = getattr(F, f"adaptive_max_pool{nd}d")
        out, index = fn(batch, m.output_size, return_indices=True)
    else:
        fn = getattr(F, f"max_pool{nd}d")
        out, index = fn(batch, m.kernel_size, m.stride, m.padding, m.dilation,
                        ceil_mode=m.ceil_mode, return_indices=True)
    idx = _array(index[0]).reshape(index.shape[1], -1)
    channels, plane = value.shape[0], math.prod(value.shape[1:])
    cols = (idx + plane * np.arange(channels)[:, None]).reshape(-1)
    matrix = sp.csr_array((np.ones(cols.size, dtype=dtype), cols, np.arange(cols.size + 1)),
                          shape=(cols.size, channels * plane))
    return MatrixOperator(matrix, tuple(value.shape), tuple(out.shape[1:]),
                          name=f"{name.lower()}_selection")


# --------------------------------------------------------------------------- the walk
class Value:
    """A value in a network: its map from the network's input, and its shape.

    ``op`` is the (affine) operator from the input to this value, None for the input
    itself; ``shape`` one sample's shape; ``value`` the sample at the point of a local map
    (a torch tensor), or None.
    """

    def __init__(self, op: Operator | None, shape: tuple[int, ...], value: Any = None) -> None:
        self.op = op
        self.shape = shape
        self.value = value  # one sample (torch tensor) at ``at``; None without ``at``

    def then(self, outer: Operator) -> Operator:
        """``outer`` after this node's map."""
        return outer if self.op is None else outer @ self.op

    def operator(self, dtype: np.dtype) -> Operator:
        """The map from the input to this value (the identity for the input itself)."""
        return identity_operator(self.shape, dtype) if self.op is None else self.op


def _where(path: str, root_is_sequential: bool) -> str:
    if root_is_sequential and path.isdigit():
        return f"position {path} of the Sequential"
    return f"{path!r}" if path else "the root module"


def _model_dtype(module: Any, at: Any, default: Any = np.float64) -> np.dtype:
    """The module's parameter dtype; else that of ``at``; else ``default``."""
    tensors = [*module.parameters(), *module.buffers()]
    if at is not None:
        tensors.append(at)
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            name = str(t.dtype).removeprefix("torch.")
            if name not in MODULE_DTYPES:
                raise TypeError(
                    f"found {name} tensors (the module's parameters, or at); convmat's "
                    f"operators are {', '.join(MODULE_DTYPES)}: convert them (module.double() "
                    "or module.float()), or give dtype=")
            return np.dtype(name)
    return np.dtype(default)


def _check_module(m: Any, where: str, local: bool) -> None:
    """Refuse a module convmat cannot map (or not in this mode), naming it and its place."""
    import torch

    name = _name(m)
    if (name in CONVERTERS or name in PIECEWISE_LINEAR) and _unwrapped(m) is not getattr(
            torch.nn, name):
        raise ValueError(
            f"{name} at {where} is a {_unwrapped(m).__module__}.{name}, not torch.nn.{name}: its "
            "forward may differ, so convmat does not map it")
    if m._forward_hooks or m._forward_pre_hooks:
        raise ValueError(f"{name} at {where} has forward hooks, which may change its output; "
                         "remove them first")
    if name in CONVERTERS:
        random = name.startswith(_RANDOM) and m.p > 0
        if m.training and (name.startswith("BatchNorm") or random):
            raise ValueError(
                f"{name} at {where} is in training mode, where its map depends on the "
                "batch (or is random): call model.eval() first")
        return
    if name in PIECEWISE_LINEAR:
        if not local:
            raise ValueError(
                f"{name} at {where} is nonlinear: convmat gives its exact local linear map at "
                "an input instead, with from_torch(model, input_shape, at=x)")
        return
    raise ValueError(
        f"{name} at {where} is not supported: from_torch maps the linear modules "
        f"{', '.join(sorted(CONVERTERS))}, and at an input (at=x) also "
        f"{', '.join(PIECEWISE_LINEAR)}")


def _run(m: Any, node: Value, where: str) -> Any:
    """The module applied to the value at the point (a copy: in-place modules), or None."""
    if node.value is None:
        return None
    try:
        return m(node.value[None].clone())[0]
    except RuntimeError as exc:
        raise ValueError(f"{_name(m)} at {where}: {exc}") from exc


def _leaf(m: Any, node: Value, dtype: np.dtype, where: str) -> Value:
    """The node after module ``m``."""
    name = _name(m)
    if name in PIECEWISE_LINEAR:
        value = _run(m, node, where)
        assert node.value is not None  # _check_module refused it without ``at``
        if name.startswith(("MaxPool", "AdaptiveMaxPool")):
            op = _max_pool(m, node.value, dtype)
        else:
            op = _activation(m, node.value, value, dtype)
        return Value(node.then(op), op.output_shape, value)
    try:
        made = CONVERTERS[name](m, node.shape, dtype)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{name} at {where}: {exc}") from exc
    value = _run(m, node, where)
    if isinstance(made, Reshape):
        return Value(node.operator(dtype).reshape(output_shape=made.shape), made.shape, value)
    return Value(node.then(made), made.output_shape, value)


#: Arithmetic a traced forward may do: functions and methods -> add, sub, mul, div.
_ARITH: dict[Any, str] = {_operator.add: "add", _operator.iadd: "add", _operator.sub: "sub",
                          _operator.isub: "sub", _operator.mul: "mul", _operator.imul: "mul",
                          _operator.truediv: "div", _operator.itruediv: "div"}
_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul",
            "mul_": "mul", "div": "div", "div_": "div"}


def _traced(module: Any, input_node: Value, dtype: np.dtype, sequential: bool) -> Value:
    """Walk the ``torch.fx`` graph of a network, from its input to its output."""
    import torch
    import torch.fx as fx
    import torch.nn.functional as F

    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as exc:  # noqa: BLE001 - tracing raises many kinds
        raise ValueError(
            f"{type(module).__name__} could not be traced by torch.fx ({exc}); write it as "
            "an nn.Sequential or as modules whose forward torch.fx can trace") from exc
    local = input_node.value is not None
    nodes = list(graph.nodes)
    relus = (F.relu, torch.relu, torch.relu_)
    arith = {**_ARITH, torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}
    adds = tuple(arith)
    flattens = (torch.flatten,)
    # check every node before building anything
    for n in nodes:
        _check_inplace(module, n)
        if n.op == "call_module":
            _check_module(module.get_submodule(n.target), _where(n.target, sequential), local)
        elif n.op == "call_function":
            if n.target in relus and not local:
                raise ValueError(f"relu at node {n.name!r} is nonlinear: give at=x for the "
                                 "local linear map")
            if n.target not in (*relus, *adds, *flattens):
                raise ValueError(f"node {n.name!r} calls {getattr(n.target, '__name__', n.target)}"
                                 f" on {n.args}: not supported (supported functions: add, sub, "
                                 "mul and div by numbers, relu, flatten; write other steps as "
                                 "modules)")
        elif n.op == "call_method":
            if n.target not in ("relu", "relu_", "flatten", *_METHODS):
                raise ValueError(f"node {n.name!r} calls the method .{n.target}() on {n.args}: "
                                 "not supported (supported methods: add, sub, mul, div, relu, "
                                 "flatten)")
            if n.target.startswith("relu") and not local:
                raise ValueError(f"relu at node {n.name!r} is nonlinear: give at=x for the "
                                 "local linear map")
        elif n.op == "get_attr":
            raise ValueError(f"node {n.name!r} reads {n.target!r} (a parameter or buffer) in a "
                             "forward: convmat maps graphs of torch.nn modules, additions, relu "
                             "and flatten (a subclass of a torch.nn module with its own forward "
                             "is traced into, and reads its parameters so)")
        elif n.op not in ("placeholder", "output"):
            raise ValueError(f"node {n.name!r} ({n.op} {n.target}) is not supported: "
                             "convmat maps graphs of modules, additions, relu and flatten")
    if sum(n.op == "placeholder" for n in nodes) != 1:
        raise ValueError("from_torch maps modules with exactly one input")
    env: dict[Any, Value] = {}
    for n in nodes:
        if n.op == "placeholder":
            env[n] = input_node
        elif n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                raise ValueError("from_torch maps modules with exactly one output tensor")
            return env[out]
        elif n.op == "call_module":
            (arg,) = n.args
            env[n] = _leaf(module.get_submodule(n.target), env[arg], dtype,
                           _where(n.target, sequential))
        else:
            fn = n.target
            if fn in relus or fn in ("relu", "relu_"):
                env[n] = _leaf(torch.nn.ReLU(), env[n.args[0]], dtype, repr(n.name))
            elif fn in flattens or fn == "flatten":
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
                env[n] = _leaf(torch.nn.Flatten(start, end), env[n.args[0]], dtype,
                               repr(n.name))
            else:
                kind = arith[fn] if n.op == "call_function" else _METHODS[fn]
                env[n] = _arith(n, env, dtype, kind)
    raise AssertionError("unreachable: a traced graph ends with its output")  # pragma: no cover


def _check_inplace(module: Any, n: Any) -> None:
    """Refuse an in-place step on a value that other nodes also read.

    The graph's values would not be what torch computes: convmat maps values, not aliasing.
    """
    import torch.fx as fx

    inplace = (
        (n.op == "call_method" and str(n.target).endswith("_"))
        or (n.op == "call_function" and (n.target is _operator.iadd
                                         or n.kwargs.get("inplace", False)))
        or (n.op == "call_module" and getattr(module.get_submodule(n.target), "inplace",
                                              False)))
    if inplace and n.args and isinstance(n.args[0], fx.Node) and len(n.args[0].users) > 1:
        raise ValueError(
            f"node {n.name!r} modifies {n.args[0].name!r} in place, which other nodes also "
            f"read ({', '.join(u.name for u in n.args[0].users if u is not n)}): convmat "
            "maps values, not aliasing; use the out-of-place form (inplace=False, x = x + y)")


def _arith(n: Any, env: dict[Any, Value], dtype: np.dtype, kind: str) -> Value:
    """``a + b``, ``a - b`` of two values (residual connections); ``+ - * /`` by a number."""
    alpha = n.kwargs.get("alpha", 1)
    extra = set(n.kwargs) - {"alpha"}
    if extra or len(n.args) != 2 or (alpha != 1 and kind not in ("add", "sub")):
        raise ValueError(f"node {n.name!r} ({kind} of {n.args} {n.kwargs}): convmat maps two "
                         "operands, without out= or other options")
    a, b = n.args
    va = None if isinstance(a, numbers.Number) else env.get(a)
    vb = None if isinstance(b, numbers.Number) else env.get(b)
    numbers_ = [float(v) for v in (a, b)
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if va is not None and vb is not None:
        if kind not in ("add", "sub"):
            raise ValueError(f"node {n.name!r} multiplies or divides two values of the "
                             "network: nonlinear")
        if va.shape != vb.shape:
            raise ValueError(f"node {n.name!r} adds values of shapes {va.shape} and "
                             f"{vb.shape}; convmat adds values of the same shape (no "
                             "broadcasting)")
        sign = alpha if kind == "add" else -alpha
        op = va.operator(dtype) + sign * vb.operator(dtype)
        value = None if va.value is None else va.value + sign * vb.value
        return Value(op, va.shape, value)
    if len(numbers_) != 1 or (va is None and vb is None):
        raise ValueError(f"node {n.name!r} ({kind} of {n.args}): convmat maps arithmetic "
                         "between values of the network and numbers, nothing else")
    first = va is not None
    x = va if va is not None else vb
    assert x is not None
    c = numbers_[0] * (1 if first else alpha)
    if kind == "div" and not first:
        raise ValueError(f"node {n.name!r} divides a number by a value of the network: "
                         "nonlinear")
    n_entries = math.prod(x.shape)
    if kind in ("add", "sub"):
        scale = -1.0 if (kind == "sub" and not first) else 1.0
        offset = np.full(x.shape, c if (kind == "add" or not first) else -c, dtype=dtype)
    else:
        scale, offset = (c if kind == "mul" else 1 / c), None
    matrix = sp.diags_array(np.full(n_entries, scale, dtype=dtype), format="csr")
    step = MatrixOperator(matrix, x.shape, x.shape, offset=offset, name=kind)
    value = None
    if x.value is not None:
        value = x.value * scale + (0 if offset is None else float(offset.flat[0]))
    return Value(x.then(step), x.shape, value)


def from_torch(module: Any, input_shape: Sequence[int], *, at: Any = None,
               dtype: Any = None, verify: bool = True) -> Operator:
    """The exact operator of a PyTorch module: ``A(x) == module(x)``.

    Parameters
    ----------
    module : torch.nn.Module
        A linear module (see :data:`CONVERTERS`: ``Conv{1,2,3}d``, ``ConvTranspose{1,2,3}d``,
        ``AvgPool``, ``AdaptiveAvgPool``, ``Upsample``, ``PixelShuffle``,
        ``PixelUnshuffle``, ``BatchNorm`` in eval mode, the padding modules, ``Identity``,
        ``Dropout`` in eval mode, ``Flatten``, ``Unflatten``, ``Linear``), an
        ``nn.Sequential`` of them, or a network ``torch.fx`` can trace made of them and of
        residual additions. With ``at``, also ``ReLU``, ``ReLU6``, ``LeakyReLU``,
        ``Hardtanh``, ``MaxPool{1,2,3}d`` and ``AdaptiveMaxPool{1,2,3}d`` (and the
        functions ``relu``, ``add``, ``flatten`` in a traced forward).
    input_shape : tuple of int
        The shape of one sample, without the batch axis: ``(C, *spatial)`` for
        convolutions, ``(features,)`` for ``Linear``.
    at : array or tensor, optional
        One sample (``input_shape``, or ``(1, *input_shape)``). The result is then the
        affine map the network is in the linear region of ``at``.
    dtype : dtype, optional
        The operator's dtype (float32, float64, complex64, complex128); default: that of the
        module's first floating parameter or buffer, else of ``at``, else float64.
    verify : bool
        Check ``A(x) == module(x)`` (within the square root of the dtype's eps, relative
        to the output) at ``at``, or at a random sample: one forward of the module and one
        application of the operator.

    Returns
    -------
    Operator
        An affine convmat operator ``input_shape -> output_shape``: ``A(x)`` the module's
        output (one sample or a batch ``(N, *input_shape)``), ``A @ x`` its linear part,
        ``A.matrix`` the sparse matrix of that part and ``A.offset`` the bias (shaped like
        the output, or None). A ``Sequential`` gives the composed operator, applied layer
        by layer; its ``.matrix`` is the product of the layers' matrices.

    Raises
    ------
    ValueError
        An unsupported or nonlinear module (without ``at``), one in training mode where
        that changes its map (``BatchNorm``, ``Dropout`` with ``p > 0``), a subclass of a
        supported module or one with forward hooks, named with its position in the
        ``Sequential`` (or its qualified name); an input shape a module cannot take; a
        network ``torch.fx`` cannot trace; an in-place step on a value other steps read;
        additions of values of different shapes; with ``verify``, an operator that does not
        reproduce the module.
    TypeError
        Not a ``torch.nn.Module``; parameters (or ``dtype``) in a dtype convmat's operators
        lack.

    Notes
    -----
    Parameters are copied (detached, on the CPU, float32/float64 kept): the operator does
    not change when the module trains later, and are cast to ``dtype``. A float32 network
    is best mapped in float32 (its own rounding: the source pixels of a nearest ``Upsample``
    by a fractional factor are computed in the network's precision).

    With ``at``, each piecewise-linear module becomes its Jacobian at the value that
    reaches it, which is the rule of PyTorch's backward at ties, so ``A.matrix`` equals
    ``torch.func.jacrev(model)(at)``:

    * ``ReLU``: ``diag(x > 0)`` (the gradient is 0 at ``x == 0``);
    * ``LeakyReLU``: ``diag(1 if x > 0 else negative_slope)`` (the slope at 0);
    * ``Hardtanh``, ``ReLU6``: ``diag(min_val < x < max_val)`` (0 at both bounds), plus
      the clamped value as an offset where that is 0;
    * max pooling: the selection matrix of the indices ``return_indices=True`` gives (the
      first maximum of each window in scan order).

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect").double()
    >>> A = from_torch(conv, (2, 8, 8))
    >>> x = torch.randn(2, 8, 8, dtype=torch.float64)
    >>> bool(torch.allclose(torch.from_numpy(A(x.numpy())), conv(x)))
    True
    >>> nn = torch.nn
    >>> net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)).double()
    >>> L = from_torch(net, (2, 8, 8), at=x)
    >>> L.shape, bool(torch.allclose(torch.from_numpy(L(x.numpy())), net(x[None])[0]))
    ((2, 128), True)
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be one sample's shape (sizes >= 1), got "
                         f"{tuple(input_shape)}")
    value = None if at is None else torch.as_tensor(at).detach()
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.name not in MODULE_DTYPES:
            raise TypeError(f"dtype={dtype.name} is not one of {', '.join(MODULE_DTYPES)}")
    # the module runs in its own dtype (dtype, for a module without parameters)
    own = _model_dtype(module, value, np.float64 if dtype is None else dtype)
    dtype = own if dtype is None else dtype
    if value is not None:
        if tuple(value.shape) == (1, *shape):
            value = value[0]
        if tuple(value.shape) != shape:
            raise ValueError(f"at has shape {tuple(value.shape)}; expected one sample of "
                             f"input_shape {shape} (or (1, *input_shape))")
        value = value.to(dtype=getattr(torch, own.name))
    node = Value(None, shape, value)
    name = _name(module)
    with torch.no_grad():
        builtin = _unwrapped(module).__module__.startswith("torch.nn.modules") and not \
            isinstance(module, torch.nn.Sequential)
        if name in CONVERTERS or name in PIECEWISE_LINEAR or builtin:
            _check_module(module, "the root module", value is not None)
            node = _leaf(module, node, dtype, "the root module")
        else:
            node = _traced(module, node, dtype, isinstance(module, torch.nn.Sequential))
        op = node.operator(dtype)
        if verify:
            _verify(module, op, value, own)
    return op


def _verify(module: Any, op: Operator, at: Any, own: np.dtype) -> None:
    """Check ``op(x) == module(x)`` at ``at`` (or a random sample), within ``sqrt(eps)``.

    The walk maps values; a forward that modifies in place a value it reads again (an
    aliasing ``torch.fx`` records as an ordinary operation) computes something else, and
    this check says so.
    """
    import torch

    where = "the given point" if at is not None else "a random sample"
    if at is None:
        generator = torch.Generator().manual_seed(0)
        at = torch.randn(op.input_shape, generator=generator, dtype=getattr(torch, own.name))
    param = next(module.parameters(), None)
    x = at if param is None else at.to(param.device)
    ref = module(x[None].clone())[0].detach().cpu().numpy()
    got = op(at.cpu().numpy().astype(op.dtype))
    eps = max(np.finfo(own).eps, np.finfo(op.dtype).eps)
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    if not err <= np.sqrt(eps) * (float(np.abs(ref).max(initial=0.0)) + 1.0):
        raise ValueError(
            f"the operator does not reproduce {type(module).__name__}: max |A(x) - "
            f"module(x)| = {err:.3g} at {where}; the forward probably modifies in place a "
            "value it reads again (aliasing that torch.fx records as an ordinary operation): "
            "use out-of-place operations")
