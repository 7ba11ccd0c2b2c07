"""Export a model for deployment, and verify the artifact by running it.

``multinet.export(model, path, format)`` writes one of :data:`FORMATS`:

- ``onnx``: an ONNX graph (``.onnx``), run by onnxruntime;
- ``tf_saved_model``: a TensorFlow SavedModel folder, run by ``tf.saved_model.load``;
- ``openvino``: an OpenVINO IR (``.xml`` and its ``.bin``), run by ``openvino.Core``;
- ``torch``: a ``torch.export`` program (``.pt2``), run by ``torch.export.load``;
- ``litert``: a LiteRT flatbuffer (``.tflite``), run by ``ai_edge_litert``'s interpreter.

Each backend produces the formats its exporter can (see :data:`ROUTES`): Keras'
``model.export`` where it works, with multinet's fixes where it does not (the
OpenVINO IR from JAX and PyTorch goes through multinet's ONNX; jax2onnx's max
pools are rewritten into ones onnxruntime and OpenVINO run; the ``.pt2`` keeps
its batch dimension dynamic). A format the current backend cannot produce is
made by another installed backend in a subprocess (the weights move between
backends unchanged), or is a one-line :class:`ExportError` that names the
backend or package that would produce it.

The artifact is written under a temporary name in the destination folder, loaded
in its own runtime, and compared with ``model.predict`` on a random batch (batch
1 and batch 7 where the batch dimension is dynamic); a relative difference above
:data:`TOLERANCE` is an error, and only a verified artifact is renamed to
``path``. Nothing is left at ``path`` when anything fails.

Framework imports happen inside functions only: the runtimes that load an artifact
(TensorFlow for a SavedModel, torch for a ``.pt2``) whatever the backend; what
depends on the backend in use comes from :mod:`multinet.backend`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

FORMATS = ("onnx", "tf_saved_model", "openvino", "torch", "litert")
# The file name ending each format needs ("" for the SavedModel folder).
SUFFIXES = {"onnx": ".onnx", "tf_saved_model": "", "openvino": ".xml", "torch": ".pt2",
            "litert": ".tflite"}
RUNTIMES = {"onnx": "onnxruntime", "tf_saved_model": "tf.saved_model.load",
            "openvino": "openvino", "torch": "torch.export.load",
            "litert": "ai-edge-litert"}
BACKENDS = ("tensorflow", "jax", "torch")
TOLERANCE = 1e-4
VERIFY_BATCHES = (1, 7)
_FRAMEWORK_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@dataclasses.dataclass(frozen=True)
class Route:
    """How one backend produces one format.

    ``method``: ``"keras"`` (Keras' ``model.export``), ``"onnx+openvino"``
    (multinet's ONNX read by OpenVINO's converter) or None (cannot).
    ``packages``: (import name, pip name) the exporter needs beside the backend.
    ``dynamic_batch``: whether the artifact keeps the batch dimension dynamic.
    ``why``: for ``method=None``, what would produce the format; ``short``:
    the same in a few words (the README's matrix).
    """

    method: str | None
    packages: tuple[tuple[str, str], ...] = ()
    dynamic_batch: bool = True
    why: str = ""
    short: str = ""


_OV = ("openvino", "openvino")
ROUTES: dict[tuple[str, str], Route] = {
    ("tensorflow", "tf_saved_model"): Route("keras"),
    ("tensorflow", "onnx"): Route("keras", (("tf2onnx", "tf2onnx"),)),
    ("tensorflow", "openvino"): Route("keras", (_OV, ("scipy", "scipy"))),
    ("tensorflow", "litert"): Route("keras"),
    ("tensorflow", "torch"): Route(None, why="the torch backend (KERAS_BACKEND=torch) exports "
                                             ".pt2 programs", short="torch backend only"),
    ("jax", "tf_saved_model"): Route("keras", (("tensorflow", "tensorflow"),)),
    ("jax", "onnx"): Route("keras", (("jax2onnx", "jax2onnx"), ("onnx", "onnx"))),
    ("jax", "openvino"): Route("onnx+openvino", (("jax2onnx", "jax2onnx"), ("onnx", "onnx"),
                                                 _OV)),
    ("jax", "litert"): Route(None, why="the tensorflow or torch backend (KERAS_BACKEND="
                                       "tensorflow, or torch with litert-torch) exports LiteRT",
                                   short="tensorflow or torch backend"),
    ("jax", "torch"): Route(None, why="the torch backend (KERAS_BACKEND=torch) exports .pt2 "
                                      "programs", short="torch backend only"),
    # keras-team/keras#20847: Keras' SavedModel export on torch needs TensorFlow.
    ("torch", "tf_saved_model"): Route(
        "keras", (("tensorflow", "tensorflow"),)),
    ("torch", "onnx"): Route("keras", (("onnx", "onnx"),)),
    ("torch", "openvino"): Route("onnx+openvino", (("onnx", "onnx"), _OV)),
    ("torch", "torch"): Route("keras"),
    # keras-team/keras#22996: LiteRT from torch has no dynamic dimensions.
    ("torch", "litert"): Route("keras", (("litert_torch", "litert-torch"),),
                               dynamic_batch=False),
}


class ExportError(ValueError):
    """An export that cannot be made or does not verify: one line says why."""


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote and how it checked it."""

    path: str
    format: str
    backend: str  # the Keras backend that produced the artifact
    method: str
    dynamic_batch: bool
    batches: tuple[int, ...]  # the batch sizes run through the artifact
    max_difference: float | None  # largest absolute difference from model.predict
    relative_difference: float | None
    seconds: float

    def summary(self) -> str:
        via = "" if self.method == "keras" else f" via {self.method}"
        batch = "dynamic batch" if self.dynamic_batch else "static batch"
        if self.max_difference is None:
            checked = "not verified"
        else:
            checked = (f"verified with {RUNTIMES[self.format]} on batch "
                       f"{' and '.join(map(str, self.batches))}: max difference "
                       f"{self.max_difference:.1e} (relative {self.relative_difference:.1e})")
        return (f"wrote {self.path} ({self.format} from the {self.backend} backend{via}, "
                f"{batch}); {checked}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(backend: str, format: str) -> list[str]:
    """The pip names of what ``backend`` lacks here to produce ``format``
    (its framework included); [] when it can."""
    route = ROUTES[(backend, format)]
    needed = [(_FRAMEWORK_MODULE[backend], backend), *route.packages]
    return [pip for module, pip in needed if not _installed(module)]


def unavailable(backend: str, format: str) -> str | None:
    """Why ``backend`` cannot produce ``format`` here, in a few words; None if it can."""
    route = ROUTES[(backend, format)]
    if route.method is None:
        return route.short
    missing = missing_packages(backend, format)
    return f"needs {' and '.join(missing)}" if missing else None


def can_produce(backend: str, format: str) -> bool:
    return ROUTES[(backend, format)].method is not None and not missing_packages(backend, format)


def plan(format: str, backend: str | None = None) -> str:
    """The backend that will produce ``format``: ``backend`` (default: the
    current one) where it can, else another installed backend that can; an
    :class:`ExportError` naming what would produce it otherwise."""
    from multinet import backend as mn_backend

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of "
                          f"{', '.join(FORMATS)}")
    current = backend or mn_backend.name()
    if current not in BACKENDS:
        raise ExportError(f"the {current} backend exports nothing; use KERAS_BACKEND="
                          f"tensorflow, jax or torch")
    if can_produce(current, format):
        return current
    for other in BACKENDS:
        if other != current and can_produce(other, format):
            return other
    route = ROUTES[(current, format)]
    if route.method is None:
        raise ExportError(f"{format} cannot be exported from the {current} backend: "
                          f"{route.why}")
    missing = missing_packages(current, format)
    return _raise_missing(format, current, missing)


def _raise_missing(format: str, backend: str, missing: list[str]):
    names = " and ".join(missing)
    if missing == ["tensorflow"]:
        hint = f"install tensorflow beside {backend}, or export with KERAS_BACKEND=tensorflow"
    else:
        hint = (f"pip install {' '.join(missing)}; the multinet-keras[export-{backend}] extra "
                f"has them")
    raise ExportError(f"{format} export from the {backend} backend needs {names} ({hint})")


# --- checks before anything is written ---------------------------------------------------


def check_destination(path: str, format: str, overwrite: bool = False,
                      force: str = "overwrite=True") -> None:
    """One line for a path the artifact cannot be written to."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of "
                          f"{', '.join(FORMATS)}")
    suffix = SUFFIXES[format]
    if suffix and not path.endswith(suffix):
        raise ExportError(f"a {format} artifact's path must end in {suffix}, got {path!r}")
    if not suffix and path.endswith(os.sep):
        path = path.rstrip(os.sep)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"the folder of {path} does not exist: {folder}")
    for target in _artifact_paths(path, format):
        if os.path.lexists(target) and not overwrite:
            raise ExportError(f"{target} exists; pass {force} to replace it")


def _artifact_paths(path: str, format: str) -> list[str]:
    if format == "openvino":
        return [path, path[: -len(".xml")] + ".bin"]
    return [path]


def _input_shape(model) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise ExportError(f"{model.name}: export takes a model with one input, it has "
                          f"{len(model.inputs)}")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ExportError(f"{model.name}: the input shape {(None, *shape)} has undefined "
                          f"dimensions besides the batch; build the model with input_shape=...")
    return shape


# --- producing the artifact -----------------------------------------------------------------


def _input_signature(model, batch_size):
    import keras

    shape = (batch_size, *_input_shape(model))
    return [keras.InputSpec(shape=shape, dtype="float32", name="images")]


def _quiet():
    """Silence the exporters' progress output on stdout (it goes to stderr)."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def _produce(model, staging: str, format: str, batch_size: int | None) -> None:
    """Write ``format`` at ``staging`` with the current backend."""
    from multinet import backend as mn_backend

    backend = mn_backend.name()
    route = ROUTES[(backend, format)]
    signature = _input_signature(model, batch_size if route.dynamic_batch else batch_size or 1)
    kwargs = mn_backend.export_dynamic_batch() if format == "torch" and batch_size is None else {}
    with _quiet():
        if route.method == "onnx+openvino":
            import openvino as ov

            onnx_path = staging[: -len(".xml")] + ".onnx"
            try:
                _produce_onnx(model, onnx_path, signature)
                ov_model = ov.convert_model(onnx_path)
            finally:
                if os.path.exists(onnx_path):
                    os.remove(onnx_path)
            ov.save_model(ov_model, staging, compress_to_fp16=False)
        elif format == "onnx":
            _produce_onnx(model, staging, signature)
        else:
            model.export(staging, format=format, verbose=False, input_signature=signature,
                         **kwargs)


def _produce_onnx(model, path: str, signature) -> None:
    from multinet import backend as mn_backend

    if mn_backend.name() != "jax":
        model.export(path, format="onnx", verbose=False, input_signature=signature)
    else:
        with _linear_jax2onnx_output_check():
            model.export(path, format="onnx", verbose=False, input_signature=signature)
        _inline_external_data(path)
        fix_jax2onnx_max_pools(path)


@contextlib.contextmanager
def _linear_jax2onnx_output_check():
    """jax2onnx (0.17) checks after lowering each JAX equation that its outputs
    are connected to the graph by comparing them, by identity and by name, with
    the outputs of every node built so far: quadratic in the model's size, and
    three quarters of a MobileNet-V3's three-minute export on a 2-core CPU.

    The same check answers at once where the value is an output of a node of
    the graph being built, or one of its inputs or initializers (the cases the
    scan finds by identity); every other case still goes through jax2onnx's
    own scan. Nothing changes where the module is not the one this was written
    for.
    """
    try:
        from jax2onnx.converter import output_binding
    except ImportError:
        yield
        return
    original = getattr(output_binding, "_value_is_graph_connected", None)
    if original is None:
        yield
        return

    def owned(value, graph) -> bool:
        producer = value.producer()
        if producer is not None:
            return producer.graph is graph
        return (value.is_graph_input() or value.is_initializer()) and value.graph is graph

    def connected(ctx, value):
        graph = getattr(ctx.builder, "nodes", None)
        try:
            if graph is not None and owned(value, graph):
                return True
        except AttributeError:  # another onnx_ir: jax2onnx's own scan
            pass
        return original(ctx, value)

    output_binding._value_is_graph_connected = connected
    try:
        yield
    finally:
        output_binding._value_is_graph_connected = original


def _inline_external_data(path: str) -> None:
    """One self-contained .onnx file: jax2onnx writes the weights beside the
    graph (``PATH.data``); they go into the graph (under ONNX's 2 GB limit)."""
    import onnx

    folder = os.path.dirname(os.path.abspath(path))
    graph_only = onnx.load(path, load_external_data=False)
    external = {entry.value for tensor in graph_only.graph.initializer
                for entry in tensor.external_data if entry.key == "location"}
    if not external:
        return
    onnx.save(onnx.load(path), path)  # onnx.load reads the external data into the graph
    for name in external:
        os.remove(os.path.join(folder, name))


def fix_jax2onnx_max_pools(path: str) -> int:
    """Rewrite jax2onnx's max pools into 2D ``MaxPool`` nodes; returns how many.

    jax2onnx exports a max pool over an NHWC batch as a ``MaxPool`` over four
    "spatial" axes (N, H, W, C) of the batch unsqueezed to 6D, with window 1 on
    N and C: valid ONNX that onnxruntime ("Unsupported pooling size") and
    OpenVINO do not run. The same pool is NHWC -> NCHW, a 2D ``MaxPool``, and
    back.
    """
    import onnx
    from onnx import helper

    graph_model = onnx.load(path)
    graph = graph_model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced, drop = 0, set()
    new_nodes: dict[int, list] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        if len(kernel) != 4 or kernel[0] != 1 or kernel[3] != 1:
            continue
        strides = list(attrs.get("strides", [1, 1, 1, 1]))
        pads = list(attrs.get("pads", [0] * 8))
        dilations = list(attrs.get("dilations", [1, 1, 1, 1]))
        if strides[0] != 1 or strides[3] != 1 or any(pads[i] for i in (0, 3, 4, 7)):
            continue
        first = producers.get(node.input[0])
        second = producers.get(first.input[0]) if first is not None else None
        squeeze = consumers.get(node.output[0], [])
        if (first is None or second is None or first.op_type != "Unsqueeze"
                or second.op_type != "Unsqueeze" or len(squeeze) != 1
                or squeeze[0].op_type != "Squeeze"):
            continue
        source, target = second.input[0], squeeze[0].output[0]
        base = f"{node.name or 'maxpool'}_2d"
        pool_attrs = {"kernel_shape": kernel[1:3], "strides": strides[1:3],
                      "pads": [pads[1], pads[2], pads[5], pads[6]],
                      "dilations": dilations[1:3]}
        if attrs.get("ceil_mode"):
            pool_attrs["ceil_mode"] = attrs["ceil_mode"]
        new_nodes[index] = [
            helper.make_node("Transpose", [source], [f"{base}_nchw"], perm=[0, 3, 1, 2],
                             name=f"{base}_to_nchw"),
            helper.make_node("MaxPool", [f"{base}_nchw"], [f"{base}_out"], name=base,
                             **pool_attrs),
            helper.make_node("Transpose", [f"{base}_out"], [target], perm=[0, 2, 3, 1],
                             name=f"{base}_to_nhwc"),
        ]
        drop.add(id(node))
        drop.add(id(squeeze[0]))
        for unsqueeze in (first, second):
            if all(id(c) in drop or c is node or c is first
                   for c in consumers.get(unsqueeze.output[0], [])):
                drop.add(id(unsqueeze))
        replaced += 1
    if not replaced:
        return 0
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(index, []))
        if id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(graph_model, path)
    return replaced


def _produce_elsewhere(model, staging: str, format: str, batch_size, backend: str) -> None:
    """Produce the artifact with ``backend`` in a subprocess, from the model
    saved as a .keras file (the same weights, rebuilt on that backend)."""
    folder = tempfile.mkdtemp(prefix="multinet-export-")
    try:
        saved = os.path.join(folder, "model.keras")
        model.save(saved)
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "multinet.deploy", saved, staging, format,
                   str(batch_size or 0)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise ExportError(f"{format} export through the {backend} backend failed: {reason}")


# --- running the artifact -------------------------------------------------------------------


@dataclasses.dataclass
class LoadedArtifact:
    """An artifact loaded once in its format's runtime: ``artifact(x)`` runs it on the
    numpy batch ``x`` and returns its first output as a numpy array."""

    run: Callable[[np.ndarray], np.ndarray]
    format: str
    runtime: str  # the runtime's package (RUNTIMES)
    version: str  # the runtime's version
    threads: int | None  # the CPU threads the runtime reports using; None: its own default

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def load_artifact(path: str, format: str, *, threads: int | None = None) -> LoadedArtifact:
    """Load the artifact at ``path`` in the format's own runtime, once.

    ``threads`` sets the runtime's CPU threads where it has a per-model setting:
    onnxruntime's ``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS``
    and the LiteRT interpreter's ``num_threads``; ``tf_saved_model`` and
    ``torch`` artifacts run on their framework's process-wide threads, and
    ``threads`` is ignored for them. OpenVINO computes in float32
    (``INFERENCE_PRECISION_HINT``), as the model does, on CPUs that offer bfloat16 too.
    """
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no notices on unused initializers
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, sess_options=options,
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return LoadedArtifact(
            lambda x: np.asarray(session.run(None, {name: x})[0]), format, "onnxruntime",
            onnxruntime.__version__, session.get_session_options().intra_op_num_threads or None)
    if format == "openvino":
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(path, "CPU", config)
        return LoadedArtifact(
            lambda x: np.asarray(compiled(x)[0]), format, "openvino", ov.get_version(),
            int(compiled.get_property("INFERENCE_NUM_THREADS")) or None)
    if format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)

        def run_saved_model(x):
            out = loaded.serve(tf.constant(x))
            return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)

        return LoadedArtifact(run_saved_model, format, "tensorflow", tf.__version__, None)
    if format == "torch":
        import torch

        module = torch.export.load(path).module()

        def run_program(x):
            with torch.no_grad():
                out = module(torch.from_numpy(x))
            out = out[0] if isinstance(out, (list, tuple)) else out
            return out.detach().cpu().numpy()

        return LoadedArtifact(run_program, format, "torch", torch.__version__, None)
    if format == "litert":
        import importlib.metadata

        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=threads)

        def run_interpreter(x):
            detail = interpreter.get_input_details()[0]
            if tuple(detail["shape"]) != x.shape:
                interpreter.resize_tensor_input(detail["index"], list(x.shape))
                interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            return np.asarray(
                interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))

        interpreter.allocate_tensors()
        return LoadedArtifact(run_interpreter, format, "ai-edge-litert",
                              importlib.metadata.version("ai-edge-litert"), threads)
    raise ExportError(f"unknown export format {format!r}")


