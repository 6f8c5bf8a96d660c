"""MNIST student of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network".

Parameters: 1,276,810 (num_classes=10)
Input: float images [N, 1, 28, 28] (or [N, 28, 28] / [N, 784]; flattened per sample)
Multiply-adds: 1,275,200 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, hidden=800
Student of: hinton_teacher.py (1.9x fewer parameters)

A 784-800-800-10 perceptron with ReLU and no regularisation: in the paper it made
146 test errors trained alone and 74 distilled from the 1200-unit teacher.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 800):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
