"""Spectral norms of ResNet-18's convolution layers: convmat against the field's estimates.

For each of the 20 convolution layers of ResNet-18 at their true sizes (224^2 input, zero
padding, true strides; random weights of the true shapes, float64), the table gives:

* convmat's ``spectral_norm(op, rtol=1e-6)`` of the zero-padded layer: the value, its
  certified bracket's relative width, the time and the products;
* PyTorch power iteration on ``W^T W`` (``conv2d`` then ``conv_transpose2d``) until it is
  within 1e-4 of convmat's value, or until a time cap: time and iterations;
* the values the field uses instead: the circular convolution with the layer's stride
  (Senderovich et al. 2022), the stride-1 circular one (Sedghi et al. 2019), PyTorch's
  reshaped-kernel "spectral norm" (``||w.reshape(C_out, -1)||_2``) and power iteration after
  100 steps, each as its ratio to the exact value.

Both sides run on the same threads (``--threads``, default all CPUs: the process affinity,
BLAS through threadpoolctl, ``torch.set_num_threads``). Prints Markdown and writes it to
``benchmarks/results/spectral.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convmat  # noqa: E402
from convmat.spectral import circular_spectrum  # noqa: E402

from timing import available_cpus, pin_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Layer:
    name: str
    cin: int
    cout: int
    k: int
    stride: int
    n: int

    @property
    def padding(self) -> int:
        return self.k // 2


def resnet18_layers() -> list[Layer]:
    """The 20 convolutions of ResNet-18 (torchvision), at a 224^2 input."""
    layers = [Layer("conv1 3->64 7x7 s2", 3, 64, 7, 2, 224)]
    layers += [Layer(f"layer1.{i} 64->64 3x3", 64, 64, 3, 1, 56) for i in range(4)]
    n, c = 56, 64
    for stage in (2, 3, 4):
        out = 2 * c
        layers.append(Layer(f"layer{stage}.0.conv1 {c}->{out} 3x3 s2", c, out, 3, 2, n))
        layers += [Layer(f"layer{stage}.{i} {out}->{out} 3x3", out, out, 3, 1, n // 2)
                   for i in range(3)]
        layers.append(Layer(f"layer{stage}.0.downsample {c}->{out} 1x1 s2", c, out, 1, 2, n))
        n, c = n // 2, out
    return layers


def smoke_layers() -> list[Layer]:
    return [Layer("smoke 4->4 3x3", 4, 4, 3, 1, 12), Layer("smoke 4->8 3x3 s2", 4, 8, 3, 2, 12)]


def circular_value(w: np.ndarray, n: int, stride: int) -> float:
    """The circular convolution's norm (exact, FFT) on an n x n torus at ``stride``."""
    k = w.shape[-1]
    total = k - 1 - (stride - 1 if k > 1 else 0)  # output n / stride
    lo = total // 2
    op = convmat.ConvOperator(w, (w.shape[1], n, n), stride=stride,
                              padding=((lo, total - lo), (lo, total - lo)),
                              padding_mode="circular")
    s = circular_spectrum(op)
    assert s is not None, op
    return float(s.max())


def torch_power(layer: Layer, w: np.ndarray, target: float | None, cap: float,
                steps: int | None = None) -> tuple[float, int, float]:
    """Power iteration on W^T W with PyTorch: (estimate, iterations, seconds).

    Stops after ``steps`` iterations, or when within 1e-4 of ``target``, or at ``cap``
    seconds.
    """
    import torch
    import torch.nn.functional as F

    tw = torch.from_numpy(w)
    shape = (1, layer.cin, layer.n, layer.n)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x /= x.norm()
    out_n = (layer.n + 2 * layer.padding - layer.k) // layer.stride + 1
    op = layer.n - ((out_n - 1) * layer.stride - 2 * layer.padding + layer.k)
    sigma, it = 0.0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        while True:
            y = F.conv2d(x, tw, stride=layer.stride, padding=layer.padding)
            sigma = float(y.norm())
            x = F.conv_transpose2d(y, tw, stride=layer.stride, padding=layer.padding,
                                   output_padding=op)
            x /= x.norm()
            it += 1
            if steps is not None and it >= steps:
                break
            if target is not None and abs(sigma - target) <= 1e-4 * target:
                break
            if time.perf_counter() - t0 > cap:
                break
    return sigma, it, time.perf_counter() - t0