def run_artifact(path: str, format: str, x: np.ndarray) -> np.ndarray:
    """The first output of the artifact at ``path`` on the batch ``x``, run in
    the format's own runtime (:func:`load_artifact`, then one call)."""
    return load_artifact(path, format)(x)


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def verify_artifact(model, path: str, format: str, batches=VERIFY_BATCHES):
    """Run the artifact on random batches and compare with ``model.predict``.

    Returns (max absolute difference, max relative difference); an
    :class:`ExportError` when the runtime cannot load or run it, or when the
    relative difference is above :data:`TOLERANCE`.
    """
    shape = _input_shape(model)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (max(batches), *shape)).astype("float32")
    expected = np.asarray(model.predict(x, batch_size=len(x), verbose=0))
    worst_abs = worst_rel = 0.0
    for batch in batches:
        try:
            got = run_artifact(path, format, np.ascontiguousarray(x[:batch]))
        except ExportError:
            raise
        except Exception as error:  # the runtime's own errors, any type
            raise ExportError(f"{RUNTIMES[format]} cannot run the {format} artifact on a "
                              f"batch of {batch}: {_first_line(error)}") from error
        want = expected[:batch]
        if got.shape != want.shape:
            raise ExportError(f"the {format} artifact returns shape {got.shape} for a batch "
                              f"of {batch}, the model {want.shape}")
        difference = float(np.max(np.abs(got.astype("float64") - want)))
        relative = difference / max(float(np.max(np.abs(want))), 1e-12)
        worst_abs, worst_rel = max(worst_abs, difference), max(worst_rel, relative)
        if not relative <= TOLERANCE:
            raise ExportError(f"the {format} artifact differs from model.predict by up to "
                              f"{difference:.3g} ({relative:.2g} relative, more than "
                              f"{TOLERANCE:g}) on a batch of {batch}")
    return worst_abs, worst_rel


