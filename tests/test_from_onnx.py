"""from_onnx: graphs built with onnx.helper against onnx.reference.ReferenceEvaluator.

Every node kind is drawn at random (seeded) over its attributes, in float64; where the
reference is known to be wrong (ConvTranspose with group > 1, AveragePool with ceil_mode,
whose extra padding shifts the input) PyTorch is the reference instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import convmat  # noqa: E402
from convmat.onnxgraph import NODES  # noqa: E402

from reference import assert_affine_matches, trans_conv_reference, trans_conv_size  # noqa: E402

OPSET = 21


def make_model(nodes, shape, inits=(), *, elem=TensorProto.DOUBLE, batch=2, output="y"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, [batch, *map(int, shape)])],
        [helper.make_tensor_value_info(output, elem, None)],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def check(model, shape, *, seed=0, batch=2, rtol=1e-12, reference=None):
    """A(x) for a batch and one sample, and matrix @ x + offset, against the reference."""
    A = convmat.from_onnx(model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape))
    if reference is None:
        (ref,) = ReferenceEvaluator(model).run(None, {"x": x})
    else:
        ref = reference(x)
    assert A.input_shape == tuple(shape)
    assert_affine_matches(A, x, ref, rtol)
    return A


def draw_conv(rng, transposed=False):
    nd = int(rng.integers(1, 4))
    group = 1 if transposed else int(rng.choice([1, 2]))
    cin, cout = group * int(rng.integers(1, 3)), group * int(rng.integers(1, 3))
    k = [int(v) for v in rng.integers(1, 4, nd)]
    strides = [int(v) for v in rng.integers(1, 3, nd)]
    dilations = [int(v) for v in rng.integers(1, 3, nd)]
    n = [int(d * (kk - 1) + rng.integers(2, 5)) for d, kk in zip(dilations, k, strict=True)]
    shape = (cin, *n)
    wshape = (cin, cout // group, *k) if transposed else (cout, cin // group, *k)
    w = rng.standard_normal(wshape)
    inits = [("w", w)]
    inputs = ["x", "w"]
    if rng.integers(2):
        inits.append(("b", rng.standard_normal(cout)))
        inputs.append("b")
    attrs = dict(strides=strides, dilations=dilations, group=group)
    return nd, shape, k, inputs, inits, attrs


@pytest.mark.parametrize("seed", range(40))
def test_conv(seed):
    rng = np.random.default_rng(seed)
    nd, shape, k, inputs, inits, attrs = draw_conv(rng)
    auto = str(rng.choice(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * nd)]
    else:
        attrs["auto_pad"] = auto
    if rng.integers(2):
        attrs["kernel_shape"] = k
    node = helper.make_node("Conv", inputs, ["y"], **attrs)
    A = check(make_model([node], shape, inits), shape, seed=seed)
    assert (A.offset is None) == (len(inputs) == 2)


def onnx_transpose_pads(n, k, attrs, auto, target):
    """ONNX's ConvTranspose pads from output_shape (the spec's formula, written out)."""
    pairs = []
    for i, (nn_, kk) in enumerate(zip(n, k, strict=True)):
        s, d, op = attrs["strides"][i], attrs["dilations"][i], attrs["output_padding"][i]
        total = s * (nn_ - 1) + op + d * (kk - 1) + 1 - target[i]
        first = total // 2 if auto == "SAME_UPPER" else total - total // 2
        pairs.append((first, total - first))
    return pairs


@pytest.mark.parametrize("seed", range(40))
def test_conv_transpose(seed):
    """Against the naive scatter (the chapter's trans_conv); the reference evaluator too
    where it works (group 1, explicit pads, no output_padding)."""
    rng = np.random.default_rng(100 + seed)
    nd, shape, k, inputs, inits, attrs = draw_conv(rng, transposed=True)
    attrs["group"] = g = int(rng.choice([1, 2]))
    w = rng.standard_normal((g * shape[0], *inits[0][1].shape[1:]))
    shape = (g * shape[0], *shape[1:])
    inits[0] = ("w", w)
    if len(inits) > 1:
        inits[1] = ("b", rng.standard_normal(w.shape[1] * g))
    attrs["output_padding"] = [int(rng.integers(0, max(s, d)))
                               for s, d in zip(attrs["strides"], attrs["dilations"],
                                               strict=True)]
    choice = int(rng.integers(4))
    auto = "NOTSET"
    if choice == 0:
        pads = [int(v) for v in rng.integers(0, 2, 2 * nd)]
        attrs["pads"] = pads
        pairs = list(zip(pads[:nd], pads[nd:], strict=True))
        out = trans_conv_size(shape[1:], k, attrs["strides"], pairs, attrs["dilations"],
                              attrs["output_padding"])
    elif choice == 1:  # output_shape: the pads follow (the larger half first)
        natural = trans_conv_size(shape[1:], k, attrs["strides"], [(0, 0)] * nd,
                                  attrs["dilations"], attrs["output_padding"])
        out = [int(v - rng.integers(0, 3)) for v in natural]
        attrs["output_shape"] = out
        pairs = onnx_transpose_pads(shape[1:], k, attrs, auto, out)
    else:  # SAME: the output is n * stride, which may exceed the full output
        auto = attrs["auto_pad"] = ["SAME_UPPER", "SAME_LOWER"][choice - 2]
        out = [n * s for n, s in zip(shape[1:], attrs["strides"], strict=True)]
        pairs = onnx_transpose_pads(shape[1:], k, attrs, auto, out)
    bias = inits[1][1] if len(inits) > 1 else np.zeros(w.shape[1] * g)

    def reference(x):
        return np.stack([
            trans_conv_reference(xi, w, attrs["strides"], pairs, attrs["dilations"], g,
                                 "zeros", output_size=out)
            + bias.reshape((-1,) + (1,) * nd) for xi in x])

    node = helper.make_node("ConvTranspose", inputs, ["y"], **attrs)
    model = make_model([node], shape, inits)
    check(model, shape, seed=seed, reference=reference)
    if choice == 0 and g == 1 and not any(attrs["output_padding"]):
        check(model, shape, seed=seed)


@pytest.mark.parametrize("seed", range(8))
def test_grouped_conv_transpose_against_torch(seed):
    """The reference evaluator mishandles group > 1; PyTorch has ONNX's semantics there."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(200 + seed)
    nd = int(rng.integers(1, 4))
    g = 2
    w = rng.standard_normal((2 * g, int(rng.integers(1, 3)), *rng.integers(1, 4, nd)))
    b = rng.standard_normal(w.shape[1] * g)
    s = [int(v) for v in rng.integers(1, 3, nd)]
    p = [int(rng.integers(0, kk)) for kk in w.shape[2:]]
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=g, strides=s,
                            pads=p + p)
    shape = (2 * g, *rng.integers(2, 5, nd))
    fn = getattr(torch.nn.functional, f"conv_transpose{nd}d")

    def reference(x):
        return fn(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=s,
                  padding=p, groups=g).numpy()

    check(make_model([node], shape, [("w", w), ("b", b)]), shape, reference=reference)


