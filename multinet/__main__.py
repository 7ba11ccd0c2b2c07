"""``python -m multinet``: the ``multinet`` command."""

import sys

from multinet.cli import main

if __name__ == "__main__":
    sys.exit(main())
