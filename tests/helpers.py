"""Small helpers shared by the tests."""

from __future__ import annotations

import io
import pickle
import re
import zipfile

import numpy as np

# Lines TensorFlow writes to stderr at import whatever TF_CPP_MIN_LOG_LEVEL says.
_FRAMEWORK_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the "
                              r"following instructions)")


def own_lines(stderr: str) -> list[str]:
    """The non-empty lines of a subprocess' stderr that are not a framework's start-up noise."""
    return [line for line in stderr.splitlines() if line.strip() and
            not _FRAMEWORK_NOISE.match(line)]


def images(rng, batch, size, data_format, channels=3):
    """A float32 image batch in the given format."""
    x = rng.uniform(0.0, 1.0, size=(batch, size, size, channels)).astype("float32")
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def distinct_images(rng, size, data_format):
    """Two float32 images a network with any weights answers differently:
    uniform noise, and bright diagonal stripes with unequal channels."""
    noise = rng.uniform(0.0, 1.0, size=(size, size, 3))
    i, j = np.mgrid[:size, :size]
    stripes = np.stack([((i + j) // 3 % 2) * 2.0, (i % 5 == 0) * 1.5,
                        np.full((size, size), -0.5)], axis=-1)
    x = np.stack([noise, stripes]).astype("float32")
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def infer(model, x) -> np.ndarray:
    """The model's outputs in inference mode, as numpy.

    On JAX through one compiled call (``jax.jit`` of ``stateless_call``):
    called directly, JAX compiles and runs each operation on its own, 5-7x
    slower for one call (EfficientNet-B0: 12 s against 1.8 s on this 2-core CPU). Elsewhere
    a direct call: TensorFlow's ``predict`` would trace a graph per model, and
    PyTorch runs op by op anyway.
    """
    import keras

    if keras.backend.backend() != "jax":
        return keras.ops.convert_to_numpy(model(x, training=False))
    import jax

    def call(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    args = ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables], x)
    # Compiled for one call: XLA's backend optimizations cost more time than they save.
    compiled = jax.jit(call).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return np.asarray(compiled(*args))


def to_channels_last(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def rel_error(a, b):
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# -- torch.save's zip format, written without PyTorch ---------------------------

TORCH_STORAGE_TYPES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


class TorchGlobal:
    """A global name (``torch._utils._rebuild_tensor_v2``) pickled without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle reduces only to callables
        raise TypeError(f"{self.module}.{self.name} is a name to pickle, not a function")


class TorchStorage:
    """A 1-D array saved as one ``data/<key>`` file; ``storage_type`` defaults from its
    dtype (bfloat16: pass the bits as uint16 with ``BFloat16Storage``)."""

    def __init__(self, array, storage_type=None):
        self.array = np.ascontiguousarray(array).reshape(-1)
        self.type = storage_type or TORCH_STORAGE_TYPES[self.array.dtype.name]


class TorchTensor:
    """A view (offset, shape, stride in elements) of a ``TorchStorage``; pickles as
    ``torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""

    def __init__(self, storage, offset=0, shape=None, stride=None):
        self.storage, self.offset = storage, offset
        self.shape = tuple(storage.array.shape if shape is None else shape)
        if stride is None:
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        self.stride = tuple(stride)

    @classmethod
    def of(cls, array, storage_type=None):
        array = np.asarray(array)
        return cls(TorchStorage(array, storage_type), shape=array.shape)

    def __reduce__(self):
        import collections

        return (TorchGlobal("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.shape, self.stride, False,
                 collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):
    """The pure-Python pickler (its ``dispatch`` table can be extended): storages
    become persistent ids, ``TorchGlobal`` a GLOBAL opcode, as torch.save writes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol):
        super().__init__(file, protocol=protocol)
        self.storages = {}

    def _save_torch_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[TorchGlobal] = _save_torch_global

    def persistent_id(self, obj):
        if not isinstance(obj, TorchStorage):
            return None
        key = self.storages.setdefault(id(obj), (str(len(self.storages)), obj))[0]
        return ("storage", TorchGlobal("torch", obj.type), key, "cpu", obj.array.size)


def write_torch_zip(path, obj, *, byteorder="little", protocol=2, prefix="archive"):
    """Write ``obj`` (dicts, lists, ``TorchTensor``s, plain values, any picklable
    object) in the zip layout ``torch.save`` writes: ``<prefix>/data.pkl``,
    ``<prefix>/byteorder``, ``<prefix>/data/<key>`` per storage, ``<prefix>/version``."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, protocol)
    pickler.dump(obj)
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, storage in pickler.storages.values():
            data = storage.array
            archive.writestr(f"{prefix}/data/{key}",
                             data.astype(data.dtype.newbyteorder(order)).tobytes())
        archive.writestr(f"{prefix}/version", "3\n")
    return path


def torch_zip_state(mapping):
    """A state dict of ``TorchTensor``s, one storage each, from arrays."""
    import collections

    return collections.OrderedDict((k, TorchTensor.of(v)) for k, v in mapping.items())
