"""Argument coercion: user arguments checked and normalised into plain Python ints and tuples.

Every public entry point resolves its arguments here once, before anything is allocated;
each error names the parameter, the rule and the value received.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "LAYOUTS",
    "SUPPORTED_DTYPES",
    "as_bool",
    "as_int",
    "check_dtype",
    "check_input_shape",
    "check_layout",
    "check_positive",
    "per_axis",
    "resolve_padding",
    "shape_of",
]

#: Supported dtypes of ``W`` (and so of the weight): the ones SciPy and CuPy sparse both support.
SUPPORTED_DTYPES = ("float32", "float64", "complex64", "complex128")
#: Data layouts: ``(C, *spatial)`` (PyTorch's) or ``(*spatial, C)`` (TensorFlow/Keras').
LAYOUTS = ("channels_first", "channels_last")


def as_int(name: str, value: Any) -> int:
    """``value`` as an int (bools and non-integers are a ``TypeError`` naming ``name``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def per_axis(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """An int, or a sequence of ``ndim`` ints, as a per-axis tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(
                f"{name}={tuple(value)!r} has {len(value)} entries but the convolution has "
                f"{ndim} spatial axes"
            )
        return tuple(as_int(f"{name}[{d}]", v) for d, v in enumerate(value))
    return (as_int(name, value),) * ndim


def check_positive(name: str, values: tuple[int, ...]) -> None:
    """Refuse a per-axis value below 1 (``ValueError`` naming the axis)."""
    for d, v in enumerate(values):
        if v <= 0:
            raise ValueError(f"{name} must be >= 1 on every axis; axis {d} has {name}={v}")


def as_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (anything but a bool is a ``TypeError`` naming ``name``)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_layout(layout: Any) -> str:
    """``layout`` when it is one of :data:`LAYOUTS`, else ``ValueError``."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(map(repr, LAYOUTS))}")
    return layout


def same_lo(kernel: int, dilation: int, origin: int | None, flip: bool) -> int:
    """Low padding of ``padding='same'`` on one axis (``hi = dilation*(k-1) - lo``).

    ``origin=None``: PyTorch's ``dilation*(k-1) // 2`` (an odd extra element at the end).
    Otherwise SciPy ndimage's centre tap ``c = k//2 + origin``: ``lo = dilation*c``, or
    ``dilation*(k-1-c)`` for a true convolution (``flip``), whose taps are reversed.
    """
    if origin is None:
        return dilation * (kernel - 1) // 2
    centre = kernel // 2 + origin
    return dilation * (kernel - 1 - centre if flip else centre)


def resolve_padding(
    padding: Any,
    ndim: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    *,
    origin: Any = None,
    flip: bool = False,
) -> tuple[tuple[int, int], ...]:
    """Per-axis ``(lo, hi)`` padding from an int, a string, ints or pairs per axis.

    ``'valid'``: none; ``'full'``: ``lo = hi = dilation*(k-1)`` (every partial overlap);
    ``'same'`` (stride 1): ``lo + hi = dilation*(k-1)`` split by :func:`same_lo`, where
    ``origin`` (an int or one per axis, ``-(k//2) <= origin <= (k-1)//2``) shifts the
    centre as SciPy ndimage does; ``origin`` needs ``padding='same'``.
    """
    origins: tuple[int | None, ...] = (None,) * ndim
    if origin is not None:
        origins = per_axis("origin", origin, ndim)
        if not (isinstance(padding, str) and padding == "same"):
            raise ValueError(
                f"origin={origin!r} needs padding='same' (it places the kernel's centre), "
                f"got padding={padding!r}"
            )
        for d, (o, k) in enumerate(zip(origins, kernel, strict=True)):
            if o is not None and not -(k // 2) <= o <= (k - 1) // 2:
                raise ValueError(
                    f"origin must satisfy -(k//2) <= origin <= (k-1)//2; axis {d} has "
                    f"origin={o} for kernel size k={k} (allowed {-(k // 2)}..{(k - 1) // 2})"
                )
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * ndim
        if padding == "full":
            return tuple((d * (k - 1), d * (k - 1)) for k, d in zip(kernel, dilation, strict=True))
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"padding='same' needs stride 1 on every axis, got stride={stride}"
                )
            pads = []
            for d, (k, dl) in enumerate(zip(kernel, dilation, strict=True)):
                lo = same_lo(k, dl, origins[d], flip)
                pads.append((lo, dl * (k - 1) - lo))
            return tuple(pads)
        raise ValueError(
            f"padding={padding!r} is not a known padding; use 'valid', 'same', 'full', an "
            "int, a per-axis tuple of ints, or per-axis (lo, hi) pairs"
        )
    if isinstance(padding, Sequence):
        if len(padding) != ndim:
            raise ValueError(
                f"padding={tuple(padding)!r} has {len(padding)} entries but the convolution "
                f"has {ndim} spatial axes"
            )
        pairs = []
        for d, item in enumerate(padding):
            if isinstance(item, Sequence) and not isinstance(item, str):
                if len(item) != 2:
                    raise ValueError(
                        f"padding[{d}]={tuple(item)!r} must be an int or a (lo, hi) pair"
                    )
                pairs.append((as_int(f"padding[{d}][0]", item[0]),
                              as_int(f"padding[{d}][1]", item[1])))
            else:
                p = as_int(f"padding[{d}]", item)
                pairs.append((p, p))
        resolved = tuple(pairs)
    else:
        p = as_int("padding", padding)
        resolved = ((p, p),) * ndim
    for d, (lo, hi) in enumerate(resolved):
        if lo < 0 or hi < 0:
            raise ValueError(f"padding must be >= 0; axis {d} has padding (lo, hi)=({lo}, {hi})")
    return resolved


def check_dtype(dtype: Any) -> str:
    """The name of ``dtype`` when it is one of :data:`SUPPORTED_DTYPES`, else ``TypeError``."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(
            f"weight dtype {dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
        ) from exc
    if name not in SUPPORTED_DTYPES:
        raise TypeError(
            f"weight dtype {name} is not supported; use one of {', '.join(SUPPORTED_DTYPES)} "
            "(convert with weight.astype(...))"
        )
    return name


def shape_of(weight: Any) -> tuple[tuple[int, ...], Any]:
    """``(shape, dtype)`` of an array-like weight, or ``(shape, None)`` of a shape tuple."""
    if hasattr(weight, "shape") and hasattr(weight, "dtype"):
        return tuple(int(s) for s in weight.shape), weight.dtype
    if isinstance(weight, Sequence) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in weight
    ):
        return tuple(int(s) for s in weight), None
    raise TypeError(
        f"weight must be an array or a shape tuple of ints, got {type(weight).__name__}"
    )


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a non-empty tuple of positive ints."""
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise TypeError(
            f"input_shape must be a tuple of ints, got {input_shape!r} "
            f"({type(input_shape).__name__})"
        )
    shape = tuple(as_int(f"input_shape[{i}]", s) for i, s in enumerate(input_shape))
    if len(shape) == 0:
        raise ValueError("input_shape=() is empty; give (C_in, *spatial) or the spatial shape")
    for i, s in enumerate(shape):
        if s <= 0:
            raise ValueError(f"input_shape={shape} has a size {s} <= 0 at position {i}")
    return shape
