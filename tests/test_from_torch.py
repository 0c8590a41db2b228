"""from_torch: the operator of a PyTorch module against the module itself (float64).

Every module kind is drawn at random (seeded) over its options; the reference is PyTorch's
forward (``A(x) == module(x)``, batched and unbatched, and ``A.matrix @ x + offset``) and,
for local linear maps, ``torch.func.jacrev`` (the Jacobian of the network at the point).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import convmat  # noqa: E402
from convmat.modules import CONVERTERS, PIECEWISE_LINEAR  # noqa: E402

from reference import assert_affine_matches  # noqa: E402

SEEDS = range(12)


def check_module(module, shape, *, batch=3, seed=0, rtol=1e-12):
    """A(x), the batch, and matrix @ x + offset against the module, in float64."""
    module = module.double().eval()
    A = convmat.from_torch(module, shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape))
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert A.input_shape == tuple(shape)
    assert_affine_matches(A, x, ref, rtol)
    return A


# --------------------------------------------------------------------------- random modules
def random_conv(rng, transposed=False):
    nd = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 2]))
    cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k = tuple(int(v) for v in rng.integers(1, 4, nd))
    stride = tuple(int(v) for v in rng.integers(1, 3, nd))
    dilation = tuple(int(v) for v in rng.integers(1, 3, nd))
    bias = bool(rng.integers(2))
    n = tuple(int(d * (kk - 1) + rng.integers(3, 6)) for d, kk in zip(dilation, k, strict=True))
    if transposed:
        padding = tuple(int(rng.integers(0, d * (kk - 1) + 1))
                        for d, kk in zip(dilation, k, strict=True))
        output_padding = tuple(int(rng.integers(0, max(s, d)))
                               for s, d in zip(stride, dilation, strict=True))
        cls = getattr(nn, f"ConvTranspose{nd}d")
        m = cls(cin, cout, k, stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups, bias=bias)
        return m, (cin, *n)
    mode = str(rng.choice(["zeros", "reflect", "replicate", "circular"]))
    choice = int(rng.integers(4))
    if choice == 0:
        padding, stride = "same", (1,) * nd
    elif choice == 1:
        padding = "valid"
    else:
        padding = tuple(int(rng.integers(0, 3)) for _ in range(nd))
    cls = getattr(nn, f"Conv{nd}d")
    m = cls(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias, padding_mode=mode)
    return m, (cin, *n)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("seed", range(40))
def test_conv(seed):
    rng = np.random.default_rng(seed)
    m, shape = random_conv(rng)
    A = check_module(m, shape, seed=seed)
    assert isinstance(A, convmat.ConvOperator)
    assert (A.offset is None) == (m.bias is None)


@pytest.mark.parametrize("seed", range(30))
def test_conv_transpose(seed):
    rng = np.random.default_rng(1000 + seed)
    m, shape = random_conv(rng, transposed=True)
    check_module(m, shape, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_avg_pool(seed):
    rng = np.random.default_rng(2000 + seed)
    nd = int(rng.integers(1, 4))
    k = tuple(int(v) for v in rng.integers(1, 4, nd))
    stride = tuple(int(v) for v in rng.integers(1, 4, nd))
    padding = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    options = dict(stride=stride, padding=padding, ceil_mode=bool(rng.integers(2)),
                   count_include_pad=bool(rng.integers(2)))
    if nd > 1 and rng.integers(2):
        options["divisor_override"] = int(rng.integers(1, 5))
    m = getattr(nn, f"AvgPool{nd}d")(k, **options)
    check_module(m, (2, *(int(v) for v in rng.integers(4, 8, nd))), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_adaptive_avg_pool(seed):
    rng = np.random.default_rng(3000 + seed)
    nd = int(rng.integers(1, 4))
    out = tuple(None if rng.integers(4) == 0 else int(v) for v in rng.integers(1, 6, nd))
    m = getattr(nn, f"AdaptiveAvgPool{nd}d")(out if nd > 1 else out[0] or 3)
    check_module(m, (2, *(int(v) for v in rng.integers(3, 9, nd))), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_upsample(seed):
    rng = np.random.default_rng(4000 + seed)
    nd = int(rng.integers(1, 4))
    linear = ["linear", "bilinear", "trilinear"][nd - 1]
    mode = str(rng.choice(["nearest", "nearest-exact", linear]))
    options = {}
    if rng.integers(2):
        options["size"] = tuple(int(v) for v in rng.integers(2, 9, nd))
    else:
        options["scale_factor"] = tuple(float(v) for v in rng.choice([0.5, 1.5, 2.0, 3.0], nd))
        options["recompute_scale_factor"] = bool(rng.integers(2))
    if mode not in ("nearest", "nearest-exact"):
        options["align_corners"] = bool(rng.integers(2))
    check_module(nn.Upsample(mode=mode, **options),
                 (2, *(int(v) for v in rng.integers(2, 7, nd))), seed=seed)


def test_upsampling_modules():
    check_module(nn.UpsamplingBilinear2d(scale_factor=2), (2, 3, 4))
    check_module(nn.UpsamplingNearest2d(size=(5, 7)), (2, 3, 4))


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm(seed):
    rng = np.random.default_rng(5000 + seed)
    nd = int(rng.integers(1, 4))
    c = int(rng.integers(1, 4))
    m = getattr(nn, f"BatchNorm{nd}d")(c, affine=bool(rng.integers(2)), eps=1e-3)
    with torch.no_grad():
        m.running_mean.copy_(torch.from_numpy(rng.standard_normal(c)))
        m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, c)))
        if m.affine:
            m.weight.copy_(torch.from_numpy(rng.standard_normal(c)))
            m.bias.copy_(torch.from_numpy(rng.standard_normal(c)))
    spatial = tuple(int(v) for v in rng.integers(2, 5, nd - 1 if nd == 1 else nd))
    if nd == 1 and rng.integers(2):
        spatial = (int(rng.integers(2, 5)),)
    check_module(m, (c, *spatial), seed=seed)


PADS = ["ZeroPad", "ConstantPad", "ReflectionPad", "ReplicationPad", "CircularPad"]


@pytest.mark.parametrize("kind", PADS)
@pytest.mark.parametrize("seed", range(6))
def test_padding_modules(kind, seed):
    rng = np.random.default_rng(6000 + seed)
    nd = int(rng.integers(1, 4))
    n = tuple(int(v) for v in rng.integers(3, 6, nd))
    pad = tuple(int(rng.integers(0, 3)) for _ in range(2 * nd))
    cls = getattr(nn, f"{kind}{nd}d")
    m = cls(pad, float(rng.standard_normal())) if kind == "ConstantPad" else cls(pad)
    A = check_module(m, (2, *n), seed=seed)
    assert (A.offset is not None) == (kind == "ConstantPad" and any(pad))


def test_linear_flatten_unflatten_identity_dropout():
    check_module(nn.Linear(5, 3), (5,))
    check_module(nn.Linear(5, 3, bias=False), (4, 5))
    check_module(nn.Flatten(), (2, 3, 4))
    check_module(nn.Flatten(2, 3), (2, 3, 4))
    check_module(nn.Flatten(-2), (2, 3, 4))
    check_module(nn.Unflatten(1, (3, 4)), (12, 5))
    check_module(nn.Unflatten(-1, (-1, 2)), (3, 8))
    check_module(nn.Identity(), (2, 3))
    for cls, shape in ((nn.Dropout, (2, 3)), (nn.Dropout1d, (2, 3)), (nn.Dropout2d, (2, 3, 4)),
                       (nn.Dropout3d, (2, 3, 4, 5)), (nn.AlphaDropout, (3,)),
                       (nn.FeatureAlphaDropout, (2, 3, 4))):
        check_module(cls(0.5), shape)
    train = nn.Dropout(0.0).train()  # p = 0 is the identity in training mode too
    check_module(train, (3,))
    check_module(nn.PixelShuffle(2), (8, 3, 2))
    check_module(nn.PixelUnshuffle(2), (2, 4, 6))


def test_sequential_and_nested():
    net = nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(2, 4, 3, stride=2), nn.BatchNorm2d(4),
        nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.AvgPool2d(2)),
        nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * 8 * 8, 5))
    with torch.no_grad():
        net[2].running_var.uniform_(0.5, 2.0)
        net[2].running_mean.normal_()
    A = check_module(net, (2, 8, 8))
    assert isinstance(A, convmat.ProductOperator)
    assert A.offset is not None and A.offset.shape == (5,)


def test_dtype_copy_and_training_later():
    conv = nn.Conv2d(2, 3, 3, padding=1)  # float32
    A = convmat.from_torch(conv, (2, 5, 5))
    assert A.dtype == np.float32 and A.offset.dtype == np.float32
    x = torch.randn(2, 5, 5)
    with torch.no_grad():
        ref = conv(x).numpy()
    np.testing.assert_allclose(A(x.numpy()), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the module trains later: the operator keeps its copy
        conv.weight.add_(1.0)
        conv.bias.add_(1.0)
    np.testing.assert_allclose(A(x.numpy()), ref, rtol=1e-5, atol=1e-5)
    pool = nn.Sequential(nn.AvgPool2d(2))  # no parameters: float64, or the dtype of at
    assert convmat.from_torch(pool, (1, 4, 4)).dtype == np.float64
    at = torch.ones(1, 4, 4, dtype=torch.float32)
    assert convmat.from_torch(pool, (1, 4, 4), at=at).dtype == np.float32


def test_every_converter_is_tested():
    tested = {f"{k}{d}d" for k in ("Conv", "ConvTranspose", "AvgPool", "AdaptiveAvgPool",
                                   "BatchNorm", *PADS) for d in (1, 2, 3)}
    tested |= {"Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle",
               "PixelUnshuffle", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
               "AlphaDropout", "FeatureAlphaDropout", "Flatten", "Unflatten", "Linear"}
    assert set(CONVERTERS) == tested
    for name in CONVERTERS:
        assert hasattr(nn, name), name


# --------------------------------------------------------------------------- local maps
class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Block(nn.Module):
    """A ResNet basic block written with functions (torch.relu, +, flatten)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        return torch.nn.functional.relu(self.conv2(y) + x)


