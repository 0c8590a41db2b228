"""Doctests of the optional bridges skip, saying why, when their package is missing."""

import importlib.util

import pytest

#: doctest name -> the optional package its example needs.
NEEDS = {
    "convmat.modules.from_torch": "torch",
    "convmat.interop.to_torch": "torch",
    "convmat.interop.to_pylops": "pylops",
    "convmat.onnxgraph.from_onnx": "onnx",
    "convmat.spectral.lipschitz_bound": "torch",
}


def pytest_collection_modifyitems(config, items):
    """Skip the doctests whose optional package is missing."""
    for item in items:
        package = NEEDS.get(item.name)
        if package and importlib.util.find_spec(package) is None:
            item.add_marker(pytest.mark.skip(reason=f"{package} is not installed (optional)"))
