"""The command line: output checked, bad input exits 2 with one line, bugs keep their traceback.

Most tests call ``convmat.cli.main`` in-process (a subprocess costs about a second); a few run
``python -m convmat`` to cover the module entry point and the exit status it returns.
"""

import argparse
import ast
import os
import re
import subprocess
import sys
import warnings
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

import convmat
import convmat.cli as cli
from convmat.cli import UsageError, main, parse_padding, parse_psf, parse_shape, read_image

ROOT = Path(__file__).resolve().parents[1]
INSPECT = ["inspect", "--input", "1x8x8", "--kernel", "1x1x3x3"]


def run(*args, cwd=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "convmat", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd or ROOT)


def call(capsys, *args):
    """``convmat.cli.main(args)`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, *args, work_done=False):
    """Run, check exit status 2 with one line on stderr (and, unless ``work_done``, nothing
    on stdout: the check came before any work); return the line."""
    code, out, err = call(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("convmat"), err
    assert work_done or out == "", out
    return lines[0]


@pytest.fixture
def sharp(tmp_path):
    path = tmp_path / "sharp.npy"
    np.save(path, convmat.data.phantom(16))
    return path


@pytest.fixture
def a_file(tmp_path):
    """A regular file: a path under it can be neither read nor written (even by root)."""
    path = tmp_path / "somefile.txt"
    path.write_text("not a folder\n")
    return path


def no_work(*args, **kwargs):
    raise AssertionError("the command did work before checking its options")


# --------------------------------------------------------------------------- it works
def test_inspect_prints_geometry(capsys):
    code, out, err = call(capsys, "inspect", "--input", "3x64x64", "--kernel", "10x3x4x4",
                          "--stride", "2", "--padding", "1")
    assert code == 0, err
    g = convmat.conv_geometry((10, 3, 4, 4), (3, 64, 64), stride=2, padding=1)
    assert "conv2d: (3, 64, 64) -> (10, 32, 32)" in out
    assert "output shape: (10, 32, 32)" in out
    assert f"nnz={g.nnz:,}" in out and f"density={g.density:.4g}" in out
    assert f"bytes: {g.nbytes:,}" in out


def test_inspect_transposed_dense_and_plot(capsys, tmp_path):
    plot = tmp_path / "w.png"
    options = np.get_printoptions()
    code, out, err = call(capsys, "inspect", "--input", "1x2x2", "--kernel", "1x1x2x2",
                          "--transposed", "--dense", "--plot", plot)
    assert code == 0, err
    assert "conv_transpose2d: (1, 2, 2) -> (1, 3, 3)" in out
    # weights 1..4 in kernel order: the 9x4 matrix of trans_conv
    dense = convmat.conv_transpose_matrix(np.arange(1.0, 5.0).reshape(1, 1, 2, 2),
                                          (1, 2, 2)).toarray()
    assert str(dense) in out
    assert plot.exists() and plot.stat().st_size > 1000
    assert np.get_printoptions() == options  # --dense leaves NumPy's print options alone


def test_deblur_simulated_and_truth(capsys, tmp_path):
    truth = convmat.data.phantom(48)
    np.save(tmp_path / "sharp.npy", truth)
    code, out, err = call(capsys, "deblur", tmp_path / "sharp.npy", "--psf", "gaussian:5:1.2",
                          "--noise", "1e-3", "--simulate", "--method", "lsqr", "-o",
                          tmp_path / "out.npy", "--quiet")
    assert code == 0, err
    restored = np.load(tmp_path / "out.npy")
    assert restored.shape == truth.shape
    assert "iterations" in out
    line = next(s for s in out.splitlines() if s.startswith("blurred: PSNR"))
    before, after = (float(v.split("PSNR ")[1].split()[0]) for v in line.split(" -> "))
    assert after > before and "SSIM" in line
    # the blurred image written by --simulate can be restored again with --truth
    blurred = tmp_path / "out-blurred.png"
    assert blurred.exists()
    code, out, err = call(capsys, "deblur", blurred, "--psf", "gaussian:5:1.2", "--truth",
                          tmp_path / "sharp.npy", "-o", tmp_path / "again.png", "--maxiter", "5",
                          "--quiet")
    assert code == 0, err
    assert "5 iterations" in out and "PSNR" in out
    assert out.startswith("noise level estimated from the image: sigma = ")
    assert (tmp_path / "again.png").exists()


def test_deblur_zero_image_with_noise(capsys, tmp_path):
    # ||y|| = 0 once divided the noise level (ZeroDivisionError); x = 0 is the answer
    np.save(tmp_path / "zero.npy", np.zeros((8, 8)))
    code, out, err = call(capsys, "deblur", tmp_path / "zero.npy", "--psf", "box:3", "--noise",
                          "0.1", "-o", tmp_path / "x.npy", "--quiet")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.zeros((8, 8)))


def test_demo_writes_images(tmp_path):
    # a subprocess: `python -m convmat` (convmat/__main__.py) end to end
    out = run("demo", "--out", str(tmp_path / "demo"), "--size", "64")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("== The transposed-convolution chapter, as sparse matrices ==")
    assert "[[19. 25.]\n [37. 43.]]" in out.stdout
    assert "lsmr:" in out.stdout and "PSNR" in out.stdout and "SSIM" in out.stdout
    assert "by the discrepancy principle" in out.stdout
    for name in ("deblur", "chapter"):
        assert (tmp_path / "demo" / f"{name}.png").stat().st_size > 10_000


def test_demo_figures_hold_the_panels_and_titles(capsys, tmp_path, monkeypatch):
    """The deblurring figure: three images titled with their scores, and the search curve;
    the chapter figure: the two matrices as annotated heat maps."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(cli, "_save", lambda fig, path, what="--out": figures.append(fig) or path)
    code, out, err = call(capsys, "demo", "--out", tmp_path / "demo", "--size", "48")
    assert code == 0, err
    deblur, chapter = figures
    titles = [ax.get_title() for ax in deblur.axes]
    assert titles[0].startswith("blurred\nPSNR ") and "SSIM" in titles[0]
    assert titles[1].startswith("restored\nPSNR ") and titles[2] == "truth"
    assert titles[3] == "the discrepancy principle's search"
    assert [len(ax.images) for ax in deblur.axes] == [1, 1, 1, 0]
    assert deblur.axes[3].get_legend() is not None
    assert [len(ax.texts) for ax in chapter.axes] == [4 * 9, 16 * 4]
    assert "19" not in [t.get_text() for t in chapter.axes[0].texts]  # entries, not products
    plt.close("all")


