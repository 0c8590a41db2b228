"""Write the notebooks from the cells below and execute them, outputs included.

Run ``python notebooks/build.py`` after changing a notebook here; the test suite executes the
committed notebooks again (``tests/test_notebooks.py``) so they never rot. The test sets
``CONVMAT_NOTEBOOK_QUICK=1``, which the deconvolution notebook reads to work on a 32 x 32 image;
this script always executes at full size (it clears the flag), so the committed outputs are the
full run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """\
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
%matplotlib inline
import convmat
from convmat import viz
np.set_printoptions(linewidth=110)"""

CHAPTER = [
    ("md", """\
# Transposed convolution, as sparse matrices

The chapter *Transposed Convolution* (MXNet Gluon, `../shared/seeds/`) retold with convmat: every
example, the chapter's numbers reproduced (each cell checks them), and the matrices shown."""),
    ("code", SETUP),
    ("md", """\
## Basic 2-D transposed convolution

The chapter's `trans_conv` broadcasts every input value through the kernel."""),
    ("code", """\
def trans_conv(X, K):
    h, w = K.shape
    Y = np.zeros((X.shape[0] + h - 1, X.shape[1] + w - 1))
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            Y[i: i + h, j: j + w] += X[i, j] * K
    return Y

X = np.array([[0., 1.], [2., 3.]])
K = np.array([[0., 1.], [2., 3.]])
trans_conv(X, K)"""),
    ("md", """\
convmat builds the transposed convolution as a sparse matrix `W_t` (9x4 here) and applies it.
`conv_transpose` is the functional form on 4-D arrays, like `nn.Conv2DTranspose`."""),
    ("code", """\
W_t = convmat.conv_transpose_matrix(K, X.shape)
Y = (W_t @ X.ravel()).reshape(3, 3)
assert (Y == [[0, 0, 1], [0, 4, 6], [4, 12, 9]]).all()
print(Y)
print(convmat.conv_transpose(X.reshape(1, 1, 2, 2), K.reshape(1, 1, 2, 2)))"""),
    ("code", """\
ax = viz.heatmap(convmat.ConvOperator.transposed(K, X.shape))
ax.set_title("W_t: each column is the kernel placed at one input pixel");"""),
    ("md", """\
## Padding, strides and channels

Padding removes rows and columns of the output; strides space the kernel copies apart."""),
    ("code", """\
X4, K4 = X.reshape(1, 1, 2, 2), K.reshape(1, 1, 2, 2)
Y = convmat.conv_transpose(X4, K4, padding=1)
assert Y.shape == (1, 1, 1, 1) and Y[0, 0, 0, 0] == 4
print(Y)
Y = convmat.conv_transpose(X4, K4, stride=2)
assert (Y[0, 0] == [[0, 0, 0, 1], [0, 0, 2, 3], [0, 2, 0, 3], [4, 6, 6, 9]]).all()
print(Y)"""),
    ("md", """\
A transposed convolution with the hyper-parameters of a convolution maps the convolution's output
shape back to its input shape (the chapter uses 20 channels, the notebook 30)."""),
    ("code", """\
rng = np.random.default_rng(0)
Xc = rng.uniform(size=(1, 10, 16, 16))
for channels in (20, 30):
    Yc = convmat.conv(Xc, rng.standard_normal((channels, 10, 5, 5)), padding=2, stride=3)
    back = convmat.conv_transpose(Yc, rng.standard_normal((channels, 10, 5, 5)), padding=2, stride=3)
    print(channels, Yc.shape, back.shape, back.shape == Xc.shape)
    assert back.shape == Xc.shape"""),
    ("md", """\
## Relation to matrix multiplication

A 3x3 kernel on a 4x4 input is a 4x16 matrix `W`: the chapter writes it by hand, convmat builds
it."""),
    ("code", """\
Xm = np.arange(1., 17.).reshape(1, 1, 4, 4)
Km = np.arange(1., 10.).reshape(1, 1, 3, 3)
print(convmat.conv(Xm, Km))
W = convmat.conv_matrix(Km, (1, 4, 4))
assert ((W @ Xm.ravel()).reshape(2, 2) == [[348, 393], [528, 573]]).all()
W_book, k = np.zeros((4, 16)), np.zeros(11)
k[:3], k[4:7], k[8:] = Km[0, 0, 0, :], Km[0, 0, 1, :], Km[0, 0, 2, :]
W_book[0, 0:11], W_book[1, 1:12], W_book[2, 4:15], W_book[3, 5:16] = k, k, k, k
assert (W.toarray() == W_book).all()
W"""),
    ("code", """\
viz.heatmap(convmat.ConvOperator(Km[0, 0], (4, 4))).set_title("W (4x16), nnz=36");"""),
    ("md", """\
The convolution of a (1, 3, 64, 64) input with 10 output channels, kernel 4, padding 1 and
stride 2 halves height and width; the transposed convolution with the same hyper-parameters
doubles them back."""),
    ("code", """\
op = convmat.ConvOperator(rng.standard_normal((10, 3, 4, 4)), (3, 64, 64), stride=2, padding=1)
Xb = rng.uniform(size=(1, 3, 64, 64))
Yb = op @ Xb
tconv = convmat.ConvOperator.transposed(rng.standard_normal((10, 3, 4, 4)), (10, 32, 32),
                                        stride=2, padding=1)
print(Yb.shape, (tconv @ Yb).shape)
assert Yb.shape == (1, 10, 32, 32) and (tconv @ Yb).shape == (1, 3, 64, 64)
op"""),
    ("md", """\
## Analogy to matrix transposition

`kernel2matrix` writes the 2x2 kernel on a 3x3 input as a 4x9 matrix; `W @ x` is the
convolution and `W.T @ y` the transposed convolution."""),
    ("code", """\
def corr2d(X, K):
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i: i + h, j: j + w] * K).sum()
    return Y

def kernel2matrix(K):
    k, W = np.zeros(5), np.zeros((4, 9))
    k[:2], k[3:5] = K[0, :], K[1, :]
    W[0, :5], W[1, 1:6], W[2, 3:8], W[3, 4:] = k, k, k, k
    return W

X9 = np.arange(9.).reshape(3, 3)
Y = corr2d(X9, K)
W = convmat.conv_matrix(K, (3, 3))
assert (W.toarray() == kernel2matrix(K)).all()
assert (Y == (W @ X9.ravel()).reshape(2, 2)).all() and (Y == [[19, 25], [37, 43]]).all()
print(Y)
print(W.toarray())"""),
    ("code", """\
Y = trans_conv(X, K)
assert (Y == (W.T @ X.ravel()).reshape(3, 3)).all()
print(Y == (W.T @ X.ravel()).reshape(3, 3))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
viz.heatmap(convmat.ConvOperator(K, (3, 3)), ax=axes[0]).set_title("W = kernel2matrix(K)")
viz.heatmap(convmat.ConvOperator(K, (3, 3)).T, ax=axes[1]).set_title("W.T: the transposed convolution")
fig.tight_layout()"""),
]

