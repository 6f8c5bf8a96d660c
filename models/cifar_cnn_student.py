"""CIFAR student: a small CNN, over 100 times smaller than cifar_resnet18_teacher.py.

Parameters: 94,762 (num_classes=10)
Input: float images [N, 3, 32, 32] (CIFAR-like colour images; any normalisation)
Multiply-adds: 10,323,200 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, width=32
Student of: cifar_resnet18_teacher.py (118x fewer parameters)

Three 3x3 convolution stages (`width`, 2 * `width`, 4 * `width` channels) with
BatchNorm, ReLU and max-pooling (32 -> 16 -> 8 -> 4), global average pooling and
one linear layer.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        stages = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            stages += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