def test_stdout_closed_early_is_not_a_traceback():
    # `convmat inspect --dense ... | head -1`: 2 MB of matrix into a pipe nobody reads
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "convmat", "inspect", "--input", "1x30x30",
                             "--kernel", "1x1x3x3", "--dense", "--dense-limit", "1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == ""


def test_no_command_runs_the_demo_with_its_defaults(capsys, monkeypatch):
    seen = []
    monkeypatch.setitem(cli._COMMANDS, "demo", lambda args: seen.append(args) or 0)
    assert call(capsys) == (0, "", "")
    assert (seen[0].command, seen[0].out, seen[0].size) == ("demo", "convmat-demo", 128)


def test_main_module_is_the_entry_point_and_no_cycle():
    # [project.scripts] convmat = "convmat.__main__:main" (no tomllib on Python 3.10)
    script = re.search(r'^convmat = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    module, name = script.group(1).split(":")
    assert getattr(import_module(module), name) is cli.main
    # __main__ only calls cli.main; cli does not import __main__ (no cycle)
    tree = ast.parse((ROOT / "convmat" / "__main__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    tree = ast.parse((ROOT / "convmat" / "cli.py").read_text())
    assert not [n for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and "__main__" in (n.module or "")]


def test_every_option_has_help():
    parser = cli.build_parser()
    parsers, commands = [parser], None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = action
            parsers += list(action.choices.values())
    assert commands is not None and set(commands.choices) == {"demo", "inspect", "deblur"}
    assert all(choice.help for choice in commands._choices_actions)
    missing = [(p.prog, a.dest) for p in parsers for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []
    padding = next(a for a in commands.choices["inspect"]._actions if a.dest == "padding")
    assert all(word in padding.help for word in ("same", "valid", "lo:hi"))


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, message", [
    (["inspect", "--input", "3xAx4", "--kernel", "1x3x3x3"],
     "--input '3xAx4' is not a shape like 3x64x64"),
    (["inspect", "--input", "3x0x4", "--kernel", "1x3x3x3"],
     "--input '3x0x4' must have positive sizes"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--stride", "1,a"],
     "--stride '1,a' must be an int or comma-separated ints"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--padding", "1:a"],
     "--padding '1:a' must look like 1, 1,2, 1:2,0:1, same or valid"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--padding", "1:2:3"],
     "--padding '1:2:3': give lo:hi for every axis"),
    # the library's ValueError for a bad geometry
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--stride", "0"],
     "stride must be >= 1 on every axis; axis 0 has stride=0"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x4x3x3"],
     "must equal input channels input_shape[0]=3"),
    (["inspect", "--input", "3x8x8", "--kernel", "1x3x3x3", "--padding-mode", "mirror"],
     "argument --padding-mode: invalid choice: 'mirror'"),
    (["inspect", "--input", "1x80x80", "--kernel", "1x1x3x3", "--dense"],
     "--dense: the matrix is 6084 x 6400, larger than --dense-limit 64"),
    ([*INSPECT, "--groups", "0"], "argument --groups: must be an int >= 1, got 0"),
    ([*INSPECT, "--dense", "--dense-limit", "0"],
     "argument --dense-limit: must be an int between 1 and 1024, got 0"),
    ([*INSPECT, "--dense", "--dense-limit", "99999"],
     "argument --dense-limit: must be an int between 1 and 1024, got 99999"),
    (["demo", "--size", "0"], "argument --size: must be an int between 2 and 4096, got 0"),
    (["demo", "--size", "1"], "argument --size: must be an int between 2 and 4096, got 1"),
    (["demo", "--size", "5000"],
     "argument --size: must be an int between 2 and 4096, got 5000"),
    (["demo", "--size", "1.5"],
     "argument --size: must be an int between 2 and 4096, got '1.5'"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
])
def test_bad_option_exits_2_with_one_line(capsys, monkeypatch, args, message):
    monkeypatch.setattr(cli, "phantom", no_work)  # demo: options are checked first
    assert message in usage_error(capsys, *args)


@pytest.mark.parametrize("option, value, message", [
    ("--noise", "-1", "argument --noise: must be a finite number >= 0, got '-1'"),
    ("--noise", "nan", "argument --noise: must be a finite number >= 0, got 'nan'"),
    ("--noise", "inf", "argument --noise: must be a finite number >= 0, got 'inf'"),
    ("--noise", "abc", "argument --noise: must be a number, got 'abc'"),
    ("--damp", "-0.5", "argument --damp: must be a finite number >= 0, got '-0.5'"),
    ("--maxiter", "0", "argument --maxiter: must be an int >= 1, got 0"),
    ("--seed", "-1", "argument --seed: must be an int >= 0, got -1"),
])
def test_deblur_bad_numbers(capsys, monkeypatch, sharp, option, value, message):
    monkeypatch.setattr(cli, "deconvolve", no_work)
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", sharp.with_name("o.npy"),
                       option, value)
    assert line.startswith("convmat deblur: error: ") and message in line


def test_deblur_truth_and_simulate_exclude_each_other(capsys, sharp):
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "--simulate", "--truth", sharp,
                       "-o", sharp.with_name("o.npy"))
    assert "argument --truth: not allowed with argument --simulate" in line


