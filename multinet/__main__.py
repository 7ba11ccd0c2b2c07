"""``python -m multinet`` and the ``multinet`` console script."""

from __future__ import annotations

import sys

from multinet import backend_select


def main(argv=None) -> int:
    """Import the command's runtime (Keras and its backend), then run it.

    ``import multinet`` has settled the backend already (picking an installed
    one where Keras' default is missing). A backend that cannot be loaded is a
    setup mistake: one line that says what to do, not a traceback (unless
    ``--debug``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    choice = backend_select.CHOICE or backend_select.configure()
    if choice.problem:
        if "--debug" in argv:
            raise ImportError(choice.problem)
        print(f"multinet: error: {choice.problem}", file=sys.stderr)
        return 1
    try:
        from multinet import cli
    except ImportError as error:
        if "--debug" in argv:
            raise
        print(f"multinet: error: {backend_select.import_failure(error, choice)}",
              file=sys.stderr)
        return 1
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
