"""Independent pure-PyTorch SqueezeNet and VGG with torchvision's module names.

No multinet, no Keras: this is the reference the weight-import tests compare
against, and the native baseline of the benchmarks. ``state_dict()`` keys
match torchvision's checkpoints (``features.0.weight``, ``classifier.1.bias``).
"""

from __future__ import annotations

import torch
from torch import nn
from weight_fixtures import VGG_DEPTHS, VGG_WIDTHS  # the same tables, without torch


class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)),
             self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, version="1_1", num_classes=1000, ceil_mode=True, dropout=0.5):
        super().__init__()

        def pool():
            return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=ceil_mode)

        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), pool(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), pool(), Fire(512, 64, 256, 256),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"unknown SqueezeNet version {version!r}")
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Conv2d(512, num_classes, kernel_size=1),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)),
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class VGG(nn.Module):
    def __init__(self, name="vgg16", num_classes=1000, dropout=0.5):
        super().__init__()
        modules, channels = [], 3
        for depth, width in zip(VGG_DEPTHS[name], VGG_WIDTHS):
            for _ in range(depth):
                modules += [nn.Conv2d(channels, width, kernel_size=3, padding=1),
                            nn.ReLU(inplace=True)]
                channels = width
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*modules)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build(name: str, num_classes: int = 1000, ceil_mode: bool = True) -> nn.Module:
    """The reference module for a multinet model name, in eval mode."""
    if name.startswith("squeezenet"):
        module = SqueezeNet(name[len("squeezenet"):], num_classes, ceil_mode=ceil_mode)
    elif name in VGG_DEPTHS:
        module = VGG(name, num_classes)
    else:
        raise ValueError(f"no reference for {name!r}")
    return module.eval()
