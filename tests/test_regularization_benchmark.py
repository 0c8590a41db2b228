"""The regularisation benchmark script runs end to end (one small case): it cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_regularization_benchmark_script_runs(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "regularization.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "regularization.py"),
                          "--smoke", "--out", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    (row,) = [line.split("|")[1:-1] for line in text.splitlines()
              if line.startswith("| astronaut | gaussian 5x5")]
    oracle = float(row[4].split(",")[1])
    for cell in row[5:9]:  # each rule's PSNR is at most the oracle's (plus its 0.02 step)
        assert float(cell.split(",")[1].split("(")[0]) <= oracle + 0.05
    assert text.count("| astronaut 64^2 |") == 2 and "`lsq_linear`" in text