def test_unknown_output_extension_refused_before_any_work(capsys, monkeypatch, sharp):
    # was: KeyError: 'XYZ' and exit 1, after the solve
    for stage in ("read_image", "parse_psf", "deconvolve"):
        monkeypatch.setattr(cli, stage, no_work)
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", "out.xyz")
    assert line == ("convmat deblur: error: -o out.xyz: the extension must be one of .png, "
                    ".npy, got '.xyz'")
    assert "got 'none'" in usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", "out")


def test_unknown_output_extension_subprocess(tmp_path):
    # `python -m convmat` returns the status: 2, and one line, no traceback
    out = run("deblur", "missing.npy", "--psf", "box:3", "-o", "out.xyz", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "convmat deblur: error: -o out.xyz: the extension must be one of .png, .npy, got '.xyz'"]
    assert out.stdout == "" and not (tmp_path / "out.xyz").exists()


@pytest.mark.parametrize("name", ["out.png", "out.npy"])
def test_output_under_a_file_refused(capsys, monkeypatch, sharp, a_file, name):
    # was: FileExistsError traceback (from mkdir), after the solve
    monkeypatch.setattr(cli, "deconvolve", no_work)
    target = a_file / name
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", target)
    assert line == f"convmat deblur: error: -o {target}: {a_file} is not a folder"


