"""The parser of the ``multinet`` command and its entry point, ``main``.

Building the parser imports neither Keras nor a backend, so ``--help`` and
usage errors work where no backend is usable; Keras is imported once the
command line is understood, and a backend that cannot load is one line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

import multinet
from multinet.cli.common import CommandError, Parser, err, one_line

COMMANDS = ("list", "info", "predict", "train", "evaluate", "convert", "export", "bench",
            "doctor", "demo")
_DEBUG_HELP = "show the full traceback when something fails"


def _version() -> str:
    try:
        keras_version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        keras_version = "not installed"
    return f"multinet {multinet.__version__} (Keras {keras_version})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="multinet",
        description="Models of the multinet library on the Keras backend that KERAS_BACKEND "
                    "selects (tensorflow, jax or torch).",
        epilog="Run 'multinet COMMAND --help' for a command's options. Environment: "
               "KERAS_BACKEND, KERAS_HOME (keras.json and the weights cache, default ~/.keras), "
               "MULTINET_OFFLINE=1 (never download), MULTINET_WEIGHTS_MIRROR=URL.",
    )
    parser.add_argument("--debug", action="store_true", default=False, help=_DEBUG_HELP)
    parser.add_argument("--version", action="version", version=_version())
    # `--debug` after the command too. Its own action, defaulting to "not given", so
    # that it never resets a `--debug` given before the command.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for name in COMMANDS:
        importlib.import_module(f"multinet.cli.{name}").add_parser(commands, [after])
    return parser


def _backend_problem() -> str | None:
    """Why Keras and its backend cannot be used here (one line), or None."""
    from multinet import backend_select

    choice = backend_select.CHOICE or backend_select.configure()
    if choice.problem:
        return choice.problem
    try:
        import keras  # noqa: F401

        from multinet import layers  # noqa: F401  (Keras and the backend load here)
    except ImportError as error:
        return backend_select.import_failure(error, choice)
    return None


def main(argv=None) -> int:
    """Run the ``multinet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    prog = f"multinet {args.command}"
    try:
        problem = _backend_problem()
        if problem:
            if args.debug:
                raise ImportError(problem)
            err(f"multinet: error: {problem}")
            return 1
        return args.handler(args)
    except KeyboardInterrupt:
        err(f"{prog}: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`multinet list | head -1`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:
        if args.debug:
            raise
        expected = isinstance(error, (CommandError, ValueError, OSError, ImportError))
        message = one_line(error) or type(error).__name__
        message = message.replace("weights=PATH", "-w PATH")
        if type(error).__name__ == "WeightsLoadError" and "cannot load" in message:
            message += " (is the file made for another model?)"
        if not expected:
            message = f"{type(error).__name__}: {message} (--debug shows the traceback)"
        err(f"{prog}: error: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
