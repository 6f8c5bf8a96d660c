"""CIFAR teacher: torchvision's ResNet-18 adapted to 32x32 images.

Parameters: 11,173,962 (num_classes=10)
Input: float images [N, 3, 32, 32] (CIFAR-like colour images; any normalisation)
Multiply-adds: 555,422,720 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10
Pairs with: cifar_cnn_student.py

torchvision.models.resnet18(num_classes=...) with the usual CIFAR changes: the
7x7 stride-2 first convolution becomes 3x3 stride 1 and the max-pool is removed,
so the 32x32 input is not shrunk to 8x8 before the first block. The state_dict
keys are torchvision's with a "net." prefix. Randomly initialised: no pretrained
weights are downloaded.
"""
import torch
from torch import nn
from torchvision.models import resnet18


class Model(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = resnet18(weights=None, num_classes=num_classes)
        self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
