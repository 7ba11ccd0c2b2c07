"""The parser of the ``multinet`` command and its entry point, ``main``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import keras

import multinet
from multinet.cli.common import CommandError, Parser, err, one_line

COMMANDS = ("list", "info", "predict", "convert", "bench", "doctor", "demo")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")

    parser = Parser(
        prog="multinet",
        description="Models of the multinet library on the Keras backend that KERAS_BACKEND "
                    "selects (tensorflow, jax or torch).",
        epilog="Run 'multinet COMMAND --help' for a command's options. Environment: "
               "KERAS_BACKEND, KERAS_HOME (keras.json and the weights cache, default ~/.keras), "
               "MULTINET_OFFLINE=1 (never download), MULTINET_WEIGHTS_MIRROR=URL.",
        parents=[common],
    )
    parser.set_defaults(debug=False)
    parser.add_argument("--version", action="version",
                        version=f"multinet {multinet.__version__} (Keras {keras.__version__})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for name in COMMANDS:
        importlib.import_module(f"multinet.cli.{name}").add_parser(commands, [common])
    return parser


def main(argv=None) -> int:
    """Run the ``multinet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"multinet {args.command}"
    try:
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
