"""Singular values of convolution operators: exact spectra, certified norms, conditioning.

* :func:`singular_values` gives *all* singular values: in FFT time for a circular convolution
  whose output tiles its input (stride dividing the size: the polyphase blocks of Sedghi et
  al. 2019 and Senderovich et al. 2022), by the dense SVD for small operators, and refuses
  otherwise (naming the size, suggesting :func:`svds`).
* :func:`svds` gives the top or bottom singular triplets on the operator's own products, the
  vectors shaped like the input and output, with their residuals.
* :func:`spectral_norm` gives ``sigma_max`` with a certified bracket ``lower <= sigma_max <=
  upper`` (proofs in its Notes); :func:`condition_number` the ratio of the extremes.

Every convolution here is read through its forward geometry: ``W``, ``W.T``, ``W.H`` and the
transposed convolution share their singular values.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from .algebra import (
    MatrixOperator,
    Operator,
    ProductOperator,
    ReshapedOperator,
    ScaledOperator,
    StackedOperator,
    SumOperator,
)
from .axes import padded_index
from .geometry import ConvGeometry
from .indices import default_threads, thread_pool
from .matrix import conv_weight
from .operator import ConvOperator
from .products import blas_threads

__all__ = [
    "DENSE_LIMIT",
    "LipschitzBound",
    "SingularTriplets",
    "SpectralNorm",
    "circular_spectrum",
    "condition_number",
    "embedding_bound",
    "gram_bound",
    "lipschitz_bound",
    "pointwise_norm",
    "singular_values",
    "spectral_norm",
    "svds",
]

#: The dense SVD is used up to this many matrix entries (``m * n``; 128 MiB in float64).
DENSE_LIMIT = 1 << 24


@dataclasses.dataclass(frozen=True)
class SpectralNorm:
    """``sigma_max`` of an operator and a certified bracket around it.

    Attributes
    ----------
    value : float
        The best estimate of ``sigma_max``.
    lower, upper : float
        ``lower <= sigma_max <= upper``, proven (see :func:`spectral_norm`).
    method : str
        How the value was found: ``'fft'`` (circular convolution, exact), ``'pointwise'`` (a
        1x1 zero-padded convolution: the largest of its groups' channel matrices' norms,
        exact), ``'dense'`` (the dense SVD) or ``'lanczos'`` (Lanczos on the operator's
        products).
    iterations, products : int
        Lanczos steps (products with the Gram matrix) and operator products used (0 for the
        exact methods).
    """

    value: float
    lower: float
    upper: float
    method: str
    iterations: int
    products: int

    @property
    def width(self) -> float:
        """The bracket's relative width ``(upper - lower) / upper``."""
        return (self.upper - self.lower) / self.upper if self.upper > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class SingularTriplets:
    """Singular triplets ``A v_i = s_i u_i``, ``A^H u_i = s_i v_i``.

    Attributes
    ----------
    s : ndarray
        ``(k,)`` singular values (largest first for ``which='largest'``, smallest first for
        ``'smallest'``).
    u : ndarray
        ``(k, *output_shape)`` left singular vectors.
    v : ndarray
        ``(k, *input_shape)`` right singular vectors.
    residuals : ndarray
        ``(k,)``: ``sqrt(||A v - s u||^2 + ||A^H u - s v||^2)``, measured with the
        operator's products; a singular value lies within ``residual / sqrt(2)`` of each
        ``s_i``.
    """

    s: np.ndarray
    u: np.ndarray
    v: np.ndarray
    residuals: np.ndarray


# --------------------------------------------------------------------------- circular
def _forward(op: ConvOperator) -> tuple[ConvGeometry, np.ndarray]:
    """The forward geometry and the weight ``(C_out, C_in/G, *k)`` the builder reads."""
    g = op.geometry.T if op.geometry.transposed else op.geometry
    w = conv_weight(g, op.weight)
    if op.xp is not np:
        w = op.xp.asnumpy(w)
    return g, np.asarray(w)