INSIDE = [
    ("md", """\
# Inside the matrix

How stride, dilation, groups, padding and the padding modes shape `W`; why the transposed
convolution of a strided convolution upsamples; and the checkerboard of `W.T`'s column sums."""),
    ("code", SETUP),
    ("md", """\
## Stride and dilation

Each row of `W` is the kernel laid on the input. A stride moves that copy by `stride` pixels
from one row to the next; a dilation spreads the kernel's taps apart."""),
    ("code", """\
k = np.array([1., 2., 3.])
fig, axes = plt.subplots(1, 3, figsize=(13, 2.6))
for ax, (title, opts) in zip(axes, [("stride 1", {}), ("stride 2", dict(stride=2)),
                                     ("dilation 2", dict(dilation=2))]):
    viz.heatmap(convmat.ConvOperator(k, (8,), **opts), ax=ax).set_title(title)
fig.tight_layout()"""),
    ("md", """\
## Channels and groups

With channels `W` is a grid of blocks, one per (output channel, input channel) pair, each block
the Toeplitz-like matrix of one kernel slice. With `groups`, blocks outside a group are empty:
the grey lines separate channels, the red ones groups."""),
    ("code", """\
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, 2, figsize=(11, 5))
viz.spy(convmat.ConvOperator(rng.standard_normal((4, 4, 3, 3)), (4, 6, 6), padding=1), ax=axes[0])
axes[0].set_title("4 -> 4 channels, groups=1")
viz.spy(convmat.ConvOperator(rng.standard_normal((4, 2, 3, 3)), (4, 6, 6), padding=1, groups=2),
        ax=axes[1])
axes[1].set_title("4 -> 4 channels, groups=2")
fig.tight_layout()"""),
    ("md", """\
## Padding and padding modes

Zero padding drops the taps that fall outside the input, so border rows are shorter. The other
modes map those taps back into the input: `reflect` mirrors (without repeating the edge),
`replicate` clamps to the edge, `circular` wraps. Taps folded onto the same pixel are summed:
the footprint of the corner output pixel shows it."""),
    ("code", """\
K3 = np.arange(1., 10.).reshape(3, 3)
# the taps row -1 / column -1 (K3[0, :], K3[:, 0]) land on row / column 1 (reflect), 0
# (replicate), 4 (circular: outside the 2x2 corner printed) or nowhere (zeros)
corner = {"zeros": [[5, 6], [8, 9]], "reflect": [[5, 6 + 4], [8 + 2, 9 + 3 + 7 + 1]],
          "replicate": [[5 + 4 + 2 + 1, 6 + 3], [8 + 7, 9]], "circular": [[5, 6], [8, 9]]}
for mode in ["zeros", "reflect", "replicate", "circular"]:
    op = convmat.ConvOperator(K3, (5, 5), padding=1, padding_mode=mode)
    fig = viz.footprint(op, output_index=(0, 0))
    fig.suptitle(f"{mode}: output (0, 0) reads   (nnz of W: {op.nnz})")
    field = viz.receptive_field(op, (0, 0))
    print(mode, field[:2, :2].tolist())
    kept = K3[1:, 1:].sum() if mode == "zeros" else K3.sum()  # zeros drops 5 of the 9 taps
    assert field[:2, :2].tolist() == corner[mode] and field.sum() == kept"""),
    ("md", """\
## Why the transposed convolution of a strided convolution upsamples

`W.T` spreads each input value over the kernel's footprint in the larger grid: the column of
`W` for one pixel of the small grid. With stride 2 neighbouring columns land 2 pixels apart."""),
    ("code", """\
K4 = np.ones((4, 4))
op = convmat.ConvOperator(K4, (8, 8), stride=2, padding=1)   # 8x8 -> 4x4
print("conv:", op.input_shape, "->", op.output_shape, "  W.T:", op.T.input_shape, "->",
      op.T.output_shape)
assert op.output_shape == op.T.input_shape == (4, 4) and op.T.output_shape == (8, 8)
fig = viz.footprint(op.T, input_index=(1, 1))
fig.suptitle("W.T: the small-grid pixel (1, 1) is spread over a 4x4 patch of the 8x8 grid");"""),
    ("md", """\
## The checkerboard of `W.T`'s column sums

Apply `W.T` to an all-ones input: each output pixel gets the number of kernel copies that cover
it. With kernel 3 and stride 2 the copies overlap unevenly, and the result is a checkerboard:
the artefact transposed convolutions are known for. Kernel 4 with stride 2 overlaps evenly in
the interior."""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, k in zip(axes, (3, 4)):
    t = convmat.ConvOperator.transposed(np.ones((k, k)), (8, 8), stride=2, padding=1)
    cover = t @ np.ones((8, 8))
    im = ax.imshow(cover, cmap="magma")
    ax.set_title(f"kernel {k}, stride 2: W.T @ 1 -> {cover.shape}")
    plt.colorbar(im, ax=ax, fraction=0.046)
    print(f"kernel {k}: distinct coverage counts in the interior:",
          np.unique(cover[2:-2, 2:-2]))
    assert len(np.unique(cover[2:-2, 2:-2])) == (3 if k == 3 else 1)
fig.tight_layout()"""),
    ("md", """\
## How big does it get?

The geometry knows the exact nnz and bytes before anything is built."""),
    ("code", """\
for shape, kernel, opts in [((3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
                            ((64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
                            ((1, 1024, 1024), (1, 1, 9, 9), dict(padding="same"))]:
    print(convmat.conv_geometry(kernel, shape, **opts))"""),
]

DECONV = [
    ("md", """\
# Deconvolution walk-through

Blur a photograph with a known PSF, add noise, and recover it by least squares with convmat:
LSQR and LSMR, Tikhonov damping, a gradient regulariser, non-negativity, convergence curves and
an L-curve for choosing `damp`.

The test suite runs this notebook with `CONVMAT_NOTEBOOK_QUICK=1`: a 32 x 32 image instead of
128 x 128, the same cells and checks, in seconds instead of a minute. The outputs shown are the full run."""),
    ("code", SETUP + """
import os
QUICK = os.environ.get("CONVMAT_NOTEBOOK_QUICK") == "1"
n = 32 if QUICK else 128
try:
    from skimage.data import camera          # a real photograph shipped with scikit-image
    truth = camera()[::512 // n, ::512 // n] / 255.0   # n x n
    source = "scikit-image camera"
except ImportError:
    truth = convmat.data.phantom(n)
    source = "convmat phantom"
assert truth.shape == (n, n)
from convmat.metrics import psnr as score   # scikit-image's, the peak the truth's range
def psnr(x):
    return score(truth, x)
print(source, truth.shape)"""),
    ("code", """\
g = np.exp(-0.5 * ((np.arange(9) - 4) / 2.0) ** 2)
psf = np.outer(g, g) / np.outer(g, g).sum()
op = convmat.ConvOperator(psf, truth.shape, padding="same", padding_mode="replicate")
rng = np.random.default_rng(0)
noise = 1e-3
blurred = op @ truth + noise * rng.standard_normal(truth.shape)
print(op)
print(f"PSNR of the blurred image: {psnr(blurred):.2f} dB")"""),
    ("md", """\
## LSQR and LSMR

Without regularisation, iterating too long fits the noise (semi-convergence). The history shows
the residual falling while the error first falls, then rises."""),
    ("code", """\
errors = {}
for method in ("lsqr", "cgls"):
    errs = []
    res = convmat.deconvolve(blurred, op, method=method, maxiter=150, history=True,
                             callback=lambda k, xk: errs.append(psnr(xk.reshape(truth.shape))))
    errors[method] = (res, errs)
    print(f"{method}: {res.iterations} iterations, best PSNR {max(errs):.2f} dB at "
          f"iteration {int(np.argmax(errs)) + 1}, final {errs[-1]:.2f} dB")
    # both minimise ||W x_k - y|| over growing Krylov spaces: the residual never rises
    r = np.asarray(res.history["residual_norm"])
    assert len(errs) == res.iterations == 150 and np.all(np.diff(r) <= 1e-12 * r[0])
    # semi-convergence: the best iterate beats the blurred image and comes before the last
    assert max(errs) > psnr(blurred) and int(np.argmax(errs)) + 1 < res.iterations
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for method, (res, errs) in errors.items():
    axes[0].semilogy(res.history["residual_norm"], label=method)
    axes[1].plot(errs, label=method)
axes[0].set(xlabel="iteration", ylabel="||W x_k - y||", title="residual")
axes[1].set(xlabel="iteration", ylabel="PSNR (dB)", title="semi-convergence")
axes[0].legend(); axes[1].legend(); fig.tight_layout()"""),
    ("md", """\
Stopping on the discrepancy principle (`stop="discrepancy"`: the residual reaches `tau sigma
sqrt(m)`, the noise's expected norm) picks a good iterate without knowing the truth; LSMR needs
about as many iterations as LSQR."""),
    ("code", """\
for method in ("lsqr", "lsmr"):
    res = convmat.deconvolve(blurred, op, method=method, stop="discrepancy", noise_level=noise,
                             tau=1.05)
    print(f"{method}: {res.iterations} iterations, PSNR {psnr(res.x):.2f} dB  ({res.stop_reason})")
    assert res.converged and res.residual_norm <= 1.05 * noise * np.sqrt(truth.size) * (1 + 1e-9)
    assert psnr(res.x) > psnr(blurred)"""),
    ("md", """\
## Choosing the damping from the data

`damp` adds `damp^2 ||x||^2`. A sweep against the truth (the *oracle*, which a user never has)
shows how much the choice matters. `deconvolve` chooses it itself: `damp="discrepancy"` (the
residual meets the noise level, given or estimated by `noise_level="estimate"`), `"gcv"`
(generalised cross-validation, no noise level needed) or `"lcurve"` (the corner of the L-curve).
`result.choice` holds the value, the curve it came from, and why."""),
    ("code", """\
damps = np.logspace(-3.5, -0.5, 13)
points = []
for d in damps:
    res = convmat.deconvolve(blurred, op, method="lsmr", damp=d, maxiter=400, atol=1e-8, btol=1e-8)
    points.append((res.residual_norm, np.linalg.norm(res.x), psnr(res.x)))
points = np.array(points)
best = int(np.argmax(points[:, 2]))
# more damping: a larger residual and a smaller solution (the two arms of the L)
assert np.all(np.diff(points[:, 0]) > 0) and np.all(np.diff(points[:, 1]) < 0)
sigma_hat = convmat.estimate_noise(blurred)
print(f"noise: {noise:.2e}, estimated from the data: {sigma_hat:.2e}")
chosen = {}
for rule in ("discrepancy", "gcv", "lcurve"):
    res = convmat.deconvolve(blurred, op, method="lsmr", damp=rule, noise_level=noise,
                             maxiter=400, atol=1e-8, btol=1e-8)
    chosen[rule] = res
    print(f"{rule:12s} damp = {res.choice.value:.2e}  PSNR {psnr(res.x):.2f} dB  "
          f"({res.choice.solves} solves: {res.choice.reason})")
print(f"{'oracle':12s} damp = {damps[best]:.2e}  PSNR {points[best, 2]:.2f} dB (the sweep, using the truth)")
assert psnr(chosen["discrepancy"].x) > psnr(blurred)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].loglog(points[:, 0], points[:, 1], "o-", color="0.6", label="sweep")
for rule, res in chosen.items():
    i = list(res.choice.values).index(res.choice.value)
    axes[0].loglog(res.choice.residual_norms[i], res.choice.penalty_norms[i], "*", ms=12,
                   label=rule)
axes[0].set(xlabel="||W x - y||", ylabel="||x||", title="L-curve over damp")
axes[0].legend()
axes[1].semilogx(damps, points[:, 2], "o-", color="0.6", label="oracle sweep")
for rule, res in chosen.items():
    axes[1].axvline(res.choice.value, ls="--", color=f"C{list(chosen).index(rule) + 1}",
                    label=rule)
axes[1].set(xlabel="damp", ylabel="PSNR (dB)", title="PSNR against the truth")
axes[1].legend(); fig.tight_layout()"""),
    ("md", """\
## Gradient regularisation, non-negativity and the boundary

`regularizer="gradient"` penalises `lam^2 ||D x||^2`, `D` the forward differences built by
convmat, and `lam` can be chosen the same way. `bounds=(0, None)` asks for `x >= 0`: a projected
Barzilai-Borwein method (`spg`) at the cost of a few unconstrained iterations
(`method="lsq_linear"` stays as the exact small-scale option). The boundary model matters at the
border: zero padding assumes a black frame around the image, `padding_mode="symmetric"` mirrors it
(a reflexive boundary), which removes most of the ringing there."""),
    ("code", """\
res_t = chosen["discrepancy"]
res_g = convmat.deconvolve(blurred, op, method="lsmr", regularizer="gradient", lam="discrepancy",
                           noise_level=noise, maxiter=400)
res_b = convmat.deconvolve(blurred, op, bounds=(0, None), stop="discrepancy", noise_level=noise)
print(f"gradient: lam = {res_g.choice.value:.2e}; non-negative: {res_b.iterations} spg iterations "
      f"({res_b.stop_reason})")
images = [("truth", truth), ("blurred", blurred), ("Tikhonov (discrepancy)", res_t.x),
          ("gradient (discrepancy)", res_g.x), ("x >= 0 (spg)", res_b.x)]
fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
for ax, (name, img) in zip(axes, images):
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{name}" + ("" if name == "truth" else f"\\n{psnr(img):.2f} dB"))
    ax.axis("off")
fig.tight_layout()
assert res_b.x.min() >= 0
assert min(psnr(img) for _, img in images[2:]) > psnr(blurred)"""),
    ("code", """\
# a scene that continues past the frame, blurred by the camera, restored with each boundary model
wide = np.pad(truth, 16, mode="symmetric")
camera = convmat.ConvOperator(psf, wide.shape, padding="same")
observed = (camera @ wide)[16:-16, 16:-16] + noise * rng.standard_normal(truth.shape)
edge = 4 if QUICK else 8
border = np.ones(truth.shape, bool)
border[edge:-edge, edge:-edge] = False
models = {mode: convmat.ConvOperator(psf, truth.shape, padding="same", padding_mode=mode)
          for mode in ("zeros", "symmetric")}
d = convmat.deconvolve(observed, models["symmetric"], damp="gcv").choice.value
print(f"damp = {d:.2e} (GCV on the symmetric model) for both")
errs = {}
fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
for ax, (mode, model) in zip(axes, models.items()):
    res = convmat.deconvolve(observed, model, damp=d)
    errs[mode] = np.sqrt(np.mean((res.x - truth)[border] ** 2))
    print(f"{mode:9s}: PSNR {psnr(res.x):.2f} dB, RMS error on the {edge}-pixel border "
          f"{errs[mode]:.4f}")
    ax.imshow(res.x, cmap="gray", vmin=0, vmax=1); ax.axis("off")
    ax.set_title(f"boundary model: {mode}\\n{psnr(res.x):.2f} dB")
fig.tight_layout()
assert errs["symmetric"] < errs["zeros"]"""),
]


NETWORK = [
    ("md", """\
# The exact local linear map of a CNN at an image

A network built from convolutions, batch norm, ReLU, max pooling, average pooling and residual
additions is piecewise affine: near an input `x` it *is* an affine map `A x + b`. ReLUs become
diagonal masks and max pooling a selection matrix. `convmat.from_torch(model, input_shape, at=x)`
returns that map, exact and sparse: `A(x) == model(x)`, and `A.matrix` is the Jacobian
`torch.func.jacrev` gives, for every output at once. Its rows are saliency maps."""),
    ("code", SETUP + """
import torch
from torch import nn
_ = torch.manual_seed(0)"""),
    ("md", """\
## A small CNN

Random (seeded) convolutions, batch norm with running statistics, ReLU, max pooling, a residual
block and average pooling, then a linear layer set by hand: output `q` averages the features of
quadrant `q` of the 12 x 12 feature maps (top left, top right, bottom left, bottom right)."""),
    ("code", """\
class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.MaxPool2d(2),
    Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU())),
    nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 12 * 12, 4))
with torch.no_grad():
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    readout = torch.zeros(4, 8, 12, 12)
    for q, (r, c) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):
        readout[q, :, r:r + 6, c:c + 6] = 1 / (8 * 36)
    model[-1].weight.copy_(readout.reshape(4, -1))
model = model.double().eval()
model"""),
    ("md", """\
## Its exact affine map at an image

The phantom of `convmat.data`, and the map the network is in its linear region. Every layer is
copied out of torch (the operator does not change if the model trains again)."""),
    ("code", """\
image = convmat.data.phantom(48)[None]               # (1, 48, 48)
A = convmat.from_torch(model, image.shape, at=image)
print(A.describe()[:160], "...")
M = A.matrix
print("A.matrix:", M.shape, f"{M.nnz} nonzeros ({M.nnz / np.prod(M.shape):.0%} of the entries)")
out = model(torch.from_numpy(image)[None])[0].detach().numpy()
print("model(x):", out)
print("A(x):    ", A(image))
assert np.allclose(A(image), out, rtol=1e-12, atol=1e-12)"""),
    ("md", """\
The same matrix as PyTorch's Jacobian at the image (all four rows), and the offset `b` that makes
the map exact at `x`:"""),
    ("code", """\
J = torch.func.jacrev(lambda v: model(v[None])[0])(torch.from_numpy(image)).detach()
J = J.reshape(4, -1).numpy()
print("max |A.matrix - jacrev| =", np.abs(M.toarray() - J).max())
assert np.allclose(M.toarray(), J, rtol=1e-12, atol=1e-12)
assert np.allclose(M @ image.ravel() + A.offset, out)"""),
    ("md", """\
## Rows of `A.matrix` as saliency maps

Row `q` says how much each pixel moves output `q` near this image. Each output reads its own
quadrant (up to the receptive field's border); inside it, the ReLUs that are off and the
max-pooling choices show up as the pixels that do not count."""),
    ("code", """\
names = ["top left", "top right", "bottom left", "bottom right"]
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
axes[0].imshow(image[0], cmap="gray")
axes[0].set_title("the image")
for q, ax in enumerate(axes[1:]):
    row = M[[q]].toarray().reshape(48, 48)
    lim = np.abs(row).max()
    im = ax.imshow(row, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"row {q}: {names[q]}\\noutput {out[q]:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
h = 24
quadrants = [(slice(0, h), slice(0, h)), (slice(0, h), slice(h, 48)),
             (slice(h, 48), slice(0, h)), (slice(h, 48), slice(h, 48))]
share = [np.abs(M[[q]].toarray().reshape(48, 48)[quadrants[q]]).sum() / abs(M[[q]]).sum()
         for q in range(4)]
print("share of each row's weight inside its own quadrant:", np.round(share, 2))
assert min(share) > 0.9"""),
    ("md", """\
## What the exact map gives

Its largest singular value is the network's local Lipschitz constant at this image (in the 2-norm),
exact, where gradient-based estimates give only a lower bound; the activation pattern says which
ReLUs are on. A nonlinear layer without `at=` is refused, with its place in the network."""),
    ("code", """\
from scipy.sparse.linalg import svds
sigma = svds(M, k=1, return_singular_vectors=False)[0]
print(f"local Lipschitz constant at the image: {sigma:.4f}")
assert np.isclose(sigma, np.linalg.norm(J, 2))
try:
    convmat.from_torch(model, image.shape)
except ValueError as e:
    print("ValueError:", e)"""),
]

SPECTRUM = [
    ("md", """\
# The spectrum of a convolution layer

A convolution's singular values say how much it can stretch an input (its norm, the Lipschitz
constant of the layer) and how much it loses (the small ones, which deconvolution must not
trust). convmat computes them exactly: all of them in FFT time for circular padding, the
extremes with a certified bracket for any padding."""),
    ("code", SETUP),
    ("md", """\
## Circular against zero padding, and the effect of stride

A random 16 -> 16 layer with 5x5 kernels on a 12 x 12 input. With circular padding the layer is
block circulant: one 16 x 16 SVD per frequency gives all 2304 singular values. Zero padding
breaks that structure; at this size the dense SVD still gives the exact spectrum."""),
    ("code", """\
rng = np.random.default_rng(0)
w = rng.standard_normal((16, 16, 5, 5)) / np.sqrt(16 * 25)
shape = (16, 12, 12)
circ = convmat.ConvOperator(w, shape, padding=2, padding_mode="circular")
zero = convmat.ConvOperator(w, shape, padding=2)
s_circ = convmat.singular_values(circ)          # FFT: 144 blocks of 16 x 16
s_zero = convmat.singular_values(zero)          # dense SVD of the 2304 x 2304 matrix
assert np.allclose(s_circ, np.linalg.svd(circ.matrix.toarray(), compute_uv=False))
print(f"sigma_max: circular {s_circ[0]:.5f}, zero padding {s_zero[0]:.5f} "
      f"(circular is {s_circ[0] / s_zero[0] - 1:.1%} higher)")
for stride in (2, 3):
    strided = convmat.ConvOperator(w, shape, padding=2, stride=stride)
    r = convmat.spectral_norm(strided)
    print(f"stride {stride}: sigma_max {r.value:.5f}; the stride-1 circular value overestimates "
          f"it by {s_circ[0] / r.value - 1:.0%}")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.semilogy(s_circ, label="circular padding (FFT)")
ax.semilogy(s_zero, label="zero padding (dense SVD)")
ax.set_xlabel("index"); ax.set_ylabel("singular value"); ax.legend()
ax.set_title("all 2304 singular values of a 16 -> 16 5x5 layer on 12 x 12");"""),
    ("md", """\
## The top singular vector as an image

The input the layer stretches most: `svds` returns the singular vectors shaped like the input,
so each channel is an image. For zero padding it is a wave damped at the borders; for circular
padding a pure plane wave."""),
    ("code", """\
t = convmat.svds(zero, 1)
v = t.v[0]                                        # (16, 12, 12)
assert np.isclose(t.s[0], s_zero[0]) and t.residuals[0] < 1e-8
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for c, ax in enumerate(axes):
    ax.imshow(v[c], cmap="RdBu_r")
    ax.set_title(f"channel {c}"); ax.axis("off")
fig.suptitle(f"top right singular vector, sigma = {t.s[0]:.4f}");"""),
    ("md", """\
## A certified norm at a real size

For a ResNet-size layer the spectrum is out of reach, but `spectral_norm` brackets the largest
singular value: the lower bound is `||W v||` at Lanczos' vector, the upper bound the exact norm of
the circular operator the layer is a restriction of."""),
    ("code", """\
big = convmat.ConvOperator(rng.standard_normal((64, 64, 3, 3)) / 24, (64, 56, 56), padding=1)
r = convmat.spectral_norm(big, rtol=1e-6)
print(r)
print(f"bracket width {r.width:.3%}, {r.products} products of the structured path")
assert r.lower <= r.value <= r.upper and r.width < 1e-3"""),
    ("md", """\
## The spectrum of a blur, and why deconvolution needs regularisation

A 7 x 7 Gaussian blur with circular boundaries on a 64 x 64 image: its singular values are the
magnitudes of the kernel's Fourier transform, so they fall by orders of magnitude at high
frequencies. The naive inverse divides each component of the noise by its singular value, so
noise at the highest frequencies is multiplied by the condition number printed below.
Regularisation (Tikhonov's `damp`, or stopping early) keeps only the singular values above the
noise."""),
    ("code", """\
x = np.arange(-3, 4)
g = np.exp(-x**2 / (2 * 1.5**2)); psf = np.outer(g, g); psf /= psf.sum()
blur = convmat.ConvOperator(psf, (64, 64), padding=3, padding_mode="circular")
s = convmat.singular_values(blur)
print(f"sigma_max {s[0]:.3f}, sigma_min {s[-1]:.2e}, condition number {s[0] / s[-1]:.2e}")
assert np.isclose(convmat.condition_number(blur), s[0] / s[-1])
noise = 1e-3
kept = (s > noise).sum()
print(f"{kept} of {s.size} singular values are above a noise level of {noise:g}")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.semilogy(s, label="singular values of the blur")
ax.axhline(noise, color="k", ls="--", label=f"noise level {noise:g}")
ax.set_xlabel("index"); ax.legend()
ax.set_title("a 7x7 Gaussian blur (sigma 1.5) on 64 x 64, circular");"""),
]

NOTEBOOKS = {
    "01_transposed_convolution.ipynb": CHAPTER,
    "02_inside_the_matrix.ipynb": INSIDE,
    "03_deconvolution.ipynb": DECONV,
    "04_local_linear_map.ipynb": NETWORK,
    "05_spectrum.ipynb": SPECTRUM,
}


def make(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                else nbformat.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def main(names: list[str]) -> None:
    os.environ.pop("CONVMAT_NOTEBOOK_QUICK", None)  # the kernels inherit it: full size here
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = make(cells)
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main(sys.argv[1:])
