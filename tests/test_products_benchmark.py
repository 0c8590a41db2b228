"""The products benchmark script runs end to end (tiny sizes): it cannot rot unseen."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE_LAYERS = ["4->4 3x3, 16^2", "1 ch 32^2, 5x5 s2"]


def test_products_benchmark_script_runs(tmp_path):
    out = tmp_path / "products.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "products.py"), "--smoke",
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    for heading in ["### Summary: convmat auto / torch per product", "### Forward products W @ x",
                    "### Adjoint products W^T @ y",
                    "### Batched forward products (N = 16)", "### Cost model vs measured"]:
        assert heading in text
    no_torch = "torch not installed" in text
    try:
        import torch  # noqa: F401
    except ImportError:
        assert no_torch
    else:
        assert not no_torch
    threads = text.count("| 4->4 3x3, 16^2 | float64 | ")  # forward, adjoint, batch, model
    assert threads % 4 == 0 and threads >= 4
    per_table = threads // 4  # thread counts run (1, and 2 where the CPUs allow)
    for layer in SMOKE_LAYERS:
        for dtype in ("float64", "float32"):
            rows = [line for line in text.splitlines()
                    if line.startswith(f"| {layer} | {dtype} | ")]
            batched = layer == SMOKE_LAYERS[0]
            assert len(rows) == per_table * (4 if batched else 3), rows
    # every forward row names the path auto took
    assert text.count("(csr)") + text.count("(direct)") + text.count("(fft)") >= 8
