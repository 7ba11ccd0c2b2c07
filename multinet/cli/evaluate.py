"""``multinet evaluate``: accuracy of trained weights on a folder of images."""

from __future__ import annotations

import os

from multinet.cli.common import (
    DATA_FORMATS,
    CommandError,
    model_spec,
    positive_int,
    print_json,
)


def add_parser(commands, parents):
    p = commands.add_parser(
        "evaluate", parents=parents, help="accuracy of trained weights on a folder of images",
        description="Top-1 and top-5 accuracy, per-class accuracy and a confusion-matrix PNG "
                    "of a model trained with 'multinet train' on DATA_DIR, a folder with one "
                    "subfolder of images per class (its val folder where it has one). "
                    "Unreadable images are skipped with a warning.",
        epilog="The classes: classes.json beside WEIGHTS (as 'multinet train' writes it; "
               "their count is the model's output count and DATA_DIR's subfolders must be "
               "among them); without one, DATA_DIR's sorted subfolder names. run.json "
               "beside WEIGHTS gives the input size, preprocessing and head of the training. "
               "WEIGHTS is a .weights.h5 file (OUT/best.weights.h5) or a whole .keras model "
               "(OUT/last.keras).")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class subfolders")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("-w", "--weights", required=True, metavar="FILE",
                   help="OUT/best.weights.h5 or a .keras file of a training")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="images per forward pass (default: 32)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="PX",
                   help="input size (default: the training's)")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="the model's data format (default: the training's)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="confusion-matrix image (default: confusion_matrix.png beside WEIGHTS)")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet import training
    from multinet.cli.common import err

    spec = model_spec(args.model)
    plot = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.weights)),
                                     "confusion_matrix.png")
    try:
        report = training.evaluate(args.data_dir, spec.name, args.weights,
                                   batch_size=args.batch_size, image_size=args.image_size,
                                   data_format=args.data_format, plot=plot)
    except training.TrainingError as error:
        raise CommandError(str(error)) from None
    if report["skipped"]:
        err(f"multinet evaluate: warning: skipped {len(report['skipped'])} unreadable "
            f"image(s), e.g. {report['skipped'][0]}")
    if args.json:
        print_json(report)
        return 0
    print(f"{spec.name} with {args.weights} on {report['images']} images of "
          f"{report['data_dir']}")
    print(f"top-1 accuracy {report['top1']:.2%}, top-{report['top5_k']} accuracy "
          f"{report['top5']:.2%}")
    width = max(len(name) for name in report["per_class"])
    for name, row in report["per_class"].items():
        print(f"  {name:<{width}}  {row['accuracy']:7.2%}  ({row['images']} images)")
    print(f"confusion matrix: {report['plot']}")
    return 0