def run(layers: list[Layer], threads: int, cap: float) -> str:
    how = pin_threads(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows, total_c, total_t = [], 0.0, 0.0
    for layer in layers:
        fan_in = layer.cin * layer.k * layer.k
        w = rng.standard_normal((layer.cout, layer.cin, layer.k, layer.k)) / np.sqrt(fan_in)
        op = convmat.ConvOperator(w, (layer.cin, layer.n, layer.n), stride=layer.stride,
                                  padding=layer.padding)
        t = time.perf_counter()
        r = convmat.spectral_norm(op, rtol=1e-6)
        tc = time.perf_counter() - t
        total_c += tc
        exact = r.value
        strided = circular_value(w, layer.n, layer.stride)
        sedghi = circular_value(w, layer.n, 1)
        reshaped = float(np.linalg.norm(w.reshape(layer.cout, -1), 2))
        if torch is not None:
            p100, _, _ = torch_power(layer, w, None, cap, steps=100)
            pv, pit, pt = torch_power(layer, w, exact, cap)
            total_t += pt
            reached = abs(pv - exact) <= 1e-4 * exact
            power = (f"{pt:.2f} s ({pit} it)" if reached
                     else f"not in {cap:.0f} s ({pit} it, rel. err {abs(pv - exact) / exact:.1e})")
            p100_cell = f"{p100 / exact:.6f}"
        else:  # pragma: no cover
            power, p100_cell = "torch not installed", "-"
        rows.append(
            f"| {layer.name} | {layer.n}^2 | {exact:.8f} | {r.width:.2%} | {tc:.2f} s "
            f"({r.products}) | {power} | {strided / exact:.4f} | {sedghi / exact:.4f} | "
            f"{reshaped / exact:.4f} | {p100_cell} |")
        print(rows[-1], flush=True)
    header = [
        f"Machine: {platform.machine()}, {available_cpus()} CPUs available; Python "
        f"{platform.python_version()}, NumPy {np.__version__}, convmat {convmat.__version__}"
        + (f", PyTorch {torch.__version__}" if torch is not None else "") + ".",
        "",
        f"Threads: {threads} for both sides ({how}; torch.set_num_threads({threads})). Random "
        "weights of the true shapes (He-scaled normal, seeded), float64, zero padding k//2.",
        "",
        "convmat: `spectral_norm(op, rtol=1e-6)` on the structured products (Lanczos, ARPACK); "
        "width = (upper - lower) / upper of the certified bracket (upper: the circular "
        "embedding bound, lower: ||W v|| at Lanczos' vector). PyTorch: power iteration on "
        "W^T W (conv2d, conv_transpose2d) from a seeded random start, stopped within 1e-4 of "
        f"convmat's value or after {cap:.0f} s. The last four columns are ratios to the "
        "exact value: the circular convolution at the layer's stride and at stride 1 "
        "(n x n torus, FFT), the reshaped-kernel norm, power iteration after 100 steps.",
        "",
        "| layer | input | sigma_max (convmat) | bracket width | convmat time (products) | "
        "torch power iteration to 1e-4 | circular, stride / exact | circular, stride 1 / "
        "exact | reshaped kernel / exact | power, 100 steps / exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    footer = ["", f"Total: convmat {total_c:.1f} s for {len(layers)} layers; PyTorch power "
              f"iteration {total_t:.1f} s (capped layers counted at the cap)."]
    return "\n".join(header + rows + footer) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--cap", type=float, default=15.0,
                        help="seconds of PyTorch power iteration per layer (default 15)")
    parser.add_argument("--smoke", action="store_true", help="two tiny layers (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS / "spectral.md")
    args = parser.parse_args()
    layers = smoke_layers() if args.smoke else resnet18_layers()
    text = run(layers, args.threads, 1.0 if args.smoke else args.cap)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
