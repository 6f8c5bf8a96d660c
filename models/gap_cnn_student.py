"""Student for images of any size: a small CNN ending in global average pooling.

Parameters: 98,970 (num_classes=10)
Input: float images [N, 3, 224, 224]; any size and aspect ratio
Multiply-adds: 48,772,352 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: num_classes=10, channels=3, width=16, stages=4
Student of: torchvision_teacher.py (113x fewer parameters)

`stages` 3x3 convolutions with stride 2 (`width`, 2, 4, 8, ... times `width` channels),
each followed by BatchNorm and ReLU, then global average pooling and one linear layer. The
strides halve the image at every stage, so the cost grows with the image's area (about 1/49
of the above at 32 x 32), and the pooling makes the classifier independent of the size.
`channels` is 3 for colour, 1 for grayscale input.

What one feature before the pooling sees (its receptive field) is 2^(stages + 1) - 1
pixels wide: 31 with the default 4 stages. The pooling averages features that each see only
that much, so an object wider than that is recognised from its parts only, and the student
learns far slower (bench/augment.py shows it on photo-like digits at 64 x 64). Pick the fewest
stages for which 2^(stages + 1) covers image_size: 4 up to 32 px, 5 at 64 (395,674
parameters), 6 at 128, 7 at 224; or a smaller image_size.
"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 3, width: int = 16, stages: int = 4):
        super().__init__()
        layers = []
        for out in (width * 2 ** stage for stage in range(stages)):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