def _polyphase_blocks(w: np.ndarray, groups: int, size: tuple[int, ...],
                      stride: tuple[int, ...], dilation: tuple[int, ...],
                      shift: tuple[int, ...], half: bool = False
                      ) -> tuple[np.ndarray, tuple[int, ...]]:
    """The blocks ``M(f)`` of ``S_stride C`` on the torus ``size``, and their frequency grid.

    ``C x [j] = sum_t w[t] x[(j + d t - shift) mod n]`` (a circular correlation) and ``S``
    keeps every ``stride``-th output. In unitary Fourier bases both are block diagonal: with
    ``m = n / s`` and ``Khat(g) = sum_t w[t] exp(+2 pi i g (d t - shift) / n)``, the block of
    frequency ``f < m`` is ``[Khat(f + a m)]_a / sqrt(prod s)`` over the aliases ``a``
    (``C_out/G x C_in/G prod s``). The singular values of ``S C`` are those of the blocks.

    Returns ``(G, F, C_out/G, C_in/G prod s)`` (a view per group, no copy) and the grid
    ``F`` ravels. With ``half`` (a real kernel) only ``f_last <= m_last / 2``: the block at
    ``-f`` is the conjugate of the one at ``f`` with its aliases permuted, with the same
    singular values.
    """
    import scipy.fft

    cout, cin_g = w.shape[:2]
    cout_g = cout // groups
    nd = len(size)
    real = not np.iscomplexobj(w)
    c = np.zeros((cout, cin_g, *size), dtype=w.dtype if real else
                 np.result_type(w.dtype, np.complex64))
    for t in itertools.product(*(range(k) for k in w.shape[2:])):
        where = tuple((d * tt - sh) % n for d, tt, sh, n in zip(dilation, t, shift, size,
                                                                 strict=True))
        target: tuple[Any, ...] = (slice(None), slice(None), *where)
        source: tuple[Any, ...] = (slice(None), slice(None), *t)
        c[target] += w[source]
    axes = tuple(range(2, 2 + nd))
    workers = default_threads()
    if real:  # sum_u c[u] e^{+2 pi i g u / n} is the conjugate of the forward DFT
        khat = np.conj(scipy.fft.fftn(c, axes=axes, workers=workers))
    else:
        khat = scipy.fft.ifftn(c, axes=axes, workers=workers) * math.prod(size)
    m = tuple(n // s for n, s in zip(size, stride, strict=True))
    split = [cout, cin_g]
    for s, mm in zip(stride, m, strict=True):
        split += [s, mm]
    khat = khat.reshape(split)
    if half:
        khat = khat[..., :m[-1] // 2 + 1]
    grid = (*m[:-1], khat.shape[-1])
    order = ([2 + 2 * i + 1 for i in range(nd)] + [0, 1] + [2 + 2 * i for i in range(nd)])
    cols = cin_g * math.prod(stride)
    blocks = khat.transpose(order).reshape(math.prod(grid), cout, cols)
    blocks *= 1 / math.sqrt(math.prod(stride))
    blocks = blocks.reshape(blocks.shape[0], groups, cout_g, cols).transpose(1, 0, 2, 3)
    return blocks, grid


def pointwise_norm(op: Any) -> float | None:
    """``||W||_2`` of a 1x1 (pointwise) zero-padded convolution, exactly: ``max_g ||K_g||``.

    Every output reads one input position (or only padding zeros), distinct outputs distinct
    positions, so ``W = P (x) K`` per group with ``P`` a partial permutation: the singular
    values of ``W`` are those of the groups' ``C_out/G x C_in/G`` matrices and zeros. None
    when ``op`` is not such a convolution (or no output reads the input).
    """
    if not isinstance(op, ConvOperator):
        return None
    g, w = _forward(op)
    if any(k != 1 for k in g.kernel_size) or g.padding_mode != "zeros":
        return None
    reads = all(any(0 <= s * o - lo < n for o in range(out)) for n, s, (lo, _), out in zip(
        g.input_size, g.stride, g.padding, g.output_size, strict=True))
    if not reads:
        return None
    mats = w.reshape(g.groups, g.out_channels // g.groups, -1)
    return float(np.linalg.svd(mats, compute_uv=False).max(initial=0.0))


def circular_spectrum(op: Any) -> np.ndarray | None:
    """All singular values of a circular convolution whose output tiles its input, by FFT.

    Returns None unless ``op`` is a :class:`ConvOperator` (or its transpose) with
    ``padding_mode='circular'``, every stride dividing its input size and the output size
    ``n / stride`` on every axis (``lo + hi = dilation*(k - 1) - r`` for some
    ``0 <= r < stride``, e.g. ``padding='same'`` at stride 1). Then ``W = S C`` with ``C``
    circulant (block circulant over channels) and ``S`` the subsampling, and the singular
    values are those of one small matrix per frequency (see :func:`_polyphase_blocks`):
    ``prod(n / s)`` matrices of ``C_out/G x (C_in/G) prod(s)`` per group.

    Examples
    --------
    >>> w = np.array([[[1.0, 2.0, 3.0]]])
    >>> op = ConvOperator(w, (1, 8), padding=1, padding_mode="circular")
    >>> s = circular_spectrum(op)
    >>> bool(np.allclose(np.sort(s), np.sort(np.linalg.svd(op.matrix.toarray(),
    ...                                                    compute_uv=False))))
    True
    """
    if not isinstance(op, ConvOperator):
        return None
    g, w = _forward(op)
    if g.padding_mode != "circular":
        return None
    for n, s, o in zip(g.input_size, g.stride, g.output_size, strict=True):
        if n % s or o != n // s:
            return None
    blocks, _ = _polyphase_blocks(w, g.groups, g.input_size, g.stride, g.dilation,
                                  tuple(lo for lo, _ in g.padding))
    return _per_block(lambda m: np.linalg.svd(m, compute_uv=False), blocks).reshape(-1)


def embedding_bound(op: ConvOperator) -> float:
    """A proven upper bound on ``||W||_2``: the circular operator it is a restriction of.

    Per axis, the padded input of size ``N = n + lo + hi`` sits in a torus of size
    ``N' = s ceil(N / s)``; the convolution reads positions ``s o + d t < N``, so it never
    wraps, and ``W = R S C E P``: ``P`` the padding map, ``E`` the embedding of the padded
    input in the torus (an isometry), ``C`` the circular correlation on the torus, ``S`` the
    subsampling by the stride and ``R`` the selection of the ``out`` outputs (norm <= 1).
    Hence ``||W|| <= ||S C|| ||P||``, with ``||S C||`` exact by :func:`_polyphase_blocks` and
    ``||P|| = prod_axes sqrt(max copies of one input sample)`` (1 for zero padding: ``P`` is
    then an embedding too; ``P^T P`` is diagonal, the copies counted).

    Examples
    --------
    >>> op = ConvOperator(np.ones((1, 1, 3)), (1, 6), padding=1)
    >>> dense = np.linalg.norm(op.matrix.toarray(), 2)
    >>> bool(dense <= embedding_bound(op)), round(embedding_bound(op), 6)
    (True, 3.0)
    """
    return _embedding(op)[0]


def _embedding(op: ConvOperator) -> tuple[float, np.ndarray | None]:
    """:func:`embedding_bound` and the top singular vector of ``S C`` restricted to the input.

    The vector (flat, the forward convolution's input; None for a transposed operator) is
    the plane waves of the block's top right singular vector at its aliased frequencies: a
    start for Lanczos close to the top of the spectrum.
    """
    g, w = _forward(op)
    size = [s * -(-(n + lo + hi) // s)
            for n, s, (lo, hi) in zip(g.input_size, g.stride, g.padding, strict=True)]
    copies = _copies(g)
    w = w.astype(np.result_type(w.dtype, np.float64))  # exact; the rounding below is tiny
    blocks, grid = _polyphase_blocks(w, g.groups, tuple(size), g.stride, g.dilation,
                                     (0,) * g.ndim, half=not np.iscomplexobj(w))
    if blocks.size == 0:
        return 0.0, None
    tops = _top_singular_values(blocks)  # (G, F)
    group, index = np.unravel_index(int(np.argmax(tops)), tops.shape)
    eps = float(np.finfo(blocks.dtype).eps)
    a, b = blocks.shape[-2:]
    # The FFT's rounding, ||fl(Y) - Y||_F <= eta ||Y||_F over all the transforms (Higham
    # 2002, Thm 24.2: eta = L (mu + gamma_4 (sqrt 2 + mu)) for L radix-2 stages; 16 eps per
    # stage and two more stages per axis allow for pocketfft's other radices and Bluestein),
    # bounds every block's error; the half spectrum holds at least half of ||Y||_F^2.
    stages = sum(math.ceil(math.log2(max(n, 2))) + 2 for n in size)
    eta = _gamma(16 * stages, eps)
    fft_error = eta / (1 - eta) * math.sqrt(2) * float(np.linalg.norm(blocks.ravel()))
    # LAPACK's SVD is backward stable (p(m, n) eps ||B||, p taken as 8 max(a, b)); the Gram
    # route's rounding, gamma_k ||B||_F^2 <= k rank eps ||B||^2, under its square root.
    lapack = 8 * max(a, b) * eps + max(a, b) * min(a, b) * eps
    top = (float(tops.max()) + fft_error) * (1 + lapack)
    start = None
    if not op.geometry.transposed:
        _, _, vh = np.linalg.svd(blocks[group, index])
        f = tuple(int(v) for v in np.unravel_index(int(index), grid))
        start = _plane_waves(vh[0].conj(), g, tuple(size), f, int(group))
    return top * math.sqrt(copies) * (1 + 4 * eps), start


def _copies(g: ConvGeometry) -> int:
    """The most copies of one input sample in the padded input (1 for zero padding)."""
    copies = 1
    for n, (lo, hi) in zip(g.input_size, g.padding, strict=True):
        if g.padding_mode != "zeros" and (lo or hi):
            src = padded_index(np.arange(-lo, n + hi), n, g.padding_mode)
            copies *= int(np.bincount(src[src >= 0], minlength=n).max())
    return copies


def _per_block(fn: Any, blocks: np.ndarray) -> np.ndarray:
    """``fn`` (a batched LAPACK call) on ``blocks`` split over convmat's threads.

    NumPy's batched ``svd`` / ``eigvalsh`` loop over the blocks on one thread; the chunks run
    concurrently (LAPACK releases the GIL), each with BLAS held to one thread.
    """
    lead = blocks.shape[:-2]
    flat = blocks.reshape(-1, *blocks.shape[-2:])
    parts = min(default_threads(), flat.shape[0])
    if parts <= 1:
        return fn(blocks)
    chunks = np.array_split(flat, parts)
    with blas_threads(1):
        results = list(thread_pool().map(fn, chunks))
    out = np.concatenate(results)
    return out.reshape(*lead, *out.shape[1:])


def _top_singular_values(blocks: np.ndarray) -> np.ndarray:
    """The largest singular value of each block (the last two axes).

    Square-ish blocks go to the SVD; a block twice as wide as tall (or taller than wide) to
    the largest eigenvalue of its smaller Gram matrix (three times faster; the rounding of
    forming ``G`` and of its eigenvalue is in :func:`embedding_bound`'s slack).
    """
    a, b = blocks.shape[-2:]
    if max(a, b) < 2 * min(a, b):
        return _per_block(lambda m: np.linalg.svd(m, compute_uv=False)[..., 0], blocks)

    def top(m: np.ndarray) -> np.ndarray:
        h = m.conj().swapaxes(-1, -2)
        gram = m @ h if a < b else h @ m
        return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[..., -1], 0.0))

    return _per_block(top, blocks)


def _plane_waves(v: np.ndarray, g: ConvGeometry, size: tuple[int, ...], f: tuple[int, ...],
                 group: int) -> np.ndarray:
    """``sum_a v_a exp(2 pi i (f + a m) . u / N)`` on the input (at its padding offset)."""
    nd = g.ndim
    m = tuple(n // s for n, s in zip(size, g.stride, strict=True))
    cin_g = g.in_channels // g.groups
    v = v.reshape(cin_g, *g.stride)
    x = np.zeros((g.in_channels, *g.input_size), dtype=complex)
    grids = np.meshgrid(*(np.arange(n) + lo for n, (lo, _) in zip(g.input_size, g.padding,
                                                                 strict=True)),
                        indexing="ij")
    for alias in itertools.product(*(range(s) for s in g.stride)):
        phase = sum((f[i] + alias[i] * m[i]) * grids[i] / size[i] for i in range(nd))
        wave = np.exp(-2j * np.pi * phase)
        index: tuple[Any, ...] = (slice(None), *alias)
        x[group * cin_g:(group + 1) * cin_g] += v[index].reshape((cin_g,) + (1,) * nd) * wave
    return x.reshape(-1)


def _upper(op: Operator) -> float:
    """A proven upper bound on ``||op||_2`` from the operator's structure (inf if none)."""
    if isinstance(op, ConvOperator):
        return _embedding(op)[0]
    if isinstance(op, ScaledOperator):
        (part,) = op.parts
        return abs(complex(op.alpha)) * _upper(part)
    if isinstance(op, ProductOperator):
        return math.prod(_upper(p) for p in op.parts)
    if isinstance(op, SumOperator):
        return sum(_upper(p) for p in op.parts)
    if isinstance(op, StackedOperator):  # ||[A; B]||^2, ||[A, B]||^2 <= ||A||^2 + ||B||^2
        return math.sqrt(sum(_upper(p) ** 2 for p in op.parts))
    if isinstance(op, ReshapedOperator):
        return _upper(op.parts[0])
    if isinstance(op, MatrixOperator):
        return gram_bound(op.matrix)
    return math.inf


def gram_bound(matrix: Any, steps: int = 4, growth: float = 16.0) -> float:
    """A proven upper bound on ``||A||_2`` of an explicit sparse matrix: Gram iteration.

    ``G_0 = A``, ``G_{t+1} = G_t^H G_t``: ``||A||^(2^t) = ||G_t||_2 <= ||G_t||_F``, so
    ``||A|| <= ||G_t||_F^(1/2^t)``, which tightens with ``t`` (Delattre et al. 2023; the
    first step is Hoelder's ``sqrt(||A||_1 ||A||_inf)`` too, whichever is smaller). The
    products stop once they hold ``growth`` times the entries of ``A`` (or after
    ``steps``). The work is in double precision, each ``G_t`` scaled to Frobenius norm
    about 1, and the bound carries every rounding (see Notes).

    Notes
    -----
    With ``s_t = fl(||G_t||_F)``, ``H_t = fl(G_t / s_t)`` and ``G_{t+1} = fl(H_t^H H_t)``
    (``k_t`` terms per entry at most, the entries of a column of ``H_t``), and ``c`` a bound
    on ``||H_t||_F``: ``||G_t||_2 <= s_t (||H_t||_2 + eps c)`` (the scaling's rounding) and
    ``||H_t||_2^2 = ||H_t^H H_t||_2 <= ||G_{t+1}||_2 + gamma_{k_t} c^2`` (the product's,
    Higham 2002 eq. 3.13 in Frobenius norm). Unrolled from ``||G_T||_2 <= ||G_T||_F``, read
    back from the last step.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> a = sp.csr_array(np.array([[3.0, 1.0], [0.0, 2.0]]))
    >>> norm = np.linalg.norm(a.toarray(), 2)
    >>> bool(norm <= gram_bound(a) <= 1.01 * norm)
    True
    """
    import scipy.sparse as sp

    a = sp.csr_array(matrix)
    a = a.astype(np.result_type(a.dtype, np.float64))
    if a.nnz == 0:
        return 0.0
    eps = float(np.finfo(np.float64).eps)
    scale = 2 if a.dtype.kind == "c" else 1  # a complex product: twice the roundings
    absolute = abs(a)
    per_line = max(np.diff(a.indptr).max(initial=1), np.bincount(a.indices).max(initial=1))
    best = math.sqrt(float(absolute.sum(axis=0).max()) * float(absolute.sum(axis=1).max())) \
        * (1 + _gamma(per_line + 4, eps))  # the sums' rounding
    limit = growth * a.nnz
    chain: list[tuple[float, float, float]] = []  # (s_t, gamma_{k_t}, c_t) per step
    g = a
    for step in range(steps + 1):
        fro = float(sp.linalg.norm(g))
        if fro == 0:
            return 0.0
        frobenius = fro * (1 + _gamma(g.nnz + 4, eps))  # >= ||G_t||_F
        bound = frobenius  # >= ||G_t||_2, read back to ||A||
        for s_t, gk, c in reversed(chain):
            bound = s_t * (math.sqrt(bound + gk * c * c) + eps * c) * (1 + 4 * eps)
        best = min(best, bound)
        if step == steps or g.nnz > limit:
            break
        h = (g / fro).tocsr()
        c = frobenius / fro * (1 + 2 * eps)  # >= ||H_t||_F
        terms = int(np.bincount(h.indices, minlength=h.shape[1]).max(initial=1))
        chain.append((fro, _gamma(scale * terms + 2, eps), c))
        g = (h.conj().T @ h).tocsr()
    return best


# --------------------------------------------------------------------------- public
def singular_values(op: Any, *, dense_limit: int = DENSE_LIMIT) -> np.ndarray:
    """All singular values of an operator, largest first.

    Parameters
    ----------
    op : convmat operator, sparse matrix or 2-D array
        A circular :class:`ConvOperator` whose output tiles its input goes through
        :func:`circular_spectrum` (FFT time); anything with at most ``dense_limit`` entries
        through the dense SVD (LAPACK).
    dense_limit : int
        The most matrix entries ``m * n`` the dense SVD takes.

    Returns
    -------
    ndarray
        ``min(m, n)`` singular values, descending (float64).

    Raises
    ------
    ValueError
        Neither path applies: the message names the size and suggests :func:`svds`.

    Examples
    --------
    >>> op = ConvOperator(np.ones((2, 1, 3, 3)), (1, 16, 16), padding="same",
    ...                   padding_mode="circular")
    >>> s = singular_values(op)  # 256 singular values from 256 2x1 blocks
    >>> s.shape, bool(np.isclose(s[0], 9 * np.sqrt(2)))  # frequency 0: the block [9; 9]
    ((256,), True)
    """
    s = circular_spectrum(op)
    if s is not None:
        return np.sort(s)[::-1]
    m, n = (int(v) for v in op.shape)
    if m * n > dense_limit:
        raise ValueError(
            f"the operator is {m} x {n} ({m * n:,} entries > dense_limit={dense_limit:,}) and "
            "not a circular convolution whose output tiles its input: all its singular values "
            "are out of reach; use convmat.svds(op, k) for the largest or smallest few, or "
            "convmat.spectral_norm(op)")
    return np.linalg.svd(_dense(op), compute_uv=False)


def _dense(op: Any) -> np.ndarray:
    if isinstance(op, Operator):
        a = op.matrix
    else:
        a = op
    a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
    return a.get() if hasattr(a, "get") else a


def _linear_operator(op: Any) -> Any:
    from scipy.sparse.linalg import aslinearoperator

    return op.linear if isinstance(op, Operator) else aslinearoperator(op)


def svds(op: Any, k: int = 1, *, which: str = "largest", tol: float = 0.0,
         maxiter: int | None = None, random_state: Any = 0) -> SingularTriplets:
    """The ``k`` largest or smallest singular triplets, on the operator's own products.

    SciPy's ``svds`` (ARPACK's Lanczos on ``A^H A``), applied through the operator's fastest
    path (the matrix is not formed); the vectors come back shaped like the input and output.

    Parameters
    ----------
    op : convmat operator or sparse matrix
    k : int
        ``1 <= k < min(m, n)`` (``min(m, n) - 1`` for complex operators: ARPACK's rule).
    which : {'largest', 'smallest'}
    tol, maxiter, random_state
        As ``scipy.sparse.linalg.svds`` (tol 0: machine precision; a seeded start).

    Returns
    -------
    SingularTriplets

    Raises
    ------
    ValueError
        ``which`` unknown, ``k`` out of range.
    scipy.sparse.linalg.ArpackNoConvergence
        ARPACK did not converge within ``maxiter`` (the message says how far it got).

    Examples
    --------
    >>> op = ConvOperator(np.ones((3, 3)), (8, 8), padding=1)
    >>> t = svds(op, k=2)
    >>> dense = np.linalg.svd(op.matrix.toarray(), compute_uv=False)[:2]
    >>> t.v.shape, bool(t.residuals.max() < 1e-10), bool(np.allclose(t.s, dense))
    ((2, 8, 8), True, True)
    """
    from scipy.sparse.linalg import svds as scipy_svds

    if which not in ("largest", "smallest"):
        raise ValueError(f"which={which!r} must be 'largest' or 'smallest'")
    m, n = (int(v) for v in op.shape)
    limit = min(m, n) - (1 if np.dtype(op.dtype).kind == "c" else 0)  # ARPACK's rule
    if not 1 <= k < limit:
        raise ValueError(f"k={k} must satisfy 1 <= k < {limit} (min(m, n) = {min(m, n)}"
                         f"{', less 1 for complex operators' if limit < min(m, n) else ''})")
    lin = _linear_operator(op)
    from scipy.sparse.linalg import ArpackNoConvergence

    try:
        u, s, vh = scipy_svds(lin, k=k, which="LM" if which == "largest" else "SM", tol=tol,
                              maxiter=maxiter, random_state=random_state)
    except ArpackNoConvergence as e:
        dtype = np.dtype(op.dtype)
        raise ArpackNoConvergence(
            f"svds: ARPACK converged to {len(e.eigenvalues)} of the {k} {which} singular "
            f"triplets (tol={tol}{' (machine precision)' if tol == 0 else ''}, "
            f"maxiter={maxiter}, {dtype}); raise maxiter or loosen tol: the smallest "
            f"singular values of a {dtype} operator are known only to about "
            f"{np.finfo(dtype).eps:.1e} times the largest", e.eigenvalues,
            e.eigenvectors) from e
    order = np.argsort(s)[::-1] if which == "largest" else np.argsort(s)
    s, u, v = s[order], u[:, order], vh[order].conj().T
    res = np.sqrt(np.sum(np.abs(lin.matmat(v) - u * s) ** 2, axis=0)
                  + np.sum(np.abs(lin.rmatmat(u) - v * s) ** 2, axis=0))
    ins = op.input_shape if isinstance(op, Operator) else (n,)
    outs = op.output_shape if isinstance(op, Operator) else (m,)
    return SingularTriplets(s, u.T.reshape((k, *outs)), v.T.reshape((k, *ins)), res)


def spectral_norm(op: Any, rtol: float = 1e-8, *, dense_limit: int = DENSE_LIMIT,
                  maxiter: int | None = None) -> SpectralNorm:
    """``sigma_max`` of any operator, with a certified bracket.

    Parameters
    ----------
    op : convmat operator or sparse matrix
        Convolutions (any padding mode, stride, groups, transposed), the layers,
        compositions, sums, stacks.
    rtol : float
        The relative accuracy asked of the Lanczos value.
    dense_limit : int
        Operators with at most this many entries (or with ``min(m, n) <= 3``, below what
        Lanczos takes) go through the dense SVD.
    maxiter : int, optional
        Lanczos restarts (ARPACK's default without).

    Returns
    -------
    SpectralNorm
        ``value``, ``lower <= sigma_max <= upper``, ``method``, ``iterations``,
        ``products``.

    Notes
    -----
    *Exact methods.* A circular convolution whose output tiles its input is block diagonal
    in unitary Fourier bases (:func:`circular_spectrum`): its singular values are those of
    the blocks, computed by LAPACK; small operators go to the dense SVD. LAPACK's SVD is
    backward stable, ``|s_hat - s| <= p eps ||A||`` with ``p`` a modest function of the
    size; the bracket is ``s_hat (1 -+ max(m, n) eps)``, counting the FFT's rounding too.

    *The value.* Lanczos (ARPACK's ``eigsh``) on the smaller Gram matrix ``W^H W`` or
    ``W W^H``, applied by the operator's products, to a residual of ``sqrt(rtol) / 10``: the
    Ritz value's error goes as the squared residual over the spectral gap. For a
    convolution it starts from the plane waves of the circular embedding's top singular
    vector, close to the top of the spectrum. The value reported is ``||W v|| / ||v||`` at
    the Ritz vector.

    *Lower bound.* For any nonzero ``v``, ``||A v|| / ||v|| <= sigma_max`` (the definition of
    the norm). ``lower`` is that ratio at Lanczos' top right singular vector, less its
    rounding: ``A v`` is computed on paths whose rounding is bounded entry by entry (CSR
    rows, or the im2col GEMMs and overlap-adds; never the FFT), ``|fl(A v) - A v| <=
    gamma_K |A| |v|`` with ``K`` the terms one output sums, and ``|A| |v|`` is computed
    too (Higham 2002, eq. 3.5; norms in float64). ``upper`` carries ``16 eps`` for the
    rounding of the operator's own matrices (a scaling or a composition in float32 rounds
    its entries).

    *Upper bound.* ``upper`` is proven from the operator's structure: a convolution is a
    restriction of a circular one on a torus holding its padded input
    (:func:`embedding_bound`: ``||W|| <= ||S C|| ||P||``, in FFT time, in double precision,
    carrying the FFT's rounding (Higham 2002, Thm 24.2) and LAPACK's); compositions
    multiply (``||B A|| <= ||B|| ||A||``), sums add, scalings scale, stacks add in squares;
    an explicit matrix (a layer: pooling, upsampling, padding) by Gram iteration,
    ``||A|| <= ||(A^H A)^(2^(t-1))||_F^(1/2^t)``, every rounding carried
    (:func:`gram_bound`). Lanczos' value is
    not a proof of the top (a start vector could miss its singular vector), so it never
    tightens ``upper``; zero padding makes the embedding bound a few percent loose, stride
    more (the table in README).

    Examples
    --------
    >>> w = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    >>> op = ConvOperator(w, (2, 12, 12), stride=2, padding=1)
    >>> r = spectral_norm(op)
    >>> bool(r.lower <= np.linalg.norm(op.matrix.toarray(), 2) <= r.upper), r.method
    (True, 'dense')
    """
    m, n = (int(v) for v in op.shape)
    eps = float(np.finfo(np.dtype(op.dtype)).eps)
    exact = circular_spectrum(op)
    method = "fft"
    pointwise = pointwise_norm(op) if exact is None else None
    if pointwise is not None:
        exact, method = np.array([pointwise]), "pointwise"
    if exact is None and (m * n <= dense_limit or min(m, n) <= 3):  # tiny: ARPACK cannot
        exact, method = np.linalg.svd(_dense(op), compute_uv=False), "dense"
    if exact is not None:
        top = float(np.max(exact, initial=0.0))
        slack = max(m, n) * eps * top
        return SpectralNorm(top, max(top - slack, 0.0), top + slack, method, 0, 0)
    lin = _linear_operator(op)
    upper, start = _bounds(op)
    right = n <= m  # Lanczos on the smaller Gram matrix: W^H W, or W W^H
    products, steps = [0], [0]

    def gram(x: Any) -> Any:
        products[0] += 2
        steps[0] += 1
        x = np.asarray(x).reshape(-1)
        return lin.rmatvec(lin.matvec(x)) if right else lin.matvec(lin.rmatvec(x))

    from scipy.sparse.linalg import LinearOperator, eigsh

    size = n if right else m
    dtype = np.dtype(op.dtype)
    noise = np.random.default_rng(0).standard_normal(size)
    if start is None or not right:
        start = noise
    v0 = (start if dtype.kind == "c" else start.real).astype(dtype)
    if not np.linalg.norm(v0) > 0:  # a plane wave whose real part vanishes on the input
        v0 = noise.astype(dtype)
    gram_op = LinearOperator((size, size), matvec=gram, dtype=dtype)
    tol = math.sqrt(rtol) / 10  # the Ritz value's error goes as the residual squared
    from scipy.sparse.linalg import ArpackError

    try:
        _, vecs = eigsh(gram_op, k=1, which="LA", tol=tol, v0=v0, maxiter=maxiter)
    except ArpackError:  # the start (or the operator) vanishes: from noise, or zero
        try:
            _, vecs = eigsh(gram_op, k=1, which="LA", tol=tol, v0=noise.astype(dtype),
                            maxiter=maxiter)
        except ArpackError:
            if np.linalg.norm(gram(noise.astype(dtype))) > 0:
                raise
            return SpectralNorm(0.0, 0.0, upper * (1 + 16 * eps), "lanczos", steps[0],
                                products[0])
    v = vecs[:, 0] if right else lin.rmatvec(vecs[:, 0])
    products[0] += 0 if right else 1
    ratio, lower = _certified_ratio(op, v)
    products[0] += 2
    upper *= 1 + 16 * eps  # the operator's own rounding (a scaled or composed matrix)
    return SpectralNorm(min(ratio, upper), lower, max(upper, lower), "lanczos", steps[0],
                        products[0])


def _gamma(k: float, eps: float) -> float:
    """Higham's ``gamma_k = k eps / (1 - k eps)`` (inf once ``k eps >= 1``)."""
    return k * eps / (1 - k * eps) if k * eps < 1 else math.inf


def _majorant(op: Operator) -> tuple[Operator, Operator, int] | None:
    """``(A, |A|, K)``: ``A`` on exactly-bounded paths, its majorant, the terms it sums.

    ``A`` is the operator on paths with componentwise rounding bounds, ``|A|`` a
    nonnegative operator ``>= |entries of A|`` and ``K`` the terms one output sums.

    With ``A`` applied on these paths (CSR rows, or im2col GEMMs, gathers and overlap-adds:
    sums of products, in any order), ``|fl(A v) - A v| <= gamma_K |A| |v|`` entry by entry
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5; a
    composition adds its parts' ``K``, a sum or a scaling one more rounding, a complex
    product doubles them). None for an operator of unknown structure.
    """
    if isinstance(op, ConvOperator):
        g, _ = _forward(op)
        window = math.prod(g.kernel_size)
        terms = (g.in_channels + g.out_channels) // g.groups * window * _copies(g)
        direct = op.with_method("direct")
        return direct, direct.with_weight(abs(op.weight)), terms
    if isinstance(op, MatrixOperator):
        import scipy.sparse as sp

        a = op.matrix
        if op.xp is not np or not sp.issparse(a):
            return None
        a = sp.csr_array(a)
        terms = int(np.diff(a.indptr).max(initial=0))
        return op, MatrixOperator(abs(a), op.input_shape, op.output_shape), terms
    if not isinstance(op, ProductOperator | SumOperator | ScaledOperator | StackedOperator
                      | ReshapedOperator):
        return None
    found = [_majorant(p) for p in op.parts]
    if any(f is None for f in found):
        return None
    parts = [f for f in found if f is not None]
    exact = op._rebuild([f[0] for f in parts])
    if isinstance(op, ScaledOperator):
        return exact, ScaledOperator(abs(op.alpha), parts[0][1]), parts[0][2] + 1
    mag = op._rebuild([f[1] for f in parts])
    if isinstance(op, ProductOperator):
        return exact, mag, sum(f[2] for f in parts)
    if isinstance(op, SumOperator):
        return exact, mag, max(f[2] for f in parts) + len(parts) - 1
    return exact, mag, max(f[2] for f in parts)


def _certified_ratio(op: Any, v: Any) -> tuple[float, float]:
    """``||A v|| / ||v||`` and a proven lower bound on it (so on ``sigma_max``).

    ``A v`` is computed on paths with a componentwise rounding bound (:func:`_majorant`):
    ``||A v|| >= ||fl(A v)|| - gamma_K || |A| |v| ||``, with ``|A| |v|`` computed too (sums
    of nonnegative terms: ``fl <= (1 + gamma_K)`` times the exact). Norms are taken in
    float64 (their rounding ``gamma_{m+2}`` of float64 is counted). The lower bound is 0
    for operators of unknown structure.
    """
    op = op if isinstance(op, Operator) else MatrixOperator(op)
    found = _majorant(op.linear)
    lin = op.linear if found is None else found[0]
    y_norm, v_norm = _norm64(lin._flat(v)), _norm64(v)
    if found is None:
        return y_norm / v_norm, 0.0
    _, mag, terms = found
    real = np.finfo(np.dtype(op.dtype))  # the real dtype behind op's (complex too)
    if np.dtype(op.dtype).kind == "c":
        terms = 2 * terms + 2
    gk = _gamma(terms, float(real.eps))
    g64 = _gamma(max(op.shape) + 2, float(np.finfo(np.float64).eps))
    bound = _norm64(mag._flat(abs(v).astype(real.dtype)))
    error = gk / (1 - gk) * bound * (1 + g64) if gk < 1 else math.inf
    lower = (y_norm * (1 - g64) - error) / (v_norm * (1 + g64))
    return y_norm / v_norm, max(lower, 0.0)


def _norm64(x: Any) -> float:
    """The 2-norm of ``x`` taken in double precision (single inputs widen exactly)."""
    x = x.get() if hasattr(x, "get") else np.asarray(x)
    return float(np.linalg.norm(x.astype(np.result_type(x.dtype, np.float64)).ravel()))


def _bounds(op: Any) -> tuple[float, np.ndarray | None]:
    """The proven upper bound, and a Lanczos start vector where the structure gives one."""
    if isinstance(op, ConvOperator):
        return _embedding(op)
    return _upper(op.linear if isinstance(op, Operator) else MatrixOperator(op)), None


def condition_number(op: Any, *, dense_limit: int = DENSE_LIMIT) -> float:
    """``sigma_max / sigma_min``: inf for a rank-deficient operator.

    On the Lanczos path, inf too when ``sigma_min`` is below ``max(m, n) eps sigma_max``.
    Exact where :func:`singular_values` is (circular, small); otherwise from :func:`svds`'s
    largest and smallest (Lanczos; the smallest converges slowly for ill-conditioned
    operators). For a wide matrix ``sigma_min`` is the ``min(m, n)``-th singular value.

    Examples
    --------
    >>> op = ConvOperator(np.array([1.0, 0.5]), (6,), padding=((0, 1),))
    >>> s = np.linalg.svd(op.matrix.toarray(), compute_uv=False)
    >>> bool(np.isclose(condition_number(op), s[0] / s[-1]))
    True
    """
    try:
        s = singular_values(op, dense_limit=dense_limit)
    except ValueError:
        top = svds(op, 1).s[0]
        bottom = svds(op, 1, which="smallest").s[0]
        eps = float(np.finfo(np.dtype(op.dtype)).eps)
        return float(top / bottom) if bottom > max(op.shape) * eps * top else math.inf
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


# --------------------------------------------------------------------------- networks
@dataclasses.dataclass(frozen=True)
class LipschitzBound:
    """Lipschitz bounds of a ``torch.nn.Sequential`` in the 2-norm.

    Attributes
    ----------
    bound : float
        Proven: the product of the composed linear runs' certified upper bounds and of the
        nonlinear steps' constants.
    estimate : float
        The same product with each run's exact norm (its Lanczos value, or the exact one for
        small runs) in place of its upper bound: the tightest bound of this product form,
        as exact as the values.
    product_of_layers : float
        The product of every linear layer's norm (its value) and the nonlinear constants:
        the usual layer-wise bound, for comparison.
    layers : tuple of (str, SpectralNorm)
        Every linear layer, ``'<position>: <class>'``, with its value and bracket.
    runs : tuple of (str, SpectralNorm)
        Every maximal run of consecutive linear layers, composed exactly.
    nonlinear : tuple of (str, float)
        The Lipschitz constant of each nonlinear step (1 for the activations; ``sqrt`` of
        the most windows one input falls in, for max pooling).
    """

    bound: float
    estimate: float
    product_of_layers: float
    layers: tuple[tuple[str, SpectralNorm], ...]
    runs: tuple[tuple[str, SpectralNorm], ...]
    nonlinear: tuple[tuple[str, float], ...]


#: Elementwise activations that are 1-Lipschitz (LeakyReLU when ``|negative_slope| <= 1``).
ONE_LIPSCHITZ = ("ReLU", "ReLU6", "Hardtanh", "Tanh", "LeakyReLU", "Softsign")


def _max_pool_constant(m: Any) -> float | None:
    """``sqrt`` of the most windows one input lies in (``prod ceil(span / stride)``)."""
    name = type(m).__name__
    if not name.startswith("MaxPool"):
        return None
    nd = int(name[-2])

    def per_axis(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd

    k, s, d = per_axis(m.kernel_size), per_axis(m.stride), per_axis(m.dilation)
    windows = math.prod(-(-(dd * (kk - 1) + 1) // ss) for kk, ss, dd in zip(k, s, d,
                                                                          strict=True))
    return math.sqrt(windows)


def lipschitz_bound(model: Any, input_shape: Any, *, rtol: float = 1e-6) -> LipschitzBound:
    """Lipschitz bounds of a ``torch.nn.Sequential`` of linear layers and activations.

    Parameters
    ----------
    model : torch.nn.Sequential
        Linear modules (anything :func:`convmat.from_torch` maps), 1-Lipschitz elementwise
        activations (:data:`ONE_LIPSCHITZ`) and max pooling, in eval mode.
    input_shape : tuple of int
        One sample's shape.
    rtol : float
        As :func:`spectral_norm`, for every layer and run.

    Returns
    -------
    LipschitzBound

    Raises
    ------
    TypeError
        Not a ``torch.nn.Sequential``.
    ValueError
        A module that is neither mapped by :func:`convmat.from_torch` nor a known
        Lipschitz step (named with its position), a ``LeakyReLU`` steeper than 1.

    Notes
    -----
    ``f = g_L o ... o g_1`` with every step Lipschitz: ``Lip(f) <= prod Lip(g_i)``; an
    affine map's constant is its linear part's norm, and merging consecutive affine steps
    into their exact composition ``A_j ... A_i`` can only lower the product
    (``||A B|| <= ||A|| ||B||``). Max pooling moves each output by at most the largest
    change in its window, so ``||maxpool(x) - maxpool(y)||^2`` is at most the number of
    windows an input lies in times ``||x - y||^2``.

    Examples
    --------
    >>> import torch
    >>> nn = torch.nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AvgPool2d(2), nn.ReLU(),
    ...                     nn.Flatten(), nn.Linear(64, 2)).double()
    >>> r = lipschitz_bound(net, (1, 8, 8))
    >>> bool(r.estimate <= r.bound and r.estimate <= r.product_of_layers)
    True
    """
    import torch

    from .modules import CONVERTERS, from_torch

    if not isinstance(model, torch.nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    shape = tuple(int(v) for v in input_shape)
    layers: list[tuple[str, SpectralNorm]] = []
    runs: list[tuple[str, SpectralNorm]] = []
    nonlinear: list[tuple[str, float]] = []
    run: list[tuple[str, Operator]] = []

    def close() -> None:
        if run:
            composed = run[0][1] if len(run) == 1 else ProductOperator(
                [op for _, op in reversed(run)])
            runs.append((" -> ".join(name for name, _ in run), spectral_norm(composed, rtol)))
            run.clear()

    with torch.no_grad():
        for i, m in enumerate(model):
            name = f"{i}: {type(m).__name__}"
            kind = type(m).__name__
            pool = _max_pool_constant(m)
            if kind in ONE_LIPSCHITZ or pool is not None:
                if type(m) is not getattr(torch.nn, kind, None) or m._forward_hooks \
                        or m._forward_pre_hooks:
                    raise ValueError(f"{name} is not torch.nn.{kind} itself (a subclass, a "
                                     "look-alike or a module with hooks): its Lipschitz "
                                     "constant is unknown")
                slope = abs(float(getattr(m, "negative_slope", 0.0)))
                if slope > 1:
                    raise ValueError(f"{name} has negative_slope={slope} > 1: it is "
                                     f"{slope}-Lipschitz, not an activation this bound takes")
                close()
                nonlinear.append((name, 1.0 if pool is None else pool))
                if pool is not None:
                    shape = tuple(m(torch.zeros((1, *shape), dtype=torch.float64))
                                  .shape[1:])
                continue
            if kind not in CONVERTERS:
                raise ValueError(f"{name} at position {i} is neither a linear module "
                                 "convmat maps nor a known Lipschitz step (1-Lipschitz "
                                 f"activations: {', '.join(ONE_LIPSCHITZ)}; max pooling)")
            op = from_torch(m, shape).linear
            layers.append((name, spectral_norm(op, rtol)))
            run.append((name, op))
            shape = op.output_shape
        close()
    steps = math.prod(c for _, c in nonlinear)
    return LipschitzBound(
        bound=math.prod(r.upper for _, r in runs) * steps,
        estimate=math.prod(r.value for _, r in runs) * steps,
        product_of_layers=math.prod(r.value for _, r in layers) * steps,
        layers=tuple(layers), runs=tuple(runs), nonlinear=tuple(nonlinear))