def small_cnn(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
                               nn.LeakyReLU(0.1))),
        nn.MaxPool2d(2), Block(4), nn.AvgPool2d(2, ceil_mode=True), nn.Hardtanh(-0.5, 0.5),
        nn.Conv2d(4, 3, 1), nn.ReLU6(), nn.AdaptiveMaxPool2d((2, 1)), nn.Flatten(),
        nn.Linear(6, 4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net.double().eval()


def jacobian(net, x):
    return torch.func.jacrev(lambda v: net(v[None])[0])(x).detach()


@pytest.mark.parametrize("seed", range(6))
def test_local_map_equals_jacobian(seed):
    net = small_cnn(seed)
    x = torch.randn(2, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    A = convmat.from_torch(net, (2, 9, 7), at=x)
    with torch.no_grad():
        out = net(x[None])[0].numpy()
    np.testing.assert_allclose(A(x.numpy()), out, rtol=1e-12, atol=1e-12)
    J = jacobian(net, x).reshape(out.size, -1).numpy()
    np.testing.assert_allclose(A.matrix.toarray(), J, rtol=1e-12, atol=1e-12)
    # the affine map is exact at x: offset = f(x) - J x
    np.testing.assert_allclose(A.offset.ravel(), out.ravel() - J @ x.numpy().ravel(),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("module", [
    nn.ReLU(), nn.LeakyReLU(0.2), nn.Hardtanh(-1.0, 1.0), nn.ReLU6(),
    nn.MaxPool1d(2), nn.MaxPool2d(2, stride=1, padding=1), nn.MaxPool3d(2, ceil_mode=True),
    nn.MaxPool2d(3, dilation=2), nn.AdaptiveMaxPool2d(2)])
def test_local_map_at_ties(module):
    """Inputs exactly at the kinks and equal maxima: the choice PyTorch's backward makes."""
    nd = int(type(module).__name__[-2]) if "Pool" in type(module).__name__ else 2
    shape = (2, *([6] * nd))
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 0.0, 1.0, 6.0], shape)  # ties: 0, the bounds +-1 and 6, equal maxima
    xt = torch.from_numpy(x)
    A = convmat.from_torch(module, shape, at=xt)
    J = jacobian(module, xt)
    out = module(xt[None])[0]
    np.testing.assert_array_equal(A.matrix.toarray(), J.reshape(out.numel(), -1).numpy())
    np.testing.assert_array_equal(A(x), out.numpy())


def test_local_map_inplace_and_float32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv1d(2, 1, 1),
                        nn.LeakyReLU(0.1, inplace=True))
    x = torch.randn(1, 8)
    A = convmat.from_torch(net, (1, 8), at=x[None])
    assert A.dtype == np.float32
    with torch.no_grad():
        out = net(x[None])[0].numpy()
    np.testing.assert_allclose(A(x.numpy()), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(A.matrix.toarray(), jacobian(net, x).reshape(out.size, -1),
                               rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got ndarray"):
        convmat.from_torch(np.eye(2), (2,))
    with pytest.raises(ValueError, match=r"input_shape must be one sample's shape"):
        convmat.from_torch(nn.Identity(), (0, 2))
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"ReLU at position 1 of the Sequential is nonlinear: "
                                         r".*at=x"):
        convmat.from_torch(net, (1, 5, 5))
    with pytest.raises(ValueError, match=r"Tanh at position 1 of the Sequential is not "
                                         r"supported"):
        convmat.from_torch(nn.Sequential(nn.Identity(), nn.Tanh()), (3,))
    with pytest.raises(ValueError, match=r"Sigmoid at the root module is not supported"):
        convmat.from_torch(nn.Sigmoid(), (3,), at=np.zeros(3))
    bn = nn.Sequential(nn.Identity(), nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match=r"BatchNorm1d at '1.0' is in training mode"):
        convmat.from_torch(bn, (3,))
    with pytest.raises(ValueError, match=r"Dropout at the root module is in training mode"):
        convmat.from_torch(nn.Dropout(0.5), (3,))
    with pytest.raises(ValueError, match=r"track_running_stats=False\) normalises by the "
                                         r"statistics of each batch"):
        convmat.from_torch(nn.BatchNorm1d(3, track_running_stats=False).eval(), (3,))
    with pytest.raises(TypeError, match=r"found float16 tensors \(the module's parameters, or "
                                        r"at\)"):
        convmat.from_torch(nn.Linear(2, 2).half(), (2,))
    with pytest.raises(TypeError, match=r"dtype=int32 is not one of"):
        convmat.from_torch(nn.Linear(2, 2), (2,), dtype=np.int32)
    with pytest.raises(ValueError, match=r"Flatten: start_dim=2 comes after end_dim=1"):
        convmat.from_torch(nn.Flatten(2, 1), (2, 3))
    with pytest.raises(ValueError, match=r"PixelShuffle takes one sample of shape \(C, 2 "
                                         r"spatial axes\)"):
        convmat.from_torch(nn.PixelShuffle(2), (8, 4, 3, 4))
    with pytest.raises(ValueError, match=r"PixelUnshuffle takes one sample of shape \(C, 2 "
                                         r"spatial axes\)"):
        convmat.from_torch(nn.PixelUnshuffle(2), (8, 4))
    with pytest.raises(ValueError, match=r"BatchNorm1d takes samples \(C,\) or \(C, L\)"):
        convmat.from_torch(nn.BatchNorm1d(3).eval(), (3, 4, 5))
    with pytest.raises(ValueError, match=r"BatchNorm2d takes one sample of shape \(C, 2"):
        convmat.from_torch(nn.BatchNorm2d(3).eval(), (3, 4))
    with pytest.raises(ValueError, match=r"ReflectionPad1d takes one sample of shape \(C, 1"):
        convmat.from_torch(nn.ReflectionPad1d((1, 2)), (2, 3, 5))
    hooked = nn.Conv2d(1, 1, 3)
    hooked.register_forward_hook(lambda m, i, o: o * 0)
    with pytest.raises(ValueError, match=r"Conv2d at position 1 of the Sequential has forward "
                                         r"hooks"):
        convmat.from_torch(nn.Sequential(nn.Identity(), hooked), (1, 5, 5))
    with pytest.raises(ValueError, match=r"Linear at the root module is a .*test_from_torch."
                                         r"Linear, not torch.nn.Linear"):
        convmat.from_torch(Linear(2, 2), (2,))
    at = torch.ones(3, 8, 8)
    with pytest.raises(ValueError, match=r"Conv2d at position 2 of the Sequential: .*3 "
                                         r"channels|Conv2d at position 2 of the Sequential"):
        convmat.from_torch(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(3, 3, 1)),
                           (3, 8, 8), at=at)
    with pytest.raises(ValueError, match=r"MaxPool2d at the root module: .*too small"):
        convmat.from_torch(nn.MaxPool2d(5), (3, 3, 3), at=torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match=r"Conv2d at position 0 of the Sequential: Conv2d takes "
                                         r"one sample of shape \(C, 2 spatial axes\)"):
        convmat.from_torch(nn.Sequential(nn.Conv2d(1, 1, 3)), (5, 5))
    with pytest.raises(ValueError, match=r"Linear at the root module: Linear\(in_features=4\) "
                                         r"needs a last axis of 4"):
        convmat.from_torch(nn.Linear(4, 2), (3,))
    with pytest.raises(ValueError, match=r"Upsample\(mode='bicubic'\) is not supported"):
        convmat.from_torch(nn.Upsample(scale_factor=2, mode="bicubic"), (1, 3, 3))
    with pytest.raises(ValueError, match=r"Flatten: start_dim=0 is the batch axis"):
        convmat.from_torch(nn.Flatten(0), (2, 3))
    with pytest.raises(ValueError, match=r"Flatten: end_dim=5 is out of range"):
        convmat.from_torch(nn.Flatten(1, 5), (2, 3))
    with pytest.raises(ValueError, match=r"unflattened_size=\(4, 2\)\) does not fit axis 1 of "
                                         r"size 6"):
        convmat.from_torch(nn.Unflatten(1, (4, 2)), (6,))
    with pytest.raises(ValueError, match=r"at has shape \(2, 2\); expected one sample"):
        convmat.from_torch(nn.ReLU(), (3,), at=np.zeros((2, 2)))


