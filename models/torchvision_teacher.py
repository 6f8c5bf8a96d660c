"""Teacher: any torchvision classification architecture by name, optionally from pretrained weights.

Parameters: 11,181,642 (num_classes=10)
Input: float images [N, 3, 224, 224] or [N, 1, 224, 224]; any size the architecture takes
Multiply-adds: 1,813,566,464 per image (convolutions and linear layers)
Output: logits [N, num_classes]
Arguments: arch='resnet18', num_classes=10, pretrained_weights=None
Pairs with: gap_cnn_student.py

`arch` is the name of a torchvision classification model (resnet18, resnet50,
efficientnet_b0, mobilenet_v3_large, convnext_tiny, ...); the counts above are
resnet18's. `pretrained_weights` names a file in torchvision's state_dict format, e.g.
ImageNet weights downloaded once on a machine with internet access:

    torch.save(torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict(), "resnet18.pth")

A relative path is relative to this file's folder (the site's input folder). Every
weight except the classifier's is loaded from it; the classifier (torchvision's last
layer, e.g. resnet's `fc`) is always new, with `num_classes` outputs, so the teacher
must then be fine-tuned on the sites' images: `teacher_rounds` and/or `teacher_epochs`.
Pretrained weights expect the normalization they were trained with: `normalize:
imagenet` for torchvision's ImageNet weights. Without `pretrained_weights` the model
starts from random weights (nothing is ever downloaded).

Grayscale input [N, 1, H, W] is repeated to three channels, which is what an RGB
network sees of a gray photo, so pretrained first layers apply unchanged (the first
layer costs what it costs on colour input). Other channel counts are refused.
Sizes: most architectures take any size from 32 px up; alexnet needs at least 63 px,
inception_v3 at least 75 px, vit_* and maxvit_t exactly 224 x 224 (`image_size: 224`).
googlenet and inception_v3 are built without their auxiliary classifiers; their
`transform_input` is on with pretrained weights, as torchvision sets it for its own.
The state_dict keys are torchvision's with a "net." prefix.
"""
import difflib
from pathlib import Path

import torch
from torch import nn
from torchvision import models

ARCHITECTURES = models.list_models(module=models)   # classification models only
# Only their main classifier is used; weight files of torchvision's own may hold the auxiliary ones.
AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


class Model(nn.Module):
    def __init__(self, arch: str = "resnet18", num_classes: int = 10, pretrained_weights: str = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            close = difflib.get_close_matches(str(arch), ARCHITECTURES, n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            problem = (f"arch '{arch}' is not a torchvision classification model. {hint}Set arch in teacher_args "
                       f"to one of: {', '.join(ARCHITECTURES)}")
            raise ValueError(problem)
        options = {}
        if arch in AUXILIARY:
            options = {"aux_logits": False, "init_weights": False, "transform_input": pretrained_weights is not None}
        self.net = models.get_model(arch, weights=None, num_classes=num_classes, **options)
        if pretrained_weights is not None:
            self.net.load_state_dict(_backbone(self.net, arch, Path(__file__).resolve().parent / pretrained_weights),
                                     strict=False)   # _backbone checked that only the new classifier is left out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W] or [N, 1, H, W], got {list(x.shape)}")
        return self.net(x)


def _backbone(net: nn.Module, arch: str, path: Path) -> dict:
    """The weights in ``path`` for every part of ``net`` but its classifier (and auxiliary classifiers)."""
    given = f"pretrained_weights '{path.name}'"
    save_it = f"Save it with torch.save(torchvision.models.{arch}(weights=...).state_dict(), '{path.name}')"
    if not path.is_file():
        problem = (f"{given}: no such file at {path}. Put the weights file next to the teacher's model file "
                   "(the site's input folder) or fix pretrained_weights in teacher_args")
        raise FileNotFoundError(problem)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        problem = f"{given}: cannot be read as a state_dict ({type(error).__name__}). {save_it}"
        raise ValueError(problem) from None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        problem = f"{given}: holds a {type(state).__name__}, not a state_dict of tensors. {save_it}"
        raise ValueError(problem)
    # torchvision registers the classifier last: the last module holding parameters of its own.
    head = [name for name, module in net.named_modules() if list(module.parameters(recurse=False))][-1]
    ignored = (f"{head}.",) + AUXILIARY.get(arch, ())
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(ignored)}
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    problems = ([f"missing {k}" for k in own if k not in state]
                + [f"unexpected {k}" for k in state if k not in own]
                + [f"{k}: file {list(state[k].shape)}, {arch} {list(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape])
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        problem = (f"{given}: does not fit torchvision's {arch} ({len(problems)} problems: "
                   f"{'; '.join(problems[:5])}{more}). Use weights saved from torchvision.models.{arch}, or set "
                   "arch in teacher_args to the architecture the weights belong to")
        raise ValueError(problem)
    return state