def test_output_in_missing_folder_or_a_folder_refused(capsys, monkeypatch, sharp, tmp_path):
    monkeypatch.setattr(cli, "deconvolve", no_work)
    target = tmp_path / "nowhere" / "out.npy"
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", target)
    assert f"-o {target}: {target.parent} does not exist (it is not created)" in line
    assert not target.parent.exists()
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", folder)
    assert f"-o {folder}: is a folder, not a file" in line
    # --simulate also writes OUTPUT-blurred.png: checked up front as well
    (tmp_path / "o-blurred.png").mkdir()
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "--simulate", "-o",
                       tmp_path / "o.npy")
    assert f"-o {tmp_path / 'o-blurred.png'}: is a folder, not a file" in line


def test_output_not_writable_refused(capsys, monkeypatch, sharp, tmp_path):
    # root may write anywhere, so the permission test asks os.access through a stub
    monkeypatch.setattr(cli, "deconvolve", no_work)
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    target = tmp_path / "out.npy"
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", target)
    assert line == f"convmat deblur: error: -o {target}: not writable"
    line = usage_error(capsys, "demo", "--out", tmp_path / "demo")
    assert line == f"convmat demo: error: --out {tmp_path / 'demo'}: {tmp_path} is not writable"


@pytest.mark.parametrize("name", ["out.png", "out.npy"])
def test_write_failure_is_a_usage_error(capsys, monkeypatch, sharp, a_file, name):
    # an OSError while writing (disk full, a race) is caught around the write itself
    monkeypatch.setattr(cli, "_check_output", lambda *args: None)
    target = a_file / name
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "--maxiter", "2", "--quiet",
                       "-o", target, work_done=True)
    assert line.startswith(f"convmat deblur: error: -o {target}: cannot write it (")


def test_plot_under_a_file_refused(capsys, monkeypatch, a_file):
    # was: FileExistsError traceback (from mkdir)
    monkeypatch.setattr(cli, "ConvOperator", no_work)
    target = a_file / "out.png"
    line = usage_error(capsys, *INSPECT, "--plot", target)
    assert line == f"convmat inspect: error: --plot {target}: {a_file} is not a folder"


def test_plot_into_missing_folder_refused(capsys, monkeypatch, tmp_path):
    # was: the folder was created silently
    monkeypatch.setattr(cli, "ConvOperator", no_work)
    target = tmp_path / "missing" / "p.png"
    line = usage_error(capsys, *INSPECT, "--plot", target)
    assert line == (f"convmat inspect: error: --plot {target}: {target.parent} does not exist "
                    "(it is not created)")
    assert not target.parent.exists()


def test_plot_extension_and_write_failure(capsys, monkeypatch, tmp_path, a_file):
    line = usage_error(capsys, *INSPECT, "--plot", tmp_path / "p.xyz")
    assert "--plot" in line and "the extension must be one of .png, .pdf, .svg, got '.xyz'" in line
    monkeypatch.setattr(cli, "_check_output", lambda *args: None)
    target = a_file / "p.png"
    line = usage_error(capsys, *INSPECT, "--plot", target, work_done=True)
    assert line.startswith(f"convmat inspect: error: --plot {target}: cannot write it (")


