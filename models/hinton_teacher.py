"""MNIST teacher of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network".

Parameters: 2,395,210 (num_classes=10)
Input: float images [N, 1, 28, 28] (or [N, 28, 28] / [N, 784]; flattened per sample)
Multiply-adds: 2,392,800 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, hidden=1200, dropout=0.5, input_dropout=0.2
Pairs with: hinton_student.py

A 784-1200-1200-10 perceptron with ReLU, regularised with dropout on the inputs
and on both hidden layers, as in the paper (67 test errors there).
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 1200, dropout: float = 0.5,
                 input_dropout: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Dropout(input_dropout),
            nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
