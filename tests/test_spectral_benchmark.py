"""The spectral benchmark script runs end to end (tiny layers): it cannot rot unseen."""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_spectral_benchmark_script_runs(tmp_path):
    out = tmp_path / "spectral.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spectral.py"), "--smoke",
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| smoke")]
    assert len(rows) == 2
    for row in rows:
        value = float(row[2])
        assert value > 0
        assert 0 <= float(row[3].strip().rstrip("%")) < 1  # the bracket's width
        circular_ratio = float(row[6])
        assert np.isfinite(circular_ratio) and circular_ratio >= 1 - 1e-9  # an upper bound
