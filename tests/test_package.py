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
            "'petsc4py', 'torch', 'onnx', 'pylops') if m in sys.modules]; print(bad)")
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


# --------------------------------------------------------------------------- the house
#: The modules in the order of the flow: each may import only modules before it
#: (geometry -> indices -> matrix -> operators -> solvers), and the leaves come last (the
#: command line may plot with viz; nothing in the flow imports a leaf).
FLOW = ["backend", "arguments", "sizes", "thumbnail", "data", "axes", "transposed_axes",
        "guard", "csr", "geometry", "indices", "transposed", "products", "structured", "matrix",
        "algebra", "operator", "separable", "layers", "modules", "interop", "onnxgraph",
        "spectral", "result", "krylov",
        "system", "regularization", "solvers"]
LEAVES = ["viz", "metrics", "petsc", "cli", "__main__"]


def _relative_imports(path):
    """``(module, name)`` of every relative import in ``path`` (function-level ones too)."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            for alias in node.names:
                out.append((node.module or "", alias.name))
    return out


def test_the_house_flows_one_way_without_private_imports():
    """One module per job in the order of the flow; no private name crosses modules."""
    package = ROOT / "convmat"
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert set(modules) <= set(FLOW + LEAVES), "a new module needs its place in FLOW"
    rank = {name: i for i, name in enumerate(FLOW + LEAVES)}
    for name in modules:
        for module, imported in _relative_imports(package / f"{name}.py"):
            target = module or imported  # `from . import x` imports the module x
            assert not imported.startswith("_") and not target.startswith("_"), (
                f"{name} imports the private {module}.{imported}")
            if module == "" and target not in rank:  # from the package itself
                assert name in LEAVES, f"{name} imports from the package: only leaves may"
                continue
            assert rank[target] < rank[name] or name == "__main__", (
                f"{name} imports {target}, which comes after it in the flow")
    main = [line for line in (package / "__main__.py").read_text().splitlines()[1:] if line]
    assert len(main) == 3 and "cli" in main[0], main
