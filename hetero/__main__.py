"""``python -m hetero``: the ``hetero`` command (see ``hetero.cli``)."""

import sys

from hetero.cli import main

if __name__ == "__main__":
    sys.exit(main())
