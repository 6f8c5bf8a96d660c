"""MNIST student: a small CNN, about 100 times smaller than mnist_cnn_teacher.py.

Parameters: 9,122 (num_classes=10)
Input: float images [N, 1, 28, 28] (MNIST-like grey images; any normalisation)
Multiply-adds: 290,080 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, channels=8
Student of: mnist_cnn_teacher.py (98x fewer parameters)

Two 3x3 convolutions (`channels` and 2 * `channels`) with BatchNorm, ReLU and
max-pooling (28 -> 14 -> 7), then one linear layer. Distilled from
mnist_cnn_teacher.py it reaches about 98% on MNIST.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 8):
        super().__init__()
        wide = 2 * channels
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, wide, 3, padding=1, bias=False), nn.BatchNorm2d(wide), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(wide * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
