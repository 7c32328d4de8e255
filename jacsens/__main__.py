"""`python -m jacsens`: the `jacsens` command line (see `jacsens.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
