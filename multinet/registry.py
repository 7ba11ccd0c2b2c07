"""The model registry: model and weights specs, ``list_models``, ``create_model``."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import keras


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """A published weights file for one model.

    ``file_hash`` is what its publisher gave: the md5 of keras.applications
    files, the sha256 prefix that torchvision puts in its file names, or None
    where nothing was published. ``arch_options`` are the model options the
    file needs (``ceil_mode=False`` for the keras-squeezenet port).
    ``resize_size`` and ``interpolation`` describe the evaluation transform
    the weights were published with: resize the short side to
    ``resize_size`` (None: no resize before the crop), then center-crop
    ``input_size`` (torchvision: 256 then 224, bilinear; some entries 232).
    """

    name: str
    url: str
    file_hash: str | None
    hash_algorithm: str | None
    layout: str
    preprocessing: str
    input_size: int
    classes: int = 1000
    arch_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notop_url: str | None = None
    notop_file_hash: str | None = None
    description: str = ""
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "arch_options", MappingProxyType(dict(self.arch_options)))

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def notop_filename(self) -> str | None:
        return self.notop_url.rsplit("/", 1)[-1] if self.notop_url else None


TORCHVISION_ORIGIN = "https://download.pytorch.org/models/"


def torchvision_weights(filename: str, *, name: str = "torchvision",
                        description: str = "torchvision IMAGENET1K_V1", input_size: int = 224,
                        resize_size: int = 256, **kwargs) -> WeightsSpec:
    """The entry for a torchvision ImageNet checkpoint such as ``vgg16-397923af.pth``,
    whose name carries the start of the file's sha256."""
    return WeightsSpec(
        name=name,
        url=TORCHVISION_ORIGIN + filename,
        file_hash=filename.rsplit("-", 1)[1].split(".")[0],
        hash_algorithm="sha256",
        layout="torchvision",
        preprocessing="torch",
        input_size=input_size,
        resize_size=resize_size,
        description=description,
        **kwargs,
    )


def _no_options(layout: str, names: frozenset) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything multinet knows about one architecture family, declared by
    its module under ``multinet/models/``; the loader, the command line, the
    benchmarks and the docs read it and name no family themselves.

    - ``head_layers``: the classifier layers (with weights) that a model built
      with ``include_top=False`` leaves out, in every variant of the family.
    - ``torchvision_names(variant, options)``: ``{torchvision module: layer}``,
      e.g. ``{"features.0": "conv1", "layer1.0.bn1": "layer1_0_bn1"}``. A
      module's ``weight``/``bias``/``running_mean``/``running_var`` become the
      layer's variables in Keras order (``num_batches_tracked`` is ignored);
      how is decided by the layer's type (``multinet.weights.torchvision``).
    - ``keras_names(variant, options)``: ``{layer name in a Keras 1/2 file:
      layer}`` where the family's names differ from the published files' (a
      '/' in a file's name is always read as '_'); None where they agree.
    - ``source_options(layout, names)``: the architecture options that a file
      of ``layout`` with these (model-side) layer or module names needs, e.g.
      ``{"ceil_mode": False}`` for the keras-squeezenet port.
    - ``preprocessing``: ``{layout: mode}``, the input mode that weights of a
      layout expect (``"torch"`` for torchvision checkpoints). Where the mode
      depends on how the model was built, the value is a function of the
      model's options giving the mode (keras' MobileNetV3 takes [0, 255]
      inputs with its in-model ``Rescaling``, [-1, 1] without it); read it
      with ``preprocessing_for``.
    """

    name: str
    head_layers: tuple[str, ...] = ()
    torchvision_names: Callable[[str, Mapping[str, Any]], dict[str, str]] | None = None
    keras_names: Callable[[str, Mapping[str, Any]], dict[str, str]] | None = None
    source_options: Callable[[str, frozenset], dict] = _no_options
    preprocessing: Mapping[str, str | Callable[[Mapping[str, Any]], str]] = dataclasses.field(
        default_factory=dict)
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "head_layers", tuple(self.head_layers))
        object.__setattr__(self, "preprocessing", MappingProxyType(dict(self.preprocessing)))

    def preprocessing_for(self, layout: str, options: Mapping[str, Any] | None = None):
        """The input mode weights of ``layout`` expect in a model built with
        ``options`` (its architecture options; None: the defaults), or None."""
        mode = self.preprocessing.get(layout)
        return mode(dict(options or {})) if callable(mode) else mode


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model.

    ``fixed_top_size``: the only input size the classifier accepts (VGG's
    fc1 wants 7x7 features), or None where the head pools globally.
    """

    name: str
    family: Family
    builder: Callable[..., keras.Model]
    default_size: int
    min_size: int
    num_params: int
    weights: tuple[WeightsSpec, ...] = ()
    default_weights: str | None = None
    description: str = ""
    fixed_top_size: int | None = None

    @property
    def family_name(self) -> str:
        return self.family.name

    def get_weights(self, name: str) -> WeightsSpec:
        """The weights entry called ``name``; ``"imagenet"`` is the default one."""
        if name == "imagenet" and self.default_weights:
            name = self.default_weights
        for entry in self.weights:
            if entry.name == name:
                return entry
        known = ["imagenet"] * bool(self.default_weights) + [w.name for w in self.weights]
        close = difflib.get_close_matches(str(name), known, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(
            f"{self.name}: unknown weights {name!r}; {hint}known weights entries: "
            f"{', '.join(known) or 'none'}, or pass a file path"
        )


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    names = [w.name for w in spec.weights]
    if len(set(names)) != len(names) or "imagenet" in names:
        raise ValueError(f"{spec.name}: weights entry names must be unique and not 'imagenet'")
    if spec.default_weights is not None and spec.default_weights not in names:
        raise ValueError(f"{spec.name}: default weights {spec.default_weights!r} is not listed")
    _MODELS[spec.name] = spec
    return spec


def _ensure_models_imported():
    import multinet.models  # noqa: F401  (registers the families)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard."""
    _ensure_models_imported()
    names = sorted(_MODELS)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_model_spec(name: str) -> ModelSpec:
    _ensure_models_imported()
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}{hint} (multinet.list_models() lists all "
        f"{len(_MODELS)} models)"
    )


