"""Built-in test data: the phantom's values and its argument checks."""

import numpy as np
import pytest

from convmat.data import phantom


def test_phantom_values():
    img = phantom(64)
    assert img.shape == (64, 64) and img.dtype == np.float64
    assert img.min() == 0.0 and img.max() == 1.0
    assert img[0, 0] == 0.0 and img[32, 32] > 0  # outside the head; inside it
    np.testing.assert_array_equal(phantom(np.int64(16)), phantom(16))  # NumPy ints are ints


@pytest.mark.parametrize("n", [1, 0, -3, 2.5, 64.0, True, "64", None])
def test_phantom_refuses_bad_sizes(n):
    with pytest.raises(ValueError, match=rf"^phantom size n must be an int >= 2, got n={n!r}$"):
        phantom(n)
