"""MNIST teacher: a CNN with about 0.9 million parameters.

Parameters: 897,130 (num_classes=10)
Input: float images [N, 1, 28, 28] (MNIST-like grey images; any normalisation)
Multiply-adds: 8,255,232 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, dropout=0.5
Pairs with: mnist_cnn_student.py, mnist_mlp_student.py

Three 3x3 convolutions (32, 64, 128 channels) with BatchNorm and ReLU, max-pooling
after the first two (28 -> 14 -> 7), then a 128-unit fully connected layer with
dropout. Trained with Adam for a few epochs it reaches about 99% on MNIST. This is
the sample federation's teacher.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