def test_plot_without_matplotlib(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    line = usage_error(capsys, *INSPECT, "--plot", tmp_path / "p.png")
    assert "--plot" in line and "plotting needs matplotlib (pip install matplotlib)" in line


def test_demo_out_checked_before_any_work(capsys, monkeypatch, a_file):
    monkeypatch.setattr(cli, "phantom", no_work)
    line = usage_error(capsys, "demo", "--out", a_file / "sub" / "demo")
    assert line == f"convmat demo: error: --out {a_file / 'sub' / 'demo'}: {a_file} is not a folder"


def test_demo_out_creation_failure(capsys, monkeypatch, a_file):
    monkeypatch.setattr(cli, "_check_folder", lambda *args: None)
    code, out, err = call(capsys, "demo", "--size", "8", "--out", a_file / "demo")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"convmat demo: error: --out {a_file / 'demo'}: cannot create it (")


def test_demo_images_write_failure(capsys, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.np, "save", fail)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # PNGs fall back to np.save
    code, out, err = call(capsys, "demo", "--size", "8", "--out", tmp_path)
    assert code == 2
    assert err.splitlines() == [f"convmat demo: error: --out {tmp_path / 'phantom.npy'}: cannot "
                                "write it ([Errno 28] No space left on device)"]


@pytest.mark.parametrize("make, message", [
    (lambda: np.ones((8, 8)) + 1j, r"complex values \(dtype complex128\); give a real array"),
    (lambda: np.zeros((8, 8, 4)), r"a \.npy image must be a 2-D array, got shape \(8, 8, 4\)"),
    (lambda: np.zeros(8), r"a \.npy image must be a 2-D array, got shape \(8,\)"),
    (lambda: np.full((2, 2), "a"), r"dtype <U1 is not a real number type"),
    (lambda: np.array([[0.5, np.nan], [np.inf, 0.0]]), r"contains NaN or inf \(2 of 4 values\)"),
])
def test_read_image_refuses(tmp_path, make, message):
    # complex and 3-D arrays were accepted (imaginary part dropped, or read as RGBA)
    path = tmp_path / "img.npy"
    np.save(path, make())
    with pytest.raises(UsageError, match=rf"^--truth {path}: {message}$"):
        read_image(path, "--truth")


def test_read_image_complex_via_command(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "deconvolve", no_work)
    np.save(tmp_path / "c.npy", np.ones((8, 8)) + 1j)
    line = usage_error(capsys, "deblur", tmp_path / "c.npy", "--psf", "box:3", "-o",
                       tmp_path / "o.npy")
    assert line == (f"convmat deblur: error: IMAGE {tmp_path / 'c.npy'}: complex values (dtype "
                    "complex128); give a real array")


def test_read_image_files(tmp_path, monkeypatch):
    import matplotlib.image as mpimg

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 255
    mpimg.imsave(tmp_path / "rgb.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), np.full((4, 5), 0.7152),
                               rtol=1e-6)
    np.save(tmp_path / "u8.npy", np.full((2, 3), 255, np.uint8))
    np.testing.assert_array_equal(read_image(tmp_path / "u8.npy"), np.ones((2, 3)))
    with pytest.raises(UsageError, match=r"^IMAGE .*nope\.png: no such file$"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UsageError, match=r"^IMAGE .*text\.png: cannot read it \("):
        read_image(tmp_path / "text.png")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(UsageError, match=r"^IMAGE .*empty\.npy: cannot read it \(No data left"):
        read_image(tmp_path / "empty.npy")
    # a reader that returns neither 2-D nor RGB(A)
    monkeypatch.setattr(mpimg, "imread", lambda path: np.zeros((4, 5, 2)))
    with pytest.raises(UsageError, match=r"expected a 2-D grayscale or RGB\(A\) image, got "
                                         r"shape \(4, 5, 2\)$"):
        read_image(tmp_path / "rgb.png")
    monkeypatch.setitem(sys.modules, "matplotlib.image", None)
    with pytest.raises(UsageError, match=r"reading images needs matplotlib \(pip install "
                                         r"matplotlib\), or give a \.npy file$"):
        read_image(tmp_path / "rgb.png")