@pytest.mark.parametrize("seed", range(24))
def test_average_pool(seed):
    rng = np.random.default_rng(300 + seed)
    nd = int(rng.integers(1, 4))
    k = [int(v) for v in rng.integers(1, 4, nd)]
    attrs = dict(kernel_shape=k, strides=[int(v) for v in rng.integers(1, 3, nd)],
                 count_include_pad=int(rng.integers(2)))
    auto = str(rng.choice(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = [int(rng.integers(0, kk)) for kk in k + k]
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
    else:
        attrs["auto_pad"] = auto
        # the reference pads by (out - 1)*s + k - n even where that is negative (k < s)
        attrs["strides"] = [min(s, kk) for s, kk in zip(attrs["strides"], k, strict=True)]
    shape = (2, *(int(v) for v in rng.integers(4, 7, nd)))
    check(make_model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], shape), shape,
          seed=seed)


@pytest.mark.parametrize("seed", range(8))
def test_average_pool_ceil_mode_against_torch(seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(400 + seed)
    nd = int(rng.integers(1, 4))
    k = [int(v) for v in rng.integers(2, 4, nd)]
    s = [int(v) for v in rng.integers(1, 4, nd)]
    p = [int(rng.integers(0, kk // 2 + 1)) for kk in k]
    include = int(rng.integers(2))
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=k, strides=s,
                            pads=p + p, ceil_mode=1, count_include_pad=include)
    shape = (2, *(int(v) for v in rng.integers(4, 8, nd)))
    fn = getattr(torch.nn.functional, f"avg_pool{nd}d")

    def reference(x):
        return fn(torch.from_numpy(x), k, s, p, ceil_mode=True,
                  count_include_pad=bool(include)).numpy()

    check(make_model([node], shape), shape, reference=reference)


def test_global_average_pool():
    shape = (3, 4, 5)
    check(make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], shape), shape)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("seed", range(5))
def test_pad(mode, seed):
    rng = np.random.default_rng(500 + seed)
    nd = int(rng.integers(1, 4))
    shape = (2, *(int(v) for v in rng.integers(3, 6, nd)))
    spatial = [int(v) for v in rng.integers(0, 3, 2 * nd)]  # the reference cannot crop
    inputs, inits = ["x", "pads"], []
    if seed % 2:  # the axes input: spatial axes only, negative indices
        axes = [a - (nd + 2) for a in range(2, nd + 2)]
        pads = spatial
        inits.append(("axes", np.array(axes, dtype=np.int64)))
    else:
        pads = [0, 0, *spatial[:nd], 0, 0, *spatial[nd:]]
    inits.insert(0, ("pads", np.array(pads, dtype=np.int64)))
    if mode == "constant":
        inputs.append("value")
        inits.append(("value", np.array(float(rng.standard_normal()))))
    if seed % 2:
        inputs.append("axes")
        if mode != "constant":
            inputs[2:2] = [""]
    A = check(make_model([helper.make_node("Pad", inputs, ["y"], mode=mode)], shape, inits),
              shape, seed=seed)
    assert (A.offset is not None) == (mode == "constant" and any(p > 0 for p in spatial))


@pytest.mark.parametrize("seed", range(40))
def test_resize(seed):
    rng = np.random.default_rng(600 + seed)
    nd = int(rng.integers(1, 4))
    shape = (2, *(int(v) for v in rng.integers(2, 6, nd)))
    mode = str(rng.choice(["nearest", "linear"]))
    attrs = dict(mode=mode, coordinate_transformation_mode=str(rng.choice(
        ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
         "half_pixel_symmetric"])))
    if mode == "nearest":
        attrs["nearest_mode"] = str(rng.choice(["round_prefer_floor", "round_prefer_ceil",
                                                "floor", "ceil"]))
    spatial = list(range(2, nd + 2))
    use_axes = bool(rng.integers(2))
    if use_axes:
        attrs["axes"] = spatial
    count = nd if use_axes else nd + 2
    inits = [("roi", np.zeros(0))]
    if rng.integers(2):
        sizes = [int(v) for v in rng.integers(1, 9, nd)]
        if not use_axes:
            sizes = [2, shape[0], *sizes]  # the batch of make_model and the channels
        inputs = ["x", "roi", "", "sizes"]
        inits.append(("sizes", np.array(sizes, dtype=np.int64)))
    else:
        scales = [float(v) for v in rng.choice([0.5, 0.75, 1.0, 1.5, 2.0, 3.0], nd)]
        if attrs["coordinate_transformation_mode"] in ("align_corners", "pytorch_half_pixel"):
            # the reference reads the resized length as scale * n, the specification (and
            # onnxruntime, PyTorch) as the integer size: keep them equal here (see the test
            # against PyTorch below for the other case)
            scales = [float(math.floor(n * sc)) / n for n, sc in zip(shape[1:], scales,
                                                                      strict=True)]
            scales = [sc if sc > 0 else 1.0 for sc in scales]
        if not use_axes:
            scales = [1.0, 1.0, *scales]
        inputs = ["x", "roi", "scales"]
        inits.append(("scales", np.array(scales)))
    assert count in (nd, nd + 2)
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    check(make_model([node], shape, inits), shape, seed=seed)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("scale", [1.5, 0.6, 2.5])
def test_resize_with_fractional_lengths_against_torch(align_corners, scale):
    """scale * n not an integer: the resized length is floor(scale * n), as PyTorch."""
    torch = pytest.importorskip("torch")
    mode = "align_corners" if align_corners else "pytorch_half_pixel"
    shape = (2, 5, 7)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode=mode)
    model = make_model([node], shape, [("scales", np.array([1.0, 1.0, scale, scale]))])

    def reference(x):
        return torch.nn.functional.interpolate(
            torch.from_numpy(x), scale_factor=scale, mode="bilinear",
            align_corners=align_corners, recompute_scale_factor=False).numpy()

    check(model, shape, reference=reference)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op_type, keepdims):
    shape = (3, 4, 5)
    for axes in ([2, 3], [1], [-1], [1, 2, 3]):
        node = helper.make_node(op_type, ["x", "axes"], ["y"], keepdims=keepdims)
        check(make_model([node], shape, [("axes", np.array(axes, dtype=np.int64))]), shape)
    node = helper.make_node(op_type, ["x", ""], ["y"], keepdims=keepdims,
                            noop_with_empty_axes=1)
    check(make_model([node], shape), shape)