# --- the public entry point -----------------------------------------------------------------


def _staging_name(path: str, format: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    suffix = SUFFIXES[format]
    stem = name[: -len(suffix)] if suffix else name
    fd, probe = tempfile.mkstemp(prefix=f".{stem}.export-", dir=folder)
    os.close(fd)
    os.remove(probe)
    return probe + suffix


def _remove(target: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target, ignore_errors=True)
    elif os.path.lexists(target):
        os.remove(target)


def _publish(staging: str, path: str, format: str) -> None:
    """Move the verified artifact (and its companion files) into place."""
    pairs = list(zip(_artifact_paths(staging, format), _artifact_paths(path, format)))
    for source, target in pairs:
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(source, target)


def export(model, path, format: str, *, batch_size: int | None = None, verify: bool = True,
           overwrite: bool = False, backend: str | None = None) -> ExportReport:
    """Export ``model`` to ``path`` in ``format`` (one of :data:`FORMATS`) and
    verify it by running the artifact in its own runtime.

    ``batch_size=None`` keeps the batch dimension dynamic where the format and
    exporter allow it (checked with batches 1 and 7); an integer fixes it.
    ``verify=False`` skips the run. ``overwrite`` replaces an existing
    artifact. ``backend`` names the Keras backend to produce the artifact with
    (default: the current one where it can, else another installed one; a
    backend other than the current one runs in a subprocess).

    Returns an :class:`ExportReport`; raises :class:`ExportError` (one line)
    for a format that cannot be produced here, a bad path, an exporter or
    runtime failure, or a mismatch, and leaves nothing at ``path`` then.
    """
    from multinet import backend as mn_backend

    path = os.fspath(path)
    if format == "tf_saved_model":
        path = path.rstrip(os.sep) or path
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ExportError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    check_destination(path, format, overwrite)
    _input_shape(model)
    producer = plan(format, backend)
    if backend is not None and producer != backend:
        raise ExportError(f"{format} cannot be exported from the {backend} backend here: "
                          f"it needs {' and '.join(missing_packages(backend, format))}")
    route = ROUTES[(producer, format)]
    dynamic = batch_size is None and route.dynamic_batch
    start = time.perf_counter()
    staging = _staging_name(path, format)
    try:
        try:
            if producer == mn_backend.name():
                _produce(model, staging, format, batch_size)
            else:
                _produce_elsewhere(model, staging, format, batch_size, producer)
        except ExportError:
            raise
        except Exception as error:  # the exporters' own errors, any type
            raise ExportError(f"the {format} exporter of the {producer} backend failed: "
                              f"{_first_line(error)}") from error
        batches: tuple[int, ...] = ()
        difference = relative = None
        if verify:
            batches = VERIFY_BATCHES if dynamic else (batch_size or 1,)
            difference, relative = verify_artifact(model, staging, format, batches)
        _publish(staging, path, format)
    finally:
        for leftover in _artifact_paths(staging, format) + [staging + ".data"]:
            _remove(leftover)
    return ExportReport(path=path, format=format, backend=producer, method=route.method,
                        dynamic_batch=dynamic, batches=batches, max_difference=difference,
                        relative_difference=relative,
                        seconds=time.perf_counter() - start)


def _main(argv: list[str]) -> int:
    """The subprocess of :func:`_produce_elsewhere`: MODEL.keras PATH FORMAT BATCH."""
    import keras

    import multinet  # noqa: F401  (registers multinet's layers for load_model)

    saved, path, format, batch = argv
    try:
        model = keras.saving.load_model(saved, compile=False)
        _produce(model, path, format, int(batch) or None)
    except Exception as error:  # reported by the parent as one line
        print(_first_line(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