def test_truth_shape_mismatch(capsys, monkeypatch, sharp, tmp_path):
    monkeypatch.setattr(cli, "deconvolve", no_work)
    np.save(tmp_path / "t.npy", np.zeros((8, 8)))
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "--truth", tmp_path / "t.npy",
                       "-o", tmp_path / "o.npy")
    assert "--truth has shape (8, 8) but IMAGE has (16, 16)" in line


def test_deblur_psf_refused_by_the_library(capsys, monkeypatch, sharp, tmp_path):
    # the geometry's ValueError: a 5x5 reflect padding needs an input of at least 3
    monkeypatch.setattr(cli, "deconvolve", no_work)
    np.save(tmp_path / "tiny.npy", np.zeros((2, 2)))
    line = usage_error(capsys, "deblur", tmp_path / "tiny.npy", "--psf", "box:5",
                       "--padding-mode", "reflect", "-o", tmp_path / "o.npy")
    assert "reflect" in line


def test_too_large_is_a_usage_error(capsys, monkeypatch, sharp, tmp_path):
    # ConvMatrixTooLarge (the library's memory guard) becomes one line, exit 2, everywhere
    def too_large(*args, **kwargs):
        raise convmat.ConvMatrixTooLarge("W needs 10 bytes, over the limit of 1 bytes")

    monkeypatch.setattr(cli, "ConvOperator", too_large)
    monkeypatch.setattr(cli, "deconvolve", no_work)
    monkeypatch.setattr(cli, "phantom", no_work)
    expected = "error: W needs 10 bytes, over the limit of 1 bytes"
    assert expected in usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o",
                                   tmp_path / "o.npy")
    assert expected in usage_error(capsys, "demo", "--out", tmp_path / "d")
    monkeypatch.setattr(cli, "check_memory", too_large)
    assert expected in usage_error(capsys, *INSPECT)