def test_batch_norm_and_elementwise():
    rng = np.random.default_rng(7)
    c = 3
    shape = (c, 4, 5)
    inits = [("s", rng.standard_normal(c)), ("b", rng.standard_normal(c)),
             ("m", rng.standard_normal(c)), ("v", rng.uniform(0.5, 2, c))]
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                          epsilon=1e-3)
    check(make_model([bn], shape, inits), shape)
    for kind in ("Add", "Sub", "Mul", "Div"):
        for cshape in [(), (5,), (c, 1, 1), (1, c, 4, 1), (c, 4, 5)]:
            const = rng.uniform(0.5, 2.0, cshape)
            for first in (True, False):
                if kind == "Div" and not first:
                    continue
                inputs = ["x", "c"] if first else ["c", "x"]
                node = helper.make_node(kind, inputs, ["y"])
                check(make_model([node], shape, [("c", const)]), shape)


def test_residual_add_sub_and_a_chain():
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((2, 2, 3, 3))
    w2 = rng.standard_normal((2, 2, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"]),
        helper.make_node("Add", ["b", "x"], ["r"]),
        helper.make_node("Sub", ["r", "a"], ["d"]),
        helper.make_node("AveragePool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["shape"],
                         value=numpy_helper.from_array(np.array([0, -1], dtype=np.int64))),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "gc"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    inits = [("w1", w1), ("b1", rng.standard_normal(2)), ("w2", w2),
             ("g", rng.standard_normal((3, 2 * 3 * 2))), ("gc", rng.standard_normal(3))]
    A = check(make_model(nodes, (2, 6, 5), inits), (2, 6, 5))
    assert A.output_shape == (3,)


def test_flatten_matmul_identity_dropout(tmp_path):
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"], axis=1),
             helper.make_node("Reshape", ["f", "s"], ["r"]),
             helper.make_node("MatMul", ["r", "m"], ["y"])]
    inits = [("s", np.array([-1, 4, 6], dtype=np.int64)), ("m", rng.standard_normal((6, 5)))]
    model = make_model(nodes, (2, 3, 4), inits)
    A = check(model, (2, 3, 4))
    assert A.output_shape == (4, 5)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    for source in (path, str(path), model.SerializeToString()):
        np.testing.assert_array_equal(convmat.from_onnx(source).matrix.toarray(),
                                      A.matrix.toarray())


def test_fixed_batch_in_reshape_and_output_shape_over_pads():
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]  # the exporters' [N, -1]
    check(make_model(nodes, (2, 3), [("s", np.array([2, -1], dtype=np.int64))], batch=2),
          (2, 3))
    w = rng.standard_normal((1, 1, 3))
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], output_shape=[4],
                            pads=[0, 0])  # output_shape wins: the pads are ignored

    def reference(x):
        return np.stack([trans_conv_reference(xi, w, [2], [(1, 0)], [1], 1, "zeros",
                                              output_size=[4]) for xi in x])

    A = check(make_model([node], (1, 2), [("w", w)]), (1, 2), reference=reference)
    assert A.output_shape == (1, 4)


