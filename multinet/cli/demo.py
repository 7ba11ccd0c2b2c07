"""``multinet demo``: the offline tutorial, start to finish."""

from __future__ import annotations

from multinet.cli.common import DATA_FORMATS, CommandError, model_spec, positive_int


def add_parser(commands, parents):
    p = commands.add_parser(
        "demo", parents=parents, help="the offline tutorial, start to finish",
        description="Runs offline on the current backend: (1) a one-neuron linear regression "
                    "learns y = 3x; (2) a small network of multinet building blocks learns "
                    "the UCI handwritten digits (shipped, 1797 8x8 images) to >= 95%% test "
                    "accuracy; (3) a .weights.h5 save/load round trip; (4) a registered "
                    "model (--model) classifies a cat photo (pretrained weights if cached); "
                    "(5) speed in each data format. Training shows one progress bar on a "
                    "terminal, a few plain lines otherwise. Exits 1 if a check fails.")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="default: keras.config.image_data_format()")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="digits training epochs (default: 30)")
    p.add_argument("-m", "--model", default=None, metavar="NAME",
                   help="the model that classifies the cat (default: squeezenet1_1)")
    p.add_argument("--quick", action="store_true",
                   help="shorter speed measurement (training is the same)")
    p.add_argument("--export-digits", default=None, metavar="DIR",
                   help="instead: write the digits as PNG images in class subfolders of DIR "
                        "(a dataset for 'multinet train') and exit")
    p.add_argument("--export-size", type=positive_int, default=32, metavar="PX",
                   help="size of the exported images (default: 32)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet import demo

    if args.export_digits:
        try:
            count = demo.export_digits(args.export_digits, args.export_size)
        except ValueError as error:
            raise CommandError(str(error)) from None
        print(f"wrote {count} digit images ({args.export_size}x{args.export_size} PNG) in "
              f"10 class folders under {args.export_digits}")
        return 0
    kwargs = {"data_format": args.data_format, "quick": args.quick,
              "model_name": model_spec(args.model or demo.DEFAULT_MODEL).name}
    if args.epochs:
        kwargs["epochs"] = args.epochs
    try:
        demo.run_demo(**kwargs)
    except demo.DemoCheckFailed as error:
        raise CommandError(f"demo check failed: {error}") from error
    return 0
