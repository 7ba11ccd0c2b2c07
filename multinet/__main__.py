"""``python -m multinet`` and the ``multinet`` console script."""

from __future__ import annotations

import json
import os
import sys


def _selected_backend() -> str:
    """The backend Keras will try, found without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as fh:
            return json.load(fh).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def main(argv=None) -> int:
    """Import the command's runtime (Keras and its backend), then run it.

    A backend that is not installed is a user's setup mistake: one line that
    says what to do, not a traceback (unless ``--debug``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from multinet import cli
    except ImportError as error:
        if "--debug" in argv:
            raise
        backend = _selected_backend()
        print(
            f"multinet: error: the Keras backend {backend!r} cannot be imported ({error}); "
            f"install it (pip install \"multinet[{backend}]\") or pick an installed one "
            f"with KERAS_BACKEND=jax, torch or tensorflow",
            file=sys.stderr,
        )
        return 1
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
