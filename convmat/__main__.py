"""``python -m convmat``: the chapter's examples, then a multi-channel strided geometry."""

from __future__ import annotations

import sys

import numpy as np

from . import ConvOperator, conv_matrix, conv_transpose_matrix


def demo() -> None:
    """Print the chapter's matrices and a multi-channel summary."""
    np.set_printoptions(linewidth=100)
    K = np.array([[0.0, 1.0], [2.0, 3.0]])
    X = np.arange(9.0).reshape(3, 3)

    print("== The transposed-convolution chapter, as sparse matrices ==\n")
    W = conv_matrix(K, (3, 3))
    print("Kernel K:\n", K, sep="")
    print(f"\nW = conv_matrix(K, (3, 3)): {W.shape[0]}x{W.shape[1]} CSR, nnz={W.nnz}")
    print(W.toarray())
    print("\nW @ X.ravel() reshaped (the convolution of X = arange(9).reshape(3, 3)):")
    print((W @ X.ravel()).reshape(2, 2))
    Y = np.array([[0.0, 1.0], [2.0, 3.0]])
    print("\nW.T @ Y.ravel() reshaped: the transposed convolution trans_conv(Y, K):")
    print((W.T @ Y.ravel()).reshape(3, 3))
    Wt = conv_transpose_matrix(K, (2, 2), stride=2)
    print("\nWith stride 2 (conv_transpose_matrix(K, (2, 2), stride=2) @ Y.ravel()):")
    print((Wt @ Y.ravel()).reshape(4, 4))

    print("\n== A multi-channel strided convolution and its transpose ==\n")
    rng = np.random.default_rng(0)
    op = ConvOperator(rng.standard_normal((10, 3, 4, 4)), (3, 64, 64), stride=2, padding=1)
    print(op)
    print(op.T)
    x = rng.uniform(size=op.input_shape)
    y = op @ x
    print(f"x {x.shape} -> W @ x {y.shape} -> W.T @ (W @ x) {(op.T @ y).shape}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convmat`` command (see :mod:`convmat.cli`)."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
