"""Per-axis size formulas of convolutions: tiny pure functions whose docstring is the formula."""

from __future__ import annotations

__all__ = ["conv_output_size", "conv_transpose_output_size", "dilated_kernel_size"]


def dilated_kernel_size(kernel_size: int, dilation: int) -> int:
    """Span of a dilated kernel: ``dilation * (kernel_size - 1) + 1``."""
    return dilation * (kernel_size - 1) + 1


def conv_output_size(
    input_size: int, kernel_size: int, stride: int, dilation: int, pad_lo: int, pad_hi: int
) -> int:
    """Convolution output size: ``(n + lo + hi - dilation*(k-1) - 1) // stride + 1``."""
    return (input_size + pad_lo + pad_hi - dilated_kernel_size(kernel_size, dilation)) // stride + 1


def conv_transpose_output_size(
    input_size: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    pad_lo: int,
    pad_hi: int,
    output_padding: int,
) -> int:
    """Transposed-conv output: ``(n-1)*stride - lo - hi + dilation*(k-1) + output_padding + 1``."""
    return (
        (input_size - 1) * stride
        - pad_lo
        - pad_hi
        + dilated_kernel_size(kernel_size, dilation)
        + output_padding
    )
