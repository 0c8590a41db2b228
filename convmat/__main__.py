"""``python -m convmat``: the ``convmat`` command (see :mod:`convmat.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
