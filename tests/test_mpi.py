"""convmat.petsc on 1 and 2 MPI ranks, against the single-process SciPy path.

The check runs in a subprocess under ``mpiexec``. It needs a Python with petsc4py: this one,
or Debian's ``/usr/bin/python3`` with ``python3-petsc4py`` (what ``.ci/run`` installs). The
tests skip, saying why, when none is found.
"""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mpi_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    if "PETSC_DIR" not in env:  # Debian's petsc4py finds PETSc through PETSC_DIR
        found = sorted(glob.glob("/usr/lib/petscdir/petsc*/x86_64-linux-gnu-real"))
        if found:
            env["PETSC_DIR"] = found[-1]
    return env


def _find_python():
    """A Python interpreter that imports petsc4py, and why not when there is none."""
    if shutil.which("mpiexec") is None:
        return None, "mpiexec is not on PATH"
    candidates = [os.environ.get("CONVMAT_MPI_PYTHON"), sys.executable, "/usr/bin/python3"]
    for python in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        code = "import petsc4py, scipy; from petsc4py import PETSc"
        probe = subprocess.run([python, "-c", code], capture_output=True, env=_mpi_env(),
                               timeout=60)
        if probe.returncode == 0:
            return python, ""
    return None, "no Python with petsc4py found (pip install convmat[mpi], or apt-get install " \
                 "python3-petsc4py)"


PYTHON, WHY = _find_python()
needs_mpi = pytest.mark.skipif(PYTHON is None, reason=WHY)


def test_without_petsc4py_the_import_error_says_how_to_install(monkeypatch):
    import numpy as np

    from convmat import petsc

    monkeypatch.setitem(sys.modules, "petsc4py", None)
    with pytest.raises(ImportError, match=r"convmat.petsc needs petsc4py: pip install "
                                          r"convmat\[mpi\] \(or Debian's python3-petsc4py\)"):
        petsc.conv_matrix(np.ones((3, 3)), (5, 5))


def test_cupy_weight_is_refused_before_petsc(monkeypatch):
    import types

    from convmat import petsc

    class FakeCupyArray:
        shape, dtype = (3, 3), "float64"

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=FakeCupyArray))
    with pytest.raises(TypeError, match=r"convmat.petsc builds from NumPy weights"):
        petsc.DistributedConvOperator(FakeCupyArray(), (5, 5))


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2])
def test_petsc_matches_scipy(ranks):
    script = str(ROOT / "tests" / "mpi_check.py")
    out = subprocess.run(["mpiexec", "-n", str(ranks), PYTHON, script], capture_output=True,
                         text=True, env=_mpi_env(), timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ALL OK" in out.stdout
    cases = [line for line in out.stdout.splitlines() if line.startswith("OK ")]
    assert len(cases) == 6, out.stdout  # the error checks and five cases
    assert f"ranks={ranks}" in out.stdout


def test_channels_last_is_refused_before_petsc():
    """Validated before petsc4py is imported: the refusal holds with or without PETSc."""
    from convmat import petsc

    with pytest.raises(ValueError, match=r"convmat.petsc builds channels-first matrices .*"
                       r"layout='channels_last' is not supported"):
        petsc.DistributedConvOperator(np.ones((3, 3, 1, 2)), (8, 8, 1), padding=1,
                                      layout="channels_last")

