"""The registry and the public API names."""

from __future__ import annotations

import ast
import pathlib

import pytest

import multinet
from multinet import models
from multinet.registry import ModelSpec, register_model

PACKAGE = pathlib.Path(multinet.__file__).parent


def test_list_models_sorted_with_wildcards():
    names = multinet.list_models()
    assert names == sorted(names)
    assert names == ["squeezenet1_0", "squeezenet1_1", "vgg11", "vgg13", "vgg16", "vgg19"]
    assert multinet.list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert multinet.list_models("*1_?") == ["squeezenet1_0", "squeezenet1_1"]
    assert multinet.list_models("resnet*") == []


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vgg61'; did you mean .*vgg16"):
        multinet.create_model("vgg61")
    with pytest.raises(ValueError, match=r"unknown model 'squeezenet'; did you mean "
                                         r"squeezenet1_[01], squeezenet1_[01]\?"):
        multinet.create_model("squeezenet")
    with pytest.raises(ValueError, match=r"unknown model 'resnet50' \(multinet.list_models"):
        multinet.create_model("resnet50")


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
    model = models.VGG16(include_top=False, pooling="avg", input_shape=(64, 64, 3),
                         data_format="channels_last")
    assert model.name == "vgg16" and model.output_shape == (None, 512)
    assert model.count_params() == 14_714_688  # REFERENCE.md: vgg16 without its top
    vgg19 = models.VGG19(include_top=False, input_shape=(32, 32, 3))
    assert vgg19.name == "vgg19" and vgg19.count_params() == 20_024_384
    v1_0 = models.SqueezeNet(version="1.0", input_shape=(64, 64, 3))
    assert v1_0.name == "squeezenet1_0" and v1_0.count_params() == 1_248_424
    classic = models.SqueezeNet(version="1_1", ceil_mode=False, include_top=False,
                                input_shape=(227, 227, 3), data_format="channels_last",
                                name="classic")
    assert classic.name == "classic" and classic.output_shape == (None, 13, 13, 512)
    with pytest.raises(ValueError, match="SqueezeNet version must be '1_0' or '1_1', got '2'"):
        models.SqueezeNet(version="2")


def test_no_framework_imports_outside_the_backend_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "backend.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
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