class Sigmoidal(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


class Viewing(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


class Arithmetic(nn.Module):
    """Every supported arithmetic step: values with values, values with numbers."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        z = 0.5 * x + y * 2 - 1.0
        z = torch.add(z, x, alpha=3.0) - torch.sub(y, 0.25) / 4
        z = 2.0 - z.mul(1.5) + torch.mul(3, x.div(2)) + x.add(y, alpha=-1) + (1 + y).sub(x)
        return torch.div(z, 5)


class Squared(nn.Module):
    def forward(self, x):
        return x * x


class Inverted(nn.Module):
    def forward(self, x):
        return 1 / x


class AddOut(nn.Module):
    def forward(self, x):
        return torch.add(x, x, out=x)


class AddString(nn.Module):
    def forward(self, x):
        return x + "a"


def test_traced_arithmetic():
    torch.manual_seed(0)
    check_module(Arithmetic(), (1, 7))


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class Relus(nn.Module):
    def forward(self, x):
        return x.relu()


class Linear(nn.Linear):  # a subclass named like a torch.nn module, with its own forward
    def forward(self, x):
        return 3 * super().forward(x)


class FlatPlus(nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1) + x


class InplaceAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(1, 1, 1)

    def forward(self, x):
        z = self.c(x)
        z.add_(x)
        return z


class InplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(1, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        z = self.c(x)
        return self.relu(z) + z


class AliasedIadd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(1, 1, 1)

    def forward(self, x):
        z = self.c(x)
        w = z
        z += x
        return z + w


class SafeInplace(nn.Module):
    """In-place steps on values nobody else reads: mapped."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(1, 1, 1)

    def forward(self, x):
        z = self.c(x)
        z += x
        return torch.relu_(nn.functional.relu(z, inplace=True))


@pytest.mark.parametrize("net", [InplaceAdd, InplaceRelu])
def test_inplace_on_shared_values_is_refused(net):
    with pytest.raises(ValueError, match=r"modifies .* in place, which other nodes also read"):
        convmat.from_torch(net().double(), (1, 5), at=torch.randn(1, 5, dtype=torch.float64))


def test_verify_catches_aliasing_fx_cannot_see():
    """``z += x`` on an aliased z: fx records an ordinary add; the check at the end sees it."""
    net = AliasedIadd().double()
    for at in (torch.randn(1, 5, dtype=torch.float64), None):
        where = "the given point" if at is not None else "a random sample"
        with pytest.raises(ValueError, match=rf"the operator does not reproduce AliasedIadd: "
                                             rf"max \|A\(x\) - module\(x\)\| = .* at {where}"):
            convmat.from_torch(net, (1, 5), at=at)
    A = convmat.from_torch(net, (1, 5), verify=False)  # the graph's values, not torch's
    x = np.ones((1, 5))
    w, b = net.c.weight.item(), net.c.bias.item()
    np.testing.assert_allclose(A(x), (w * x + b) + x + (w * x + b), rtol=1e-14)


def test_inplace_on_unshared_values():
    net = SafeInplace().double()
    x = torch.randn(1, 6, dtype=torch.float64)
    A = convmat.from_torch(net, (1, 6), at=x)
    with torch.no_grad():
        ref = net(x[None].clone())[0].numpy()
    np.testing.assert_allclose(A(x.numpy()), ref, rtol=1e-13, atol=1e-13)


def test_parametrized_modules():
    """weight_norm and spectral_norm (torch.nn.utils.parametrizations): the weight they make."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    conv = parametrizations.weight_norm(nn.Conv2d(2, 3, 3, padding=1))
    linear = parametrizations.spectral_norm(nn.Linear(3 * 5 * 5, 4))
    linear(torch.randn(2, 75))  # one power iteration in training mode, then frozen
    check_module(conv, (2, 5, 5))
    check_module(nn.Sequential(conv, nn.Flatten(), linear), (2, 5, 5))


def test_dtype_argument():
    up = nn.Upsample(scale_factor=2.3, mode="nearest")  # float32 source pixels at float32
    x = torch.randn(1, 50)
    A = convmat.from_torch(up, (1, 50), dtype=np.float32)
    assert A.dtype == np.float32
    np.testing.assert_array_equal(A(x.numpy()), up(x[None])[0].numpy())
    B = convmat.from_torch(nn.Linear(3, 2), (3,), dtype="float64")  # float32 weights cast
    assert B.dtype == np.float64 and B.offset.dtype == np.float64


class Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.scale


class Flattening(nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.flatten(1) if self.method else torch.flatten(y, 1)


@pytest.mark.parametrize("method", [True, False])
def test_traced_flatten(method):
    check_module(Flattening(method), (1, 5, 4))


def test_traced_errors():
    with pytest.raises(ValueError, match=r"node 'sigmoid' calls sigmoid .*not supported"):
        convmat.from_torch(Sigmoidal(), (3,))
    with pytest.raises(ValueError, match=r"calls the method .size\(\)|calls the method .view\(\)"
                                         r"|getattr"):
        convmat.from_torch(Viewing(), (3,))
    with pytest.raises(ValueError, match=r"node 'mul' multiplies or divides two values"):
        convmat.from_torch(Squared(), (3,))
    with pytest.raises(ValueError, match=r"node 'truediv' divides a number by a value"):
        convmat.from_torch(Inverted(), (3,))
    with pytest.raises(ValueError, match=r"node 'add' \(add of .*\): convmat maps two operands"):
        convmat.from_torch(AddOut(), (3,))
    with pytest.raises(ValueError, match=r"node 'add' \(add of \(x, 'a'\)\): convmat maps "
                                         r"arithmetic between values of the network and numbers"):
        convmat.from_torch(AddString(), (3,), verify=False)
    with pytest.raises(ValueError, match=r"exactly one input"):
        convmat.from_torch(TwoInputs(), (3,))
    with pytest.raises(ValueError, match=r"could not be traced by torch.fx"):
        convmat.from_torch(Branchy(), (3,))
    with pytest.raises(ValueError, match=r"exactly one output tensor"):
        convmat.from_torch(Pair(), (3,))
    with pytest.raises(ValueError, match=r"relu at node 'relu' is nonlinear"):
        convmat.from_torch(Relus(), (3,))
    with pytest.raises(ValueError, match=r"relu at node 'relu' is nonlinear"):
        convmat.from_torch(Block(1).eval(), (1, 3, 3))
    with pytest.raises(ValueError, match=r"node 'scale' reads 'scale' \(a parameter or buffer"):
        convmat.from_torch(Scaling(), (3,))
    with pytest.raises(ValueError, match=r"node 'add' adds values of shapes \(4,\) and "
                                         r"\(4, 1\); .* \(no broadcasting\)"):
        convmat.from_torch(FlatPlus(), (4, 1))
    with pytest.raises(ValueError, match=r"node 'add' adds values of shapes \(1, 5, 5\) and "
                                         r"\(1, 3, 3\)"):
        convmat.from_torch(Residual(nn.Conv2d(1, 1, 3)), (1, 5, 5))


def test_piecewise_linear_names():
    for name in PIECEWISE_LINEAR:
        assert hasattr(nn, name), name