def test_huge_padding_is_a_usage_error():
    # was: "Unable to allocate 745. GiB" from NumPy. Needs the library to refuse the size
    # (ConvMatrixTooLarge) before allocating; a subprocess with a timeout keeps it contained.
    try:
        out = run(*INSPECT, "--padding", "99999999999", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("inspect --padding 99999999999 ran for over 60 s")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("convmat inspect: error: "), out.stderr
    assert "bytes" in lines[0] or "limit" in lines[0], lines[0]


# --------------------------------------------------------------------------- bugs stay bugs
@pytest.mark.parametrize("error", [RuntimeError, ValueError, TypeError])
def test_internal_bug_keeps_its_traceback(capsys, monkeypatch, sharp, tmp_path, error):
    def bug(*args, **kwargs):
        raise error("an internal bug")

    monkeypatch.setattr(cli, "deconvolve", bug)
    with pytest.raises(error, match="an internal bug"):
        main(["deblur", str(sharp), "--psf", "box:3", "-o", str(tmp_path / "o.npy")])
    # a ValueError while building the matrix (after the geometry was validated) is a bug too
    monkeypatch.setattr(cli, "ConvOperator", bug)
    with pytest.raises(error, match="an internal bug"):
        main([*INSPECT, "--dense"])


# --------------------------------------------------------------------------- parsers
def test_parsers():
    assert parse_shape("3x64x64", "--input") == (3, 64, 64)
    assert parse_padding("1") == 1 and parse_padding("1,2") == (1, 2)
    assert parse_padding("1:2,0:1") == ((1, 2), (0, 1)) and parse_padding("same") == "same"
    assert parse_padding("valid") == "valid"
    psf = parse_psf("gaussian:5:1.0")
    assert psf.shape == (5, 5) and abs(psf.sum() - 1) < 1e-15 and psf[2, 2] == psf.max()
    np.testing.assert_array_equal(parse_psf("box:3"), np.full((3, 3), 1 / 9))
    with warnings.catch_warnings():  # a warning would be a second line on stderr
        warnings.simplefilter("error")
        # so narrow that the off-centre samples overflow to exp(-inf) = 0: a delta
        delta = np.zeros((3, 3))
        delta[1, 1] = 1.0
        np.testing.assert_array_equal(parse_psf("gaussian:3:1e-200"), delta)
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize("text, what, message", [
    ("3xAx4", "--input", r"^--input '3xAx4' is not a shape like 3x64x64$"),
    ("", "--kernel", r"^--kernel '' is not a shape like 3x64x64$"),
    ("3x-1", "--kernel", r"^--kernel '3x-1' must have positive sizes$"),
])
def test_parse_shape_refuses(text, what, message):
    with pytest.raises(UsageError, match=message):
        parse_shape(text, what)


@pytest.mark.parametrize("text, message", [
    ("a", r"^--padding 'a' must be an int or comma-separated ints$"),
    ("1:x", r"^--padding '1:x' must look like 1, 1,2, 1:2,0:1, same or valid$"),
    ("1:2,3", r"^--padding '1:2,3': give lo:hi for every axis$"),
])
def test_parse_padding_refuses(text, message):
    with pytest.raises(UsageError, match=message):
        parse_padding(text)


@pytest.mark.parametrize("text, message", [
    ("wiggle:3", r"^--psf 'wiggle:3' must be gaussian:SIZE:SIGMA, box:SIZE or a \.npy file$"),
    ("gaussian:5", r"must be gaussian:SIZE:SIGMA, box:SIZE or a \.npy file$"),
    ("box:2.5", r"must be gaussian:SIZE:SIGMA, box:SIZE or a \.npy file$"),
    ("box:0", r"^--psf 'box:0': SIZE must be between 1 and 1024, got 0$"),
    ("gaussian:5000:1", r"^--psf 'gaussian:5000:1': SIZE must be between 1 and 1024, got 5000$"),
    ("gaussian:5:0", r"^--psf 'gaussian:5:0': SIGMA must be a finite number > 0, got 0\.0$"),
    ("gaussian:5:nan", r"SIGMA must be a finite number > 0, got nan$"),
    ("gaussian:5:inf", r"SIGMA must be a finite number > 0, got inf$"),
    # every sample of an even Gaussian this narrow underflows to 0
    ("gaussian:4:0.001", r"^--psf gaussian:4:0.001: the PSF must have a finite, non-zero "
                         r"sum, got 0\.0$"),
])
def test_parse_psf_refuses(text, message):
    with pytest.raises(UsageError, match=message):
        parse_psf(text)


@pytest.mark.parametrize("array, message", [
    (np.ones((2, 2, 2)), r"expected a 2-D array, got shape \(2, 2, 2\)$"),
    (np.ones((3, 3)) * 1j, r"complex values \(dtype complex128\); give a real array$"),
    (np.array([[1.0, np.nan]]), r"contains NaN or inf \(1 of 2 values\)$"),
    (np.zeros((3, 3)), r"the PSF must have a finite, non-zero sum, got 0\.0$"),
    (np.array([[1e308, 1e308]]), r"the PSF must have a finite, non-zero sum, got inf$"),
])
def test_parse_psf_file_refuses(tmp_path, array, message):
    path = tmp_path / "psf.npy"
    np.save(path, array)
    with pytest.raises(UsageError, match=f"^--psf {path}: {message}"):
        parse_psf(str(path))
    np.save(path, np.arange(4.0).reshape(2, 2))
    np.testing.assert_array_equal(parse_psf(str(path)), np.arange(4.0).reshape(2, 2) / 6)


# --------------------------------------------------------------------------- choosing weights
@pytest.fixture
def blurred_phantom(tmp_path):
    """A 40x40 phantom blurred (symmetric boundary) with noise 1e-2, and its truth."""
    truth = convmat.data.phantom(40)
    op = convmat.ConvOperator(convmat.cli.parse_psf("gaussian:5:1.2"), truth.shape,
                              padding="same", padding_mode="symmetric")
    y = op @ truth + 1e-2 * np.random.default_rng(0).standard_normal(truth.shape)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "truth.npy", truth)
    return tmp_path / "y.npy", tmp_path / "truth.npy", op, y


