"""Every notebook runs from top to bottom (cells check the numbers they show).

The notebooks run with ``CONVMAT_NOTEBOOK_QUICK=1``: the deconvolution notebook works on a
32 x 32 image instead of 128 x 128 (same cells, same checks). ``HYPOTHESIS_PROFILE=thorough``
runs them at full size, as ``notebooks/build.py`` does for the committed outputs; an explicit
``CONVMAT_NOTEBOOK_QUICK`` in the environment wins over both.
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
QUICK = os.environ.get("CONVMAT_NOTEBOOK_QUICK", "0" if THOROUGH else "1") == "1"


def _text(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.get("output_type") == "stream")


def test_the_notebooks_are_committed_with_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_transposed_convolution.ipynb",
                                           "02_inside_the_matrix.ipynb",
                                           "03_deconvolution.ipynb",
                                           "04_local_linear_map.ipynb",
                                           "05_spectrum.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), path.name
        assert any(o.get("output_type") in ("display_data", "execute_result")
                   for c in code for o in c.outputs), path.name
    # the committed outputs are the full-size run (build.py clears CONVMAT_NOTEBOOK_QUICK)
    assert " (128, 128)\n" in _text(nbformat.read(NOTEBOOKS[2], as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    if path.name.startswith("04"):  # the network is a PyTorch model
        pytest.importorskip("torch")
    monkeypatch.setenv("CONVMAT_NOTEBOOK_QUICK", "1" if QUICK else "0")  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert errors == []
    if path.name.startswith("03"):  # the flag reached the kernel
        assert (" (32, 32)\n" if QUICK else " (128, 128)\n") in _text(nb)
