"""The ``multinet`` command: list, info, predict, convert, bench, doctor, demo.

One module per command (``list``, ``info``, ``predict``, ``convert``,
``bench``, ``doctor``, ``demo``), each with ``add_parser`` and ``run``;
``common`` holds what they share and ``main`` the parser and the entry point.

Every subcommand runs on the Keras backend that ``KERAS_BACKEND`` selects.
Mistakes (a missing file, an unknown model, weights that do not fit, bad
options) end with one line on stderr and a non-zero exit status: 2 for bad
command-line usage, 1 for everything else. ``--debug`` shows the traceback.
"""

from __future__ import annotations

from multinet.cli.main import main

__all__ = ["main"]
