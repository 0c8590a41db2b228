"""The GPU benchmark script runs end to end (on the CPU, tiny sizes): it cannot rot unseen."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_script_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu",
                          "--smoke", "--out", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    for heading in ["Device memory bandwidth", "### Build of W", "### Sparse products",
                    "### conv via W", "### Deblurring"]:
        assert heading in text
    # one row per smoke case in the build and product tables (and the conv table, with
    # PyTorch), and the deblur row
    torch_rows = 0 if "PyTorch is not installed" in text else 1
    assert text.count("| 4->4 ch, 32x32, 3x3 |") == 2 + torch_rows
    assert "| CPU (SciPy) |" in text
