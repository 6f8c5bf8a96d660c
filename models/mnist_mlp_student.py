"""MNIST student: a small multilayer perceptron with one hidden layer.

Parameters: 50,890 (num_classes=10)
Input: float images [N, 1, 28, 28] (or [N, 28, 28] / [N, 784]; flattened per sample)
Multiply-adds: 50,816 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, hidden=64, in_features=784
Student of: mnist_cnn_teacher.py (18x fewer parameters), hinton_teacher.py (47x fewer parameters)

784 -> `hidden` (ReLU) -> num_classes. The simplest student: no convolutions,
so it shows what distillation adds to a model that cannot see image structure.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 64, in_features: int = 784):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))
