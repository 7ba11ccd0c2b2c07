"""``multinet demo``: the offline tutorial, start to finish."""

from __future__ import annotations

from multinet import backend
from multinet.cli.common import CommandError, positive_int


def add_parser(commands, parents):
    formats = backend.DATA_FORMATS
    p = commands.add_parser(
        "demo", parents=parents, help="the offline tutorial, start to finish",
        description="Runs offline on the current backend: (1) a one-neuron linear regression "
                    "learns y = 3x; (2) a SqueezeNet-style network of multinet Fire modules "
                    "learns the UCI handwritten digits (shipped, 1797 8x8 images) to >= 95%% "
                    "test accuracy; (3) a .weights.h5 save/load round trip; (4) squeezenet1_1 "
                    "classifies a cat photo (pretrained weights if cached); (5) speed in "
                    "each data format. Exits 1 if a check fails.")
    p.add_argument("--data-format", choices=formats, default=None,
                   help="default: keras.config.image_data_format()")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="digits training epochs (default: 30)")
    p.add_argument("--quick", action="store_true",
                   help="shorter speed measurement (training is the same)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet import demo

    kwargs = {"data_format": args.data_format, "quick": args.quick}
    if args.epochs:
        kwargs["epochs"] = args.epochs
    try:
        demo.run_demo(**kwargs)
    except demo.DemoCheckFailed as error:
        raise CommandError(f"demo check failed: {error}") from error
    return 0