def resolve_weights(spec: ModelSpec, weights) -> WeightsSpec | None:
    """The registry entry that ``weights`` names, or None for a path, mapping or None.

    A string is an entry name if it is ``"imagenet"`` or one of the model's
    entries; a string that looks like neither an entry nor a file path (no
    separator, no suffix, no such file) is an unknown entry name.
    """
    if not isinstance(weights, str):
        return None
    if weights == "imagenet" or weights in {w.name for w in spec.weights}:
        return spec.get_weights(weights)
    looks_like_path = os.sep in weights or "/" in weights or "." in weights
    if not looks_like_path and not os.path.exists(weights):
        return spec.get_weights(weights)  # raises, listing the known entries
    return None


def create_model(
    name: str,
    /,
    *,
    weights=None,
    include_top: bool = True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes: int = 1000,
    classifier_activation="softmax",
    data_format: str | None = None,
    **model_kwargs,
) -> keras.Model:
    """Build a registered model as a functional ``keras.Model``.

    ``weights`` is None (random initialization), a path to a weights file in
    any layout ``multinet.load_weights`` reads, or the name of one of the
    model's weights entries (``"imagenet"`` is the default entry).
    ``data_format=None`` follows ``keras.config.image_data_format()``; an
    explicit value applies to this model only. ``model_kwargs`` carries family
    options such as SqueezeNet's ``ceil_mode``, and ``name`` sets the Keras
    model's name (``name`` the first argument is the registry name, so it is
    positional).
    """
    spec = get_model_spec(name)
    entry = resolve_weights(spec, weights)
    # Everything about the weights is checked before the (slow) build: the
    # options and input they need, then an entry's file is fetched or a
    # file's content read.
    if weights is not None:
        from multinet.layers import standardize_data_format
        from multinet.models.base import resolve_input_shape

        resolve_input_shape(
            name, input_shape, input_tensor, data_format=standardize_data_format(data_format),
            default_size=spec.default_size, min_size=1, include_top=include_top,
            fixed_top_size=None, has_weights=True)
    if entry is not None:
        needed, origin = dict(entry.arch_options), f"weights {entry.name!r}"
        if include_top and classes != entry.classes:
            raise ValueError(
                f"{name}: weights {entry.name!r} have {entry.classes} classes, "
                f"got classes={classes}; pass include_top=False to put your own head on it"
            )
        if input_shape is None and input_tensor is None and include_top:
            model_kwargs.setdefault("default_size", entry.input_size)
    elif isinstance(weights, (str, os.PathLike)):
        from multinet.weights.loader import inspect_source

        layout, names = inspect_source(weights)
        needed = spec.family.source_options(layout, names)
        origin = f"weights file {os.fspath(weights)} ({layout})"
    else:
        needed, origin = {}, ""
    for key, value in needed.items():
        if key in model_kwargs and model_kwargs[key] != value:
            raise ValueError(
                f"{name}: {origin} need {key}={value!r}, got {key}={model_kwargs[key]!r}")
        model_kwargs[key] = value
    path = None
    if entry is not None:
        from multinet.weights import fetch

        path = fetch(entry, include_top=include_top, model_name=spec.name)
    model = spec.builder(
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        data_format=data_format,
        has_weights=weights is not None,
        **model_kwargs,
    )
    if entry is not None:
        from multinet.weights import load_weights, remember

        report = load_weights(model, path)
        # The family's mode for the model as built (an option may change it),
        # else the entry's.
        remember(model, entry=entry.name, layout=report.layout,
                 preprocessing=report.preprocessing or entry.preprocessing, source=str(path))
    elif weights is not None:
        from multinet.weights import load_weights

        load_weights(model, weights)
    return model
