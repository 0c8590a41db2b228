"""Plots checked for content: the right cells marked, boundaries at the channel offsets."""

import numpy as np
import pytest

import convmat
from convmat import ConvOperator, viz

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_receptive_field_marks_exactly_the_expected_inputs():
    # 2-D, stride 2, dilation 2, zero padding 1: output (1, 2) reads rows 2*1 + 2*t - 1 and
    # columns 2*2 + 2*t - 1 for t = 0, 1, 2 that fall inside the 7x9 input
    k = np.arange(1.0, 10.0).reshape(3, 3)
    op = ConvOperator(k, (7, 9), stride=2, dilation=2, padding=1)
    field = viz.receptive_field(op, (1, 2))
    expected = np.zeros((7, 9))
    for a in range(3):
        for b in range(3):
            i, j = 2 * 1 + 2 * a - 1, 2 * 2 + 2 * b - 1
            if 0 <= i < 7 and 0 <= j < 9:
                expected[i, j] = k[a, b]
    np.testing.assert_array_equal(field, expected)


@pytest.mark.parametrize("mode, expected", [
    ("zeros", {0: 2.0, 1: 3.0}),             # tap at -1 dropped
    ("reflect", {0: 2.0, 1: 1.0 + 3.0}),     # -1 mirrors onto 1: taps 1 and 3 summed
    ("replicate", {0: 1.0 + 2.0, 1: 3.0}),   # -1 clamps onto 0
    ("circular", {0: 2.0, 1: 3.0, 5: 1.0}),  # -1 wraps onto 5
])
def test_receptive_field_shows_padding_modes_folding(mode, expected):
    op = ConvOperator(np.array([1.0, 2.0, 3.0]), (6,), padding=1, padding_mode=mode)
    field = viz.receptive_field(op, 0)
    want = np.zeros(6)
    for i, v in expected.items():
        want[i] = v
    np.testing.assert_array_equal(field, want)


def test_contributions_are_the_column_that_W_T_spreads():
    op = ConvOperator(np.ones((3, 3)), (8, 8), stride=2, padding=1)
    spread = viz.contributions(op, (3, 3))
    np.testing.assert_array_equal(spread.ravel(), op.matrix.toarray()[:, 3 * 8 + 3])
    # pixel (3, 3) is read by outputs p with 2p - 1 <= 3 <= 2p + 1: p in {1, 2} on each axis
    assert sorted(zip(*np.nonzero(spread), strict=True)) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_footprint_draws_the_field_values():
    op = ConvOperator(np.arange(1.0, 10.0).reshape(3, 3), (5, 5), padding=1,
                      padding_mode="reflect")
    fig = viz.footprint(op, output_index=(0, 0))
    (ax,) = fig.axes
    image = ax.images[0].get_array()
    field = viz.receptive_field(op, (0, 0))
    np.testing.assert_array_equal(np.ma.filled(image, 0), field)
    assert sorted(float(t.get_text()) for t in ax.texts) == sorted(field[field != 0])
    fig2 = viz.footprint(op.T, input_index=(2, 2))
    assert np.count_nonzero(np.ma.filled(fig2.axes[0].images[0].get_array(), 0)) == 9


def test_footprint_one_panel_per_channel():
    op = ConvOperator(np.ones((2, 3, 3)), (3, 10), padding=1)
    fig = viz.footprint(op, output_index=(1, 4))
    assert len(fig.axes) == 3
    for ax in fig.axes:
        np.testing.assert_array_equal(np.ma.filled(ax.images[0].get_array(), 0)[0, 3:6], 1.0)


