"""``multinet train``: train a registered model on a folder of images."""

from __future__ import annotations

import argparse
import sys

from multinet.cli.common import DATA_FORMATS, CommandError, model_spec, positive_int


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}"
                                         ) from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_parser(commands, parents):
    p = commands.add_parser(
        "train", parents=parents, help="train a model on a folder of images",
        description="Train a registered model on DATA_DIR, a folder with one subfolder of "
                    "images per class (DATA_DIR/CLASS/IMAGE; the sorted subfolder names are "
                    "the classes). A DATA_DIR/val folder of the same classes is the "
                    "validation set (then the training images are DATA_DIR/train, or the "
                    "other subfolders); otherwise --val-split of each class is held out. "
                    "Images are read with keras.utils.load_img, resized to --image-size, "
                    "augmented (small shifts and zooms) and scaled the way the weights "
                    "need. OUT receives best.weights.h5 (best validation accuracy), "
                    "last.keras, history.json, curves.png, classes.json and run.json, each "
                    "written atomically. A training that was killed resumes from its last "
                    "completed epoch when the same command is run again.",
        epilog="WEIGHTS: 'random' (default) trains the registered model from random "
               "weights with one output per class; an entry name ('imagenet') or a weights "
               "file builds the model without its top from those weights and puts a new "
               "head on it (global average pooling, dropout, dense). --freeze-backbone then "
               "trains in two phases, as in Keras' transfer-learning guide: --head-epochs "
               "epochs of the new head alone at --lr, then the whole model at "
               "--fine-tune-lr (default --lr / 10); --epochs counts both. An OUT holding a "
               "different training, or this one finished, is refused unless --force.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of class subfolders")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("-w", "--weights", default="random", metavar="WEIGHTS",
                   help="'random', a weights entry or a weights file (default: random)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=positive_int, default=10, metavar="N",
                   help="epochs in all (default: 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="global batch size, over all devices (default: 32)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="PX",
                   help="input size (default: the model's default size)")
    p.add_argument("--val-split", type=fraction, default=0.2, metavar="F",
                   help="fraction of each class held out without DATA_DIR/val (default: 0.2)")
    p.add_argument("--lr", type=positive_float, default=1e-3, metavar="LR",
                   help="Adam learning rate, decayed to 0 along a cosine (default: 0.001)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="two phases: the new head alone, then the whole model")
    p.add_argument("--head-epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of the first phase (default: a third of --epochs)")
    p.add_argument("--fine-tune-lr", type=positive_float, default=None, metavar="LR",
                   help="learning rate of the second phase (default: --lr / 10)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random shifts and zooms of the training images")
    p.add_argument("--flip", action="store_true",
                   help="also flip training images horizontally (not for digits or text)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="compute in float16 where it helps (keras mixed_float16 policy)")
    p.add_argument("--seed", type=int, default=1337, metavar="N",
                   help="random seed of the split, initialization and order (default: 1337)")
    devices = p.add_mutually_exclusive_group()
    devices.add_argument("--distribute", action="store_true",
                         help="data-parallel over every device the backend sees")
    devices.add_argument("--devices", type=positive_int, default=None, metavar="N",
                         help="data-parallel over N devices")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="the model's data format (default: keras.config.image_data_format())")
    p.add_argument("--force", action="store_true",
                   help="start over in OUT, replacing what it holds")
    p.add_argument("--json", action="store_true", help="write the summary as JSON to stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet import backend, distribute, training
    from multinet.cli.common import print_json

    spec = model_spec(args.model)
    reason = backend.cannot_train("multinet train")
    if reason:
        raise CommandError(reason)
    try:
        n = distribute.resolve_devices(args.devices, args.distribute,
                                       batch_size=args.batch_size)
    except distribute.DistributeError as error:
        raise CommandError(str(error)) from None
    launched = distribute.maybe_launch_torchrun(n, ["-m", "multinet", *sys.argv[1:]])
    if launched is not None:
        return launched
    try:
        summary = training.train(
            args.data_dir, spec.name, args.out, weights=args.weights, epochs=args.epochs,
            batch_size=args.batch_size, image_size=args.image_size, val_split=args.val_split,
            lr=args.lr, freeze_backbone=args.freeze_backbone, head_epochs=args.head_epochs,
            fine_tune_lr=args.fine_tune_lr, augment=args.augment, flip=args.flip,
            mixed_precision=args.mixed_precision, seed=args.seed, devices=args.devices,
            distribute_all=args.distribute, data_format=args.data_format, force=args.force)
    except training.TrainingError as error:
        raise CommandError(str(error)) from None
    if summary["best_val_accuracy"] is None:  # not the chief process
        return 0
    if args.json:
        print_json(summary)
    else:
        print(f"{spec.name}: best validation accuracy {summary['best_val_accuracy']:.2%} "
              f"after {summary['epochs']} epochs ({summary['seconds']:.0f} s); "
              f"{summary['out']}")
    return 0