@pytest.mark.parametrize("rule", ["discrepancy", "gcv", "rgcv", "lcurve"])
def test_deblur_chooses_the_damping(capsys, blurred_phantom, tmp_path, rule):
    y_path, truth_path, op, y = blurred_phantom
    code, out, err = call(capsys, "deblur", y_path, "--psf", "gaussian:5:1.2", "--damp",
                          f"auto:{rule}", "--noise", "1e-2", "--truth", truth_path, "-o",
                          tmp_path / "x.npy", "--quiet")
    assert code == 0, err
    line = next(s for s in out.splitlines() if s.startswith("damp = "))
    value = float(line.split()[2])
    assert f"by {rule} (" in line
    # the same choice as the library's, on the same (symmetric) boundary model
    ref = convmat.deconvolve(y, op, method="lsmr", damp=rule, noise_level=1e-2, maxiter=500)
    assert value == pytest.approx(ref.choice.value, rel=1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), ref.x, rtol=0, atol=1e-12)


def test_deblur_gradient_bounds_and_the_estimated_noise(capsys, blurred_phantom, tmp_path):
    y_path, truth_path, op, y = blurred_phantom
    code, out, err = call(capsys, "deblur", y_path, "--psf", "gaussian:5:1.2", "--regularizer",
                          "gradient", "--lam", "auto:discrepancy", "--bounds", "0:1", "-o",
                          tmp_path / "x.npy", "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    sigma = convmat.estimate_noise(y)
    assert lines[0] == (f"noise level estimated from the image: sigma = {sigma:.3g} (wavelet "
                        "MAD); --noise SIGMA sets it")
    assert lines[1].startswith("lam = ") and "by discrepancy" in lines[1]
    assert lines[2].startswith("spg: ")
    x = np.load(tmp_path / "x.npy")
    assert x.min() >= 0 and x.max() <= 1
    # without a rule: the iterations stop on the discrepancy of the estimated noise
    code, out, err = call(capsys, "deblur", y_path, "--psf", "gaussian:5:1.2", "--mode", "zeros",
                          "-o", tmp_path / "z.npy", "--quiet")
    assert code == 0, err
    assert "discrepancy reached: ||W x - y||" in out


@pytest.mark.parametrize("args, message", [
    (["--damp", "auto:best"], "argument --damp: must be a number >= 0 or "
                              "auto:discrepancy|gcv|rgcv|lcurve, got 'auto:best'"),
    (["--lam", "-1"], "argument --lam: must be a finite number >= 0, got '-1'"),
    (["--noise", "guess"], "argument --noise: must be a number, got 'guess'"),
    (["--bounds", "0"], "argument --bounds: must be LO:HI (e.g. 0: or 0:1), got '0'"),
    (["--bounds", "a:1"], "argument --bounds: must be LO:HI with numbers (e.g. 0: or 0:1), "
                          "got 'a:1'"),
    (["--bounds", "inf:"], "argument --bounds: must be LO:HI with finite numbers, got 'inf:'"),
    (["--bounds", "1:0"], "argument --bounds: LO must be < HI, got '1:0'"),
    (["--mode", "mirror"], "argument --mode/--padding-mode: invalid choice: 'mirror'"),
    (["--lam", "0.1"], "--lam weighs a regularizer: add --regularizer gradient"),
    (["--simulate"], "--simulate needs --noise SIGMA: the noise it adds"),
])
def test_deblur_new_option_errors(capsys, monkeypatch, sharp, args, message):
    monkeypatch.setattr(cli, "deconvolve", no_work)
    line = usage_error(capsys, "deblur", sharp, "--psf", "box:3", "-o", sharp.with_name("o.npy"),
                       *args)
    assert line.startswith("convmat deblur: error: ") and message in line