def test_spy_draws_boundaries_at_channel_and_group_offsets():
    op = ConvOperator(np.ones((4, 2, 3, 3)), (4, 5, 6), padding=1, groups=2)
    ax = viz.spy(op)
    horizontal = sorted(line.get_ydata()[0] + 0.5 for line in ax.lines[1:]
                        if line.get_ydata()[0] == line.get_ydata()[1])
    vertical = sorted(line.get_xdata()[0] + 0.5 for line in ax.lines[1:]
                      if line.get_xdata()[0] == line.get_xdata()[1])
    # rows: output channels every 30, group boundary at 60; columns: every 30, group at 60
    assert horizontal == [30, 60, 60, 90]
    assert vertical == [30, 60, 60, 90]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["out 0", "out 1", "out 2", "out 3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["in 0", "in 1", "in 2", "in 3"]
    points = ax.lines[0]
    coo = op.matrix.tocoo()
    drawn = sorted(zip(points.get_ydata(), points.get_xdata(), strict=True))
    assert drawn == sorted(zip(coo.row, coo.col, strict=True))


def test_spy_density_mode_for_large_matrices():
    op = ConvOperator(np.ones((3, 3)), (40, 40), padding=1)
    ax = viz.spy(op, max_points=100)
    assert len(ax.images) == 1 and ax.images[0].get_array().max() > 0


def test_heatmap_values_and_labels():
    K = np.array([[0.0, 1.0], [2.0, 3.0]])
    ax = viz.heatmap(ConvOperator(K, (3, 3)))
    np.testing.assert_array_equal(ax.images[0].get_array(),
                                  convmat.conv_matrix(K, (3, 3)).toarray())
    assert [t.get_text() for t in ax.texts][:5] == ["0", "1", "0", "2", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["(0, 0)", "(0, 1)", "(1, 0)",
                                                            "(1, 1)"]
    ax = viz.heatmap(ConvOperator(np.ones((2, 1, 2)), (1, 3)))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["(0, 0)", "(0, 1)", "(1, 0)",
                                                            "(1, 1)"]
    assert ax.get_ylabel() == "output (channel, position)"


def test_viz_errors():
    op = ConvOperator(np.ones((3, 3)), (30, 30))
    with pytest.raises(ValueError, match=r"matrix of shape \(784, 900\) is too large for a "
                                         r"dense heat map \(max_size=64\)"):
        viz.heatmap(op)
    with pytest.raises(ValueError, match=r"give exactly one of output_index and input_index"):
        viz.footprint(op)
    with pytest.raises(ValueError, match=r"output index \(28, 0\) is not inside the output "
                                         r"shape \(28, 28\)"):
        viz.receptive_field(op, (28, 0))
    with pytest.raises(ValueError, match=r"footprint draws 1-D and 2-D grids; this operator "
                                         r"has 3 spatial axes"):
        viz.footprint(ConvOperator(np.ones((2, 2, 2)), (3, 3, 3)), output_index=(0, 0, 0))
    with pytest.raises(TypeError, match=r"expected a ConvOperator or a 2-D \(sparse\) matrix, "
                                        r"got list"):
        viz.spy([[1, 0], [0, 1]])
    with pytest.raises(TypeError, match=r"expected a ConvOperator, got csr_array"):
        viz.receptive_field(op.matrix, 0)


def test_plain_matrices_are_drawn_without_a_geometry():
    """spy and heatmap take a SciPy CSR (or a dense 2-D array): the same marks, no labels."""
    op = ConvOperator(np.array([[0.0, 1.0], [2.0, 3.0]]), (3, 3))
    ax = viz.spy(op.matrix)
    (line,) = ax.lines
    coo = op.matrix.tocoo()
    drawn = sorted(zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert drawn == sorted(zip(coo.col, coo.row, strict=True))
    assert ax.get_title() == "4x9, nnz=16" and ax.get_xlabel() == "columns"
    ax = viz.heatmap(op.matrix.toarray())
    assert [t.get_text() for t in ax.texts] == [f"{v:g}" for v in op.matrix.toarray().ravel()]
    plt.close("all")


def test_heatmap_text_is_readable_on_dark_cells():
    """The chapter's 4x9 matrix: its 3s (the darkest red) are written in white, the zeros in
    light grey, the rest in near-black."""
    op = ConvOperator(np.array([[0.0, 1.0], [2.0, 3.0]]), (3, 3))
    ax = viz.heatmap(op)
    colors = {t.get_text(): set() for t in ax.texts}
    for t in ax.texts:
        colors[t.get_text()].add(t.get_color())
    assert colors == {"0": {"#bbbbbb"}, "1": {"#222222"}, "2": {"white"}, "3": {"white"}}
    plt.close("all")


def test_footprint_titles_sizes_and_ticks():
    """Titles read plain ints; a large grid shows the touched cells (plus 2), at a sane
    size, with integer ticks."""
    op = ConvOperator(np.ones((3, 3)), (64, 64), padding=1)
    fig = viz.footprint(op, output_index=(np.int64(10), np.int64(20)))
    assert fig._suptitle.get_text() == "output (10, 20) reads"
    w, h = fig.get_size_inches() * fig.dpi
    assert w <= 600 and h <= 600, (w, h)
    (ax,) = fig.axes
    # output (10, 20) reads rows 9-11, columns 19-21; with the margin rows 7-13, columns 17-23
    assert ax.get_xlim() == (16.5, 23.5) and ax.get_ylim() == (13.5, 6.5)
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert len(ax.texts) == 9
    plt.close("all")


def test_repr_html_contains_shapes_nnz_and_thumbnail():
    op = ConvOperator(np.ones((10, 3, 4, 4)), (3, 16, 16), stride=2, padding=1)
    html = op._repr_html_()
    for part in ["conv2d", "(3, 16, 16)", "(10, 8, 8)", f"{op.nnz:,}", "density",
                 "(2, 2)", "((1, 1), (1, 1))", "data:image/png;base64,"]:
        assert part in html
    assert "conv_transpose2d" in op.T._repr_html_()
    big = ConvOperator(np.ones((3, 3)), (64, 64), padding=1)
    big.THUMBNAIL_MAX_NNZ = 10
    assert "data:image/png" not in big._repr_html_()


def test_thumbnail_is_a_valid_png_of_the_pattern():
    import base64
    import io

    from convmat.thumbnail import pattern_density, thumbnail

    op = ConvOperator(np.ones((2, 1, 3)), (2, 20), groups=2)
    counts = pattern_density(op.matrix, (4, 4))
    # groups=2: entries only in the two diagonal blocks
    assert counts[:2, 2:].sum() == 0 and counts[2:, :2].sum() == 0
    assert counts.sum() == op.nnz
    png = base64.b64decode(thumbnail(op.matrix).split(",")[1])
    image = plt.imread(io.BytesIO(png))
    assert image.ndim == 2 and image.shape[0] > 10
    assert image.min() < 0.7 and image.max() == 1.0
