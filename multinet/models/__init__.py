"""Model families. Importing this package registers every model."""

from multinet.models.convnext import ConvNeXtBase, ConvNeXtLarge, ConvNeXtSmall, ConvNeXtTiny
from multinet.models.efficientnet import (
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
)
from multinet.models.mobilenet import MobileNetV2, MobileNetV3Large, MobileNetV3Small
from multinet.models.resnet import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from multinet.models.squeezenet import SqueezeNet, SqueezeNet1_0, SqueezeNet1_1, fire_module
from multinet.models.vgg import VGG11, VGG13, VGG16, VGG19
from multinet.models.vit import ViTB16

__all__ = [
    "ConvNeXtTiny",
    "ConvNeXtSmall",
    "ConvNeXtBase",
    "ConvNeXtLarge",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
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
    "ViTB16",
]
