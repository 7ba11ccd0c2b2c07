"""The registry and the public API names."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib

import pytest

import multinet
from multinet import models
from multinet.registry import ModelSpec, register_model

PACKAGE = pathlib.Path(multinet.__file__).parent


def test_list_models_sorted_with_wildcards():
    names = multinet.list_models()
    assert names == sorted(names)
    assert names == ["convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
                     *(f"efficientnet_b{i}" for i in range(8)),
                     "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                     "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
                     "squeezenet1_0", "squeezenet1_1", "vgg11", "vgg13", "vgg16", "vgg19",
                     "vit_b_16"]
    assert multinet.list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert multinet.list_models("*1_?") == ["squeezenet1_0", "squeezenet1_1"]
    assert multinet.list_models("resnet?0*") == ["resnet101", "resnet50"]
    assert multinet.list_models("densenet*") == []


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vgg61'; did you mean .*vgg16"):
        multinet.create_model("vgg61")
    with pytest.raises(ValueError, match=r"unknown model 'squeezenet'; did you mean "
                                         r"squeezenet1_[01], squeezenet1_[01]\?"):
        multinet.create_model("squeezenet")
    with pytest.raises(ValueError, match=r"unknown model 'qq' \(multinet.list_models"):
        multinet.create_model("qq")


def test_model_name_keyword_names_the_keras_model():
    model = multinet.create_model("squeezenet1_1", name="mine", input_shape=(32, 32, 3))
    assert model.name == "mine"


def test_duplicate_registration_is_refused():
    spec = multinet.get_model_spec("vgg16")
    with pytest.raises(ValueError, match="'vgg16' is already registered"):
        register_model(ModelSpec(name="vgg16", family="vgg", builder=spec.builder,
                                 default_size=224, min_size=32, num_params=1))


def test_unknown_weights_entry_names_the_known_ones():
    with pytest.raises(ValueError, match=r"vgg11: unknown weights 'keras'; known weights "
                                         r"entries: imagenet, torchvision"):
        multinet.create_model("vgg11", weights="keras")


def test_misspelled_weights_entry_suggests_the_close_one():
    spec = multinet.get_model_spec("squeezenet1_1")
    with pytest.raises(ValueError) as caught:
        spec.get_weights("imagnet")
    assert str(caught.value) == (
        "squeezenet1_1: unknown weights 'imagnet'; did you mean imagenet? known weights "
        "entries: imagenet, torchvision, keras-squeezenet, or pass a file path")
    with pytest.raises(ValueError, match=r"'keras_squeezenet'; did you mean keras-squeezenet\?"):
        multinet.create_model("squeezenet1_1", weights="keras_squeezenet")


def test_weights_entries_carry_what_they_need():
    spec = multinet.get_model_spec("squeezenet1_1")
    classic = spec.get_weights("keras-squeezenet")
    assert classic.arch_options["ceil_mode"] is False
    assert (classic.input_size, classic.preprocessing, classic.file_hash) == (227, "caffe", None)
    assert spec.get_weights("imagenet").name == "torchvision"
    vgg16 = multinet.get_model_spec("vgg16").get_weights("imagenet")
    assert (vgg16.name, vgg16.hash_algorithm, vgg16.file_hash) == (
        "keras", "md5", "64373286793e3c8b2b4e3219cbf3544b")
    tv = multinet.get_model_spec("vgg19").get_weights("torchvision")
    assert (tv.filename, tv.file_hash, tv.hash_algorithm) == (
        "vgg19-dcbb9e9d.pth", "dcbb9e9d", "sha256")


def test_keras_applications_style_constructors():
    model = models.VGG16(include_top=False, weights=None, pooling="avg",
                         input_shape=(64, 64, 3), data_format="channels_last")
    assert model.name == "vgg16" and model.output_shape == (None, 512)
    assert model.count_params() == 14_714_688  # REFERENCE.md: vgg16 without its top
    vgg19 = models.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert vgg19.name == "vgg19" and vgg19.count_params() == 20_024_384
    v1_0 = models.SqueezeNet(version="1.0", weights=None, input_shape=(64, 64, 3))
    assert v1_0.name == "squeezenet1_0" and v1_0.count_params() == 1_248_424
    classic = models.SqueezeNet(version="1_1", weights=None, ceil_mode=False,
                                include_top=False, input_shape=(227, 227, 3),
                                data_format="channels_last", name="classic")
    assert classic.name == "classic" and classic.output_shape == (None, 13, 13, 512)
    with pytest.raises(ValueError, match="SqueezeNet version must be '1_0' or '1_1', got '2'"):
        models.SqueezeNet(version="2")


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    monkeypatch.delenv("MULTINET_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "models"


@pytest.mark.parametrize("constructor, file_name", [
    (models.VGG16, "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    (models.SqueezeNet1_1, "squeezenet1_1-b8a52dc0.pth"),
    (models.SqueezeNet, "squeezenet1_1-b8a52dc0.pth"),
])
def test_constructors_default_to_imagenet_weights(constructor, file_name, empty_offline_cache,
                                                  monkeypatch):
    """As keras.applications: the default entry is fetched (offline and not cached here,
    so it fails, before any model is built)."""
    from multinet import registry

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before its weights were fetched")

    for name in ("vgg16", "squeezenet1_1"):
        spec = registry.get_model_spec(name)
        monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(spec, builder=no_build))
    with pytest.raises(multinet.WeightsUnavailableError) as caught:
        constructor()
    assert f"needs the weights file {file_name} (offline mode" in str(caught.value)
    assert str(empty_offline_cache / file_name) in str(caught.value)
    assert "imagenet" in constructor.__doc__ and "weights=None" in constructor.__doc__


def test_create_model_defaults_to_random_weights(empty_offline_cache):
    model = multinet.create_model("squeezenet1_1", input_shape=(64, 64, 3))
    assert multinet.model_info(model)["weights"] is None
    assert inspect.signature(multinet.create_model).parameters["weights"].default is None
    assert not empty_offline_cache.exists()  # nothing was fetched


# Modules that may import a framework, inside their functions only (never at
# module level, so that importing multinet imports no other backend).
LAZY_FRAMEWORK_IMPORTS = {
    "distribute.py",  # each backend's data-parallel engine
    "deploy.py",  # each export format's own runtime and exporter
}


def _outside_functions(node):
    """``node`` and every node below it that is not inside a function."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _outside_functions(child)


def test_no_framework_imports_outside_the_backend_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "backend.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        lazy = path.relative_to(PACKAGE).as_posix() in LAZY_FRAMEWORK_IMPORTS
        for node in (_outside_functions(tree) if lazy else ast.walk(tree)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in {"tensorflow", "jax", "jaxlib", "torch"}:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert offenders == []


def test_the_lazy_import_check_sees_module_level_imports():
    tree = ast.parse("import torch\ndef f():\n    import jax\n")
    imports = [n for n in _outside_functions(tree) if isinstance(n, ast.Import)]
    assert [n.names[0].name for n in imports] == ["torch"]
