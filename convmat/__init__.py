"""convmat: exact sparse matrices of N-d deep-learning convolutions.

``W = conv_matrix(weight, input_shape, ...)`` is the CSR matrix of a convolution with
PyTorch's semantics (stride, padding, dilation, groups, padding modes), so that the
convolution is ``W @ x`` and the transposed convolution ``W.T @ y``. A CuPy weight gives a
``cupyx.scipy.sparse`` matrix and keeps everything on the GPU; :func:`to_gpu` and
:func:`to_cpu` move arrays, matrices and operators between the devices.
"""

from . import data
from .algebra import (
    MatrixOperator,
    Operator,
    ProductOperator,
    ScaledOperator,
    StackedOperator,
    SumOperator,
    hstack,
    identity_operator,
    vstack,
)
from .backend import ConvMatrixTooLarge, to_cpu, to_gpu
from .geometry import (
    ConvGeometry,
    conv_geometry,
    conv_transpose_geometry,
    output_shape,
)
from .interop import to_pylops, to_torch
from .layers import (
    adaptive_avg_pool_operator,
    avg_pool_operator,
    batch_norm_operator,
    channel_affine_operator,
    crop_operator,
    pad_operator,
    pixel_shuffle_operator,
    pixel_unshuffle_operator,
    sum_pool_operator,
    upsample_operator,
)
from .matrix import conv, conv_matrix, conv_transpose, conv_transpose_matrix
from .modules import from_torch
from .onnxgraph import from_onnx
from .operator import ConvOperator, gradient_operator
from .regularization import ParameterChoice, estimate_noise
from .separable import kron_matrix, kron_operator
from .solvers import DeconvolutionResult, deconvolve
from .spectral import (
    LipschitzBound,
    SingularTriplets,
    SpectralNorm,
    condition_number,
    lipschitz_bound,
    singular_values,
    spectral_norm,
    svds,
)

__all__ = [
    "ConvGeometry",
    "ConvMatrixTooLarge",
    "ConvOperator",
    "DeconvolutionResult",
    "LipschitzBound",
    "MatrixOperator",
    "Operator",
    "ParameterChoice",
    "ProductOperator",
    "ScaledOperator",
    "StackedOperator",
    "SingularTriplets",
    "SpectralNorm",
    "SumOperator",
    "adaptive_avg_pool_operator",
    "avg_pool_operator",
    "batch_norm_operator",
    "channel_affine_operator",
    "condition_number",
    "conv",
    "conv_geometry",
    "conv_matrix",
    "conv_transpose",
    "conv_transpose_geometry",
    "conv_transpose_matrix",
    "crop_operator",
    "data",
    "deconvolve",
    "estimate_noise",
    "from_onnx",
    "from_torch",
    "gradient_operator",
    "hstack",
    "identity_operator",
    "kron_matrix",
    "kron_operator",
    "lipschitz_bound",
    "output_shape",
    "pad_operator",
    "pixel_shuffle_operator",
    "pixel_unshuffle_operator",
    "singular_values",
    "spectral_norm",
    "sum_pool_operator",
    "svds",
    "to_cpu",
    "to_gpu",
    "to_pylops",
    "to_torch",
    "upsample_operator",
    "vstack",
]

__version__ = "0.1.0"