def test_float32_and_input_shape():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((2, 1, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])], (1, 6),
                       [("w", w)], elem=TensorProto.FLOAT)
    A = convmat.from_onnx(model)
    assert A.dtype == np.float32
    x = rng.standard_normal((2, 1, 6)).astype(np.float32)
    (ref,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(A(x), ref, rtol=1e-5, atol=1e-5)
    # a symbolic input shape: input_shape says it
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    symbolic = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(ValueError, match=r"input 'x' has no fixed shape after its batch axis "
                                         r"\(\[1, 'L'\]\): give input_shape"):
        convmat.from_onnx(symbolic)
    assert convmat.from_onnx(symbolic, input_shape=(1, 9)).output_shape == (2, 7)


def test_every_node_kind_is_tested():
    assert set(NODES) == {"Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool", "Pad",
                          "Resize", "BatchNormalization", "Add", "Sub", "Mul", "Div",
                          "Reshape", "Flatten", "Gemm", "MatMul", "ReduceMean", "ReduceSum",
                          "Identity", "Dropout"}


# --------------------------------------------------------------------------- errors
def one(op_type, inputs, shape=(1, 4, 4), inits=(), **attrs):
    return make_model([helper.make_node(op_type, inputs, ["y"], name="n", **attrs)], shape,
                      inits)


def test_errors():
    w = np.ones((1, 1, 3, 3))
    with pytest.raises(TypeError, match=r"model must be an onnx.ModelProto, a path or bytes, "
                                        r"got int"):
        convmat.from_onnx(3)
    with pytest.raises(ValueError, match=r"node 'n' \(Relu, inputs \['x'\]\): op type 'Relu' "
                                         r"is not supported"):
        convmat.from_onnx(one("Relu", ["x"]))
    with pytest.raises(ValueError, match=r"auto_pad='SAME' is not one of"):
        convmat.from_onnx(one("Conv", ["x", "w"], inits=[("w", w)], auto_pad="SAME"))
    with pytest.raises(ValueError, match=r"pads=\(1, 1\) needs 4 values"):
        convmat.from_onnx(one("Conv", ["x", "w"], inits=[("w", w)], pads=[1, 1]))
    with pytest.raises(ValueError, match=r"kernel_shape=\(2, 2\) differs from the weight's"):
        convmat.from_onnx(one("Conv", ["x", "w"], inits=[("w", w)], kernel_shape=[2, 2]))
    with pytest.raises(ValueError, match=r"a 1-d kernel \(1, 1, 3\) needs samples \(C, 1 "
                                         r"spatial axes\)"):
        convmat.from_onnx(one("Conv", ["x", "w"], inits=[("w", np.ones((1, 1, 3)))]))
    with pytest.raises(ValueError, match=r"input 1 \('w'\) must be a constant"):
        model = make_model([helper.make_node("Identity", ["x"], ["w"]),
                            helper.make_node("Conv", ["x", "w"], ["y"], name="n")], (1, 4, 4))
        convmat.from_onnx(model)
    with pytest.raises(ValueError, match=r"the weight \(input 1\) is missing"):
        convmat.from_onnx(one("Conv", ["x", ""]))
    with pytest.raises(ValueError, match=r"input 0 \('c'\) must come from the graph's input, "
                                         r"but it is a constant"):
        convmat.from_onnx(one("MatMul", ["c", "x"], (2,), [("c", np.ones((2, 2)))]))
    with pytest.raises(ValueError, match=r"training_mode is true: the dropout is random"):
        convmat.from_onnx(one("Dropout", ["x", "", "t"], (2,), [("t", np.array(True))]))
    with pytest.raises(ValueError, match=r"axes \[0, 1\] include the batch axis"):
        convmat.from_onnx(one("ReduceMean", ["x", "a"], (2,), [("a", np.array([0, 1]))]))
    with pytest.raises(ValueError, match=r"kernel_shape=\(\) needs 2 values"):
        convmat.from_onnx(one("AveragePool", ["x"]))
    with pytest.raises(ValueError, match=r"the window spans 5 > padded input 4"):
        convmat.from_onnx(one("AveragePool", ["x"], kernel_shape=[5, 1]))
    pads = ("pads", np.array([0, 1, 0, 0, 0, 0, 0, 0], dtype=np.int64))
    with pytest.raises(ValueError, match=r"pads \(0, 0\) on the batch axis and \(1, 0\) on the "
                                         r"channel axis"):
        convmat.from_onnx(one("Pad", ["x", "pads"], inits=[pads]))
    with pytest.raises(ValueError, match=r"pads has 3 values for 4 axes"):
        convmat.from_onnx(one("Pad", ["x", "pads"], inits=[("pads", np.ones(3, np.int64))]))
    zeros = ("pads", np.zeros(8, dtype=np.int64))
    with pytest.raises(ValueError, match=r"mode='mirror' is not one of"):
        convmat.from_onnx(one("Pad", ["x", "pads"], inits=[zeros], mode="mirror"))
    scales = ("scales", np.array([1.0, 1.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match=r"mode='cubic' is not supported"):
        convmat.from_onnx(one("Resize", ["x", "", "scales"], inits=[scales], mode="cubic"))
    with pytest.raises(ValueError, match=r"antialias=1 is not supported"):
        convmat.from_onnx(one("Resize", ["x", "", "scales"], inits=[scales], antialias=1))
    with pytest.raises(ValueError, match=r"neither scales \(input 2\) nor sizes"):
        convmat.from_onnx(one("Resize", ["x"]))
    with pytest.raises(ValueError, match=r"resizing the batch axis \(scale 2.0\)"):
        convmat.from_onnx(one("Resize", ["x", "", "scales"],
                              inits=[("scales", np.array([2.0, 1, 1, 1]))]))
    with pytest.raises(ValueError, match=r"sizes\[0\]=3 resizes the batch axis \(of size 2\)"):
        convmat.from_onnx(one("Resize", ["x", "", "", "sizes"],
                              inits=[("sizes", np.array([3, 1, 8, 8]))]))
    stats = [(n, np.ones(1)) for n in "sbmv"]
    with pytest.raises(ValueError, match=r"training_mode=1 normalises by each batch"):
        convmat.from_onnx(one("BatchNormalization", ["x", "s", "b", "m", "v"], inits=stats,
                              training_mode=1))
    with pytest.raises(ValueError, match=r"Mul of two values of the network is nonlinear"):
        convmat.from_onnx(one("Mul", ["x", "x"]))
    with pytest.raises(ValueError, match=r"Div of a constant by a value of the network"):
        convmat.from_onnx(one("Div", ["c", "x"], inits=[("c", np.ones(1))]))
    with pytest.raises(ValueError, match=r"the constant of shape \(2, 1, 4, 4\) spans the batch"):
        convmat.from_onnx(one("Add", ["x", "c"], inits=[("c", np.ones((2, 1, 4, 4)))]))
    with pytest.raises(ValueError, match=r"the constant of shape \(1, 4, 5\) does not "
                                         r"broadcast to the samples' shape \(1, 4, 4\) \(it "
                                         r"would change it to None\)"):
        convmat.from_onnx(one("Add", ["x", "c"], inits=[("c", np.ones((1, 4, 5)))]))
    with pytest.raises(ValueError, match=r"Add of values of shapes \(1, 4, 4\) and \(16,\)"):
        model = make_model([helper.make_node("Flatten", ["x"], ["f"]),
                            helper.make_node("Add", ["x", "f"], ["y"], name="n")], (1, 4, 4))
        convmat.from_onnx(model)
    with pytest.raises(ValueError, match=r"shape \[-1, -1\] has more than one -1"):
        convmat.from_onnx(one("Reshape", ["x", "s"], inits=[("s", np.array([-1, -1]))]))
    with pytest.raises(ValueError, match=r"shape \[16, 1\] does not keep the batch axis"):
        convmat.from_onnx(one("Reshape", ["x", "s"], inits=[("s", np.array([16, 1]))]))
    with pytest.raises(ValueError, match=r"axis=2 mixes the batch axis"):
        convmat.from_onnx(one("Flatten", ["x"], axis=2))
    with pytest.raises(ValueError, match=r"transA=1 transposes the batch"):
        convmat.from_onnx(one("Gemm", ["x", "g"], (3,), [("g", np.ones((3, 2)))], transA=1))
    with pytest.raises(ValueError, match=r"Gemm takes \(N, K\) inputs"):
        convmat.from_onnx(one("Gemm", ["x", "g"], inits=[("g", np.ones((4, 2)))]))
    with pytest.raises(ValueError, match=r"the weight of shape \(2, 3\) takes a last axis of 3"):
        convmat.from_onnx(one("Gemm", ["x", "g"], (4,), [("g", np.ones((3, 2)))]))
    with pytest.raises(ValueError, match=r"the constant operand has shape \(1, 4, 2\)"):
        convmat.from_onnx(one("MatMul", ["x", "m"], inits=[("m", np.ones((1, 4, 2)))]))
    with pytest.raises(ValueError, match=r"the dropout mask \(output 1\) is used"):
        graph = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="n")], (2,))
        convmat.from_onnx(graph)
    with pytest.raises(ValueError, match=r"one input and one output; this one has inputs "
                                         r"\['x', 'z'\]"):
        model = one("Identity", ["x"])
        model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.DOUBLE, [1]))
        convmat.from_onnx(model)
    with pytest.raises(TypeError, match=r"input 'x' has ONNX element type 6; convmat maps "
                                        r"float \(1\) and double \(11\)"):
        convmat.from_onnx(make_model([helper.make_node("Identity", ["x"], ["y"])], (2,),
                                     elem=TensorProto.INT32))
    with pytest.raises(ValueError, match=r"the graph's output 'y' does not depend on its input"):
        constant = numpy_helper.from_array(np.ones(1))
        convmat.from_onnx(make_model([helper.make_node("Constant", [], ["y"], value=constant)],
                                     (1,)))


