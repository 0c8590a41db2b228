"""The command line, run in a subprocess: output checked, bad input exits 2 with one line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convmat
from convmat.cli import parse_padding, parse_psf, parse_shape

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "convmat", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd or ROOT)


def test_inspect_prints_geometry():
    out = run("inspect", "--input", "3x64x64", "--kernel", "10x3x4x4", "--stride", "2",
              "--padding", "1")
    assert out.returncode == 0, out.stderr
    g = convmat.conv_geometry((10, 3, 4, 4), (3, 64, 64), stride=2, padding=1)
    assert "conv2d: (3, 64, 64) -> (10, 32, 32)" in out.stdout
    assert "output shape: (10, 32, 32)" in out.stdout
    assert f"nnz={g.nnz:,}" in out.stdout and f"density={g.density:.4g}" in out.stdout
    assert f"bytes: {g.nbytes:,}" in out.stdout


def test_inspect_transposed_dense_and_plot(tmp_path):
    plot = tmp_path / "w.png"
    out = run("inspect", "--input", "1x2x2", "--kernel", "1x1x2x2", "--transposed", "--dense",
              "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    assert "conv_transpose2d: (1, 2, 2) -> (1, 3, 3)" in out.stdout
    # weights 1..4 in kernel order: the 9x4 matrix of trans_conv
    dense = convmat.conv_transpose_matrix(np.arange(1.0, 5.0).reshape(1, 1, 2, 2),
                                          (1, 2, 2)).toarray()
    assert str(dense) in out.stdout
    assert plot.exists() and plot.stat().st_size > 1000


def test_deblur_simulated_and_truth(tmp_path):
    truth = convmat.data.phantom(48)
    np.save(tmp_path / "sharp.npy", truth)
    out = run("deblur", str(tmp_path / "sharp.npy"), "--psf", "gaussian:5:1.2", "--noise",
              "1e-3", "--simulate", "--method", "lsqr", "-o", str(tmp_path / "out.npy"),
              "--quiet")
    assert out.returncode == 0, out.stderr
    restored = np.load(tmp_path / "out.npy")
    assert restored.shape == truth.shape
    assert "iterations" in out.stdout
    line = next(s for s in out.stdout.splitlines() if s.startswith("PSNR"))
    before, after = (float(v.split()[0]) for v in line.split("blurred ")[1].split("restored "))
    assert after > before
    # the blurred image written by --simulate can be restored again with --truth
    blurred = tmp_path / "out-blurred.png"
    assert blurred.exists()
    out2 = run("deblur", str(blurred), "--psf", "gaussian:5:1.2", "--truth",
               str(tmp_path / "sharp.npy"), "-o", str(tmp_path / "again.png"), "--maxiter", "5")
    assert out2.returncode == 0, out2.stderr
    assert "5 iterations" in out2.stdout and "PSNR" in out2.stdout
    assert (tmp_path / "again.png").exists()


def test_demo_writes_images(tmp_path):
    out = run("demo", "--out", str(tmp_path / "demo"), "--size", "64")
    assert out.returncode == 0, out.stderr
    assert "[[19. 25.]\n [37. 43.]]" in out.stdout
    assert "lsmr:" in out.stdout and "PSNR" in out.stdout
    for name in ("phantom", "blurred", "restored"):
        assert (tmp_path / "demo" / f"{name}.png").exists()


@pytest.mark.parametrize("args, message", [
    (["inspect", "--input", "3xAx4", "--kernel", "1x3x3x3"],
     "--input '3xAx4' is not a shape like 3x64x64"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--padding", "1:2:3"],
     "--padding '1:2:3': give lo:hi for every axis"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--stride", "0"],
     "stride must be >= 1 on every axis; axis 0 has stride=0"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x4x3x3"],
     "must equal input channels input_shape[0]=3"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--padding-mode", "mirror"],
     "argument --padding-mode: invalid choice: 'mirror'"),
    (["inspect", "--input", "1x80x80", "--kernel", "1x1x3x3", "--dense"],
     "--dense: the matrix is 6084 x 6400, larger than --dense-limit 64"),
    (["deblur", "missing.png", "--psf", "gaussian:5:1", "-o", "x.png"],
     "IMAGE missing.png: no such file"),
    (["deblur", "README.md", "--psf", "gaussian:5:1", "-o", "x.png"],
     "IMAGE README.md: cannot read it"),
    (["deblur", "x.npy", "--psf", "wiggle:3", "-o", "x.png"],
     "--psf 'wiggle:3' must be gaussian:SIZE:SIGMA, box:SIZE or a .npy file"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message in lines[0]
    assert lines[0].startswith("convmat")


def test_parsers():
    assert parse_shape("3x64x64", "--input") == (3, 64, 64)
    assert parse_padding("1") == 1 and parse_padding("1,2") == (1, 2)
    assert parse_padding("1:2,0:1") == ((1, 2), (0, 1)) and parse_padding("same") == "same"
    psf = parse_psf("gaussian:5:1.0")
    assert psf.shape == (5, 5) and abs(psf.sum() - 1) < 1e-15 and psf[2, 2] == psf.max()
    np.testing.assert_array_equal(parse_psf("box:3"), np.full((3, 3), 1 / 9))
