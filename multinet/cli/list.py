"""``multinet list``: the registered models."""

from __future__ import annotations

import difflib

import multinet
from multinet.backend_select import PREDICT_BACKENDS, TRAINING_BACKENDS
from multinet.cli.common import CommandError, entry_label, print_json, table


def add_parser(commands, parents):
    p = commands.add_parser(
        "list", parents=parents, help="list the models",
        description="List the registered models: parameters, default input size and weights "
                    "entries ('*' marks the one '-w imagenet' picks).")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="shell-style wildcard ('name*'); without one, a substring of the name")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    # Imported here: building the command's parser (``multinet --help``) needs no Keras.
    from multinet import backend

    names = multinet.list_models()
    if args.pattern:
        pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
        names = multinet.list_models(pattern)
        if not names:
            close = difflib.get_close_matches(args.pattern, multinet.list_models(), n=3,
                                              cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CommandError(f"no model matches {args.pattern!r}{hint}")
    specs = [multinet.get_model_spec(n) for n in names]
    if args.json:
        print_json([{
            "name": s.name, "family": s.family.name, "parameters": s.num_params,
            "default_size": s.default_size, "min_size": s.min_size,
            "weights": [w.name for w in s.weights], "default_weights": s.default_weights,
            "backends": {"train": list(TRAINING_BACKENDS),
                         "predict": list(PREDICT_BACKENDS)},
        } for s in specs])
        return 0
    rows = [[s.name, s.family.name, f"{s.num_params:,}", f"{s.default_size}x{s.default_size}",
             ", ".join(entry_label(s, w) for w in s.weights) or "-"] for s in specs]
    print(table(rows, ["name", "family", "parameters", "input", "weights (* = imagenet)"]))
    inference_only = [b for b in PREDICT_BACKENDS if b not in TRAINING_BACKENDS]
    print(f"\nEvery model trains and predicts on {', '.join(TRAINING_BACKENDS)} and predicts "
          f"on {', '.join(inference_only)} (inference only), in both data formats; this "
          f"session: {backend.name()}.")
    return 0