def test_shape_arithmetic_is_folded():
    """Exporters compute reshape targets and pads from Shape: folded as constants."""
    rng = np.random.default_rng(11)
    i64 = np.int64
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "scalar0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("ConstantOfShape", ["four"], ["zeros"],
                         value=numpy_helper.from_array(np.zeros(1, dtype=i64))),
        helper.make_node("Concat", ["zeros", "ones"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
        helper.make_node("Shape", ["p"], ["tail"], start=1),
        helper.make_node("Reshape", ["p", "target"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    inits = [("scalar0", np.array(0, dtype=i64)), ("zero", np.array([0], dtype=i64)),
             ("minus1", np.array([-1], dtype=i64)),
             ("four", np.array([4], dtype=i64)), ("ones", np.array([0, 0, 1, 1], dtype=i64)),
             ("m", rng.standard_normal((2 * 4 * 5, 3)))]
    A = check(make_model(nodes, (2, 3, 4), inits, batch=1), (2, 3, 4), batch=1)
    assert A.output_shape == (3,)


def test_torch_export_round_trip():
    """A PyTorch model exported to ONNX maps to the same operator as the model itself."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4),
        nn.AvgPool2d(2), nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
        nn.Flatten(), nn.Linear(2 * 16 * 16, 5)).double().eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    import io
    import warnings
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(net, (x,), buffer, dynamo=False)
    G = convmat.from_onnx(buffer.getvalue())
    A = convmat.from_torch(net, (2, 8, 8))
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(G(x.numpy()), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G.matrix.toarray(), A.matrix.toarray(), rtol=1e-12,
                               atol=1e-12)
