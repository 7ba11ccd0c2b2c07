"""``multinet export``: a model as a deployable artifact, verified by running it."""

from __future__ import annotations

import os

from multinet.cli.common import DATA_FORMATS, CommandError, human_size, model_spec, positive_int

# multinet.deploy.FORMATS, which the parser does not import (it imports numpy).
FORMATS = ("onnx", "tf_saved_model", "openvino", "torch", "litert")


def add_parser(commands, parents):
    p = commands.add_parser(
        "export", parents=parents, help="export a model to ONNX, SavedModel, OpenVINO, "
                                        ".pt2 or LiteRT",
        description="Export a model with its weights as an inference artifact: onnx (.onnx), "
                    "tf_saved_model (a folder), openvino (.xml and .bin), torch "
                    "(torch.export .pt2) or litert (.tflite). The artifact is written under "
                    "a temporary name, loaded in its own runtime and compared with the "
                    "model's predictions on a random batch (batch 1 and 7 where the batch "
                    "dimension is dynamic); only a verified artifact is moved to PATH.",
        epilog="A format the current backend cannot produce is exported by another installed "
               "backend, or is an error that names the backend or package that would "
               "produce it. WEIGHTS is as for 'multinet predict': an entry (default: "
               "imagenet), a weights file, or 'random'.")
    p.add_argument("model", metavar="NAME", help="model name")
    p.add_argument("-w", "--weights", default="imagenet", metavar="WEIGHTS",
                   help="weights entry, file, or 'random' (default: imagenet)")
    p.add_argument("--format", required=True, choices=FORMATS, help="the artifact's format")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="where to write the artifact (.onnx, a folder, .xml, .pt2, .tflite)")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="the model's data format (default: keras.config.image_data_format())")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="a fixed batch size (default: dynamic where the format allows)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not run the artifact to check it")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet import deploy

    spec = model_spec(args.model)
    path = args.output
    try:  # before the model is built (or its weights downloaded)
        deploy.check_destination(path, args.format, args.force, force="--force")
        deploy.plan(args.format)
    except deploy.ExportError as error:
        raise CommandError(str(error)) from None

    import keras

    from multinet.cli.predict import _build, _plan

    plan = _plan(spec, args.weights)
    data_format = args.data_format or keras.config.image_data_format()
    model = _build(spec, plan, args.weights, data_format)
    try:
        report = deploy.export(model, path, args.format, batch_size=args.batch_size,
                               verify=args.verify, overwrite=args.force)
    except deploy.ExportError as error:
        raise CommandError(str(error)) from None
    size = sum(os.path.getsize(p) for p in _files(report.path))
    print(f"{spec.name} ({plan['source']}, {data_format}): {report.summary()}; "
          f"{human_size(size)}")
    return 0


def _files(path: str):
    if os.path.isdir(path):
        for folder, _, names in os.walk(path):
            yield from (os.path.join(folder, n) for n in names)
    else:
        yield path
        if path.endswith(".xml") and os.path.exists(path[:-4] + ".bin"):
            yield path[:-4] + ".bin"
