"""README's runnable examples run as written (the intro, "Operators that compose", the paths)."""

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
#: Sections whose ```python blocks are complete programs (the others show fragments with the
#: user's own data: a PSF, an image, a PETSc session).
RUNNABLE = ("# convmat", "## Operators that compose", "## Applying W: the CSR, a GEMM or an FFT",
            "## From your framework: PyTorch and ONNX in, PyTorch and PyLops out",
            "## Singular values, certified norms, conditioning")
#: What a section's examples import beyond convmat's own dependencies.
NEEDS = {"## From your framework: PyTorch and ONNX in, PyTorch and PyLops out":
         ("torch", "onnx", "pylops")}


def runnable_blocks():
    blocks, section = [], None
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.strip()
        if line.strip() == "```python":
            j = lines.index("```", i + 1)
            if section in RUNNABLE:
                blocks.append(pytest.param("\n".join(lines[i + 1:j]), NEEDS.get(section, ()),
                                           id=f"{section}:{i + 1}"))
            i = j
        i += 1
    return blocks


def test_there_are_runnable_examples():
    ids = [p.id for p in runnable_blocks()]
    assert any(i.startswith("# convmat") for i in ids), ids
    assert any(i.startswith("## Operators that compose") for i in ids), ids


@pytest.mark.parametrize(("code", "needs"), runnable_blocks())
def test_readme_example_runs(code, needs, tmp_path, monkeypatch):
    for package in needs:
        pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)  # the examples may write files (an ONNX export)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert "convmat" in namespace  # the block ran to its end (its own asserts included)
