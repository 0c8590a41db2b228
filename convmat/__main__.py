"""``python -m convmat``: the ``convmat`` command (see :mod:`convmat.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
