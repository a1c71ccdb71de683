"""``python -m servewise``: the same as the ``servewise`` console script."""

import sys

from servewise.cli import main

if __name__ == "__main__":
    sys.exit(main())
