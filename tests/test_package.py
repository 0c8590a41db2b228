"""Packaging hygiene: imports stay light, the main job runs, lint and types are clean."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import convmat

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT, **kw)


def test_import_does_not_pull_optional_backends():
    code = ("import sys, convmat; bad = [m for m in ('cupy', 'cupyx', 'matplotlib', 'mpi4py', "
            "'petsc4py', 'torch') if m in sys.modules]; print(bad)")
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_api_is_explicit():
    for name in convmat.__all__:
        assert hasattr(convmat, name), name
    assert {"conv_matrix", "conv_transpose_matrix", "conv", "conv_transpose", "ConvOperator",
            "output_shape", "ConvGeometry", "ConvMatrixTooLarge"} <= set(convmat.__all__)


def test_main_job_prints_the_chapter(tmp_path):
    # `python -m convmat` with no command is the demo; it writes into the working folder
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "convmat"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert (tmp_path / "convmat-demo").is_dir()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # the 4x9 W of the chapter, W @ x and W.T @ x as the transposed convolution
    assert "[[0. 1. 0. 2. 3. 0. 0. 0. 0.]" in text
    assert "[[19. 25.]\n [37. 43.]]" in text
    assert "[[ 0.  0.  1.]\n [ 0.  4.  6.]\n [ 4. 12.  9.]]" in text
    assert "conv2d: (3, 64, 64) -> (10, 32, 32)" in text
    assert "conv_transpose2d: (10, 32, 32) -> (3, 64, 64)" in text


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff():
    out = _run(["ruff", "check", "convmat", "tests", "benchmarks", "notebooks"])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed")
def test_mypy():
    out = _run([sys.executable, "-m", "mypy", "convmat"])
    assert out.returncode == 0, out.stdout + out.stderr
