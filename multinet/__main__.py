"""``python -m multinet`` and the ``multinet`` console script."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    """Run the ``multinet`` command (``multinet.cli.main``); returns the exit status.

    ``import multinet`` settles the backend (picking an installed one where
    Keras' default is missing) without importing Keras; the command imports
    Keras once its arguments are parsed, so ``--help`` works without a usable
    backend, and a backend that cannot be loaded is one line that says what to
    do, not a traceback (unless ``--debug``).
    """
    from multinet.cli.main import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
