"""Model families. Importing this package registers every model."""

from multinet.models.mobilenet import MobileNetV2, MobileNetV3Large, MobileNetV3Small
from multinet.models.squeezenet import SqueezeNet, SqueezeNet1_0, SqueezeNet1_1, fire_module
from multinet.models.vgg import VGG11, VGG13, VGG16, VGG19

__all__ = [
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "VGG11",
    "VGG13",
    "VGG16",
    "VGG19",
    "SqueezeNet",
    "SqueezeNet1_0",
    "SqueezeNet1_1",
    "fire_module",
]
