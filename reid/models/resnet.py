"""2D ResNet-18/34/50 with torchvision's parameter names (ResNet v1.5: stride on the 3x3 conv).

A state dict saved from ``torchvision.models.resnet50(...)`` loads with ``pretrained=PATH``;
nothing is ever downloaded. The 2D network is the source of weights for the 3D video models
(see ``reid.models.inflate``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import nn

from ..serialization import WeightsFileError, load_weights_file

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "RESNET_CONFIGS",
    "load_pretrained",
    "read_state_dict",
]

PathOrStateDict = Union[str, os.PathLike, Mapping]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet; ``last_stride=1`` removes layer4's down-sampling (ReID practice)."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 1000, last_stride: int = 2):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.block = block
        self.layers_config = list(layers)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=last_stride)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> layer4's feature map ``[B, feature_dim, H/32, W/32]`` (H/16 with last stride 1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


RESNET_CONFIGS: dict[str, tuple[type, list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def read_state_dict(source: PathOrStateDict) -> dict[str, torch.Tensor]:
    """A state dict from a local file (or a mapping): unwraps ``{"state_dict": ...}`` and
    ``{"model": ...}`` checkpoints and strips a ``module.`` (DataParallel) prefix."""
    if isinstance(source, Mapping):
        state = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weights file not found: {path!r}. Nothing is downloaded: save a torchvision "
                f"ImageNet state dict there first, e.g. torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V1')"
                f".state_dict(), {path!r}) on a machine with network access"
            )
        # CRC-checked, weights_only: a corrupted, truncated or pickle-payload file is refused by name
        state = load_weights_file(path, what="pretrained weights file")
    else:
        raise TypeError(f"pretrained must be a path or a state dict (Mapping), got {type(source).__name__}")
    if not isinstance(state, Mapping):
        raise WeightsFileError(
            f"pretrained: {source!r} holds a {type(state).__name__}, expected a state dict (a mapping of "
            f"parameter names to tensors)"
        )
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = dict(state[key])
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(f"pretrained: expected a state dict of tensors, found non-tensor entries {bad}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_pretrained(model: ResNet, source: PathOrStateDict, *, assign: bool = False) -> ResNet:
    """Load ImageNet weights (torchvision format) into a 2D ``ResNet``; ``fc.*`` is ignored.

    Raises ``ValueError`` listing missing, unexpected or wrongly-shaped keys: a partial load
    would silently train from a half-random network. ``assign=True`` adopts the loaded tensors
    (``nn.Module.load_state_dict(assign=True)``), e.g. into a model built on the meta device.
    """
    state = {k: v for k, v in read_state_dict(source).items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        def head(items):
            return f"{items[:6]}{' ...' if len(items) > 6 else ''} ({len(items)})"

        depth = sum(model.layers_config) * (3 if model.block is Bottleneck else 2) + 2
        raise ValueError(
            f"pretrained state dict does not match a torchvision ResNet-{depth} "
            f"({model.block.__name__}, layers {model.layers_config}): missing {head(missing)}, "
            f"unexpected {head(unexpected)}, shape mismatches {head(shapes)}"
        )
    model.load_state_dict(state, strict=False, assign=assign)
    return model


def _resnet(name: str, pretrained: Optional[PathOrStateDict], **kwargs) -> ResNet:
    block, layers = RESNET_CONFIGS[name]
    model = ResNet(block, layers, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def resnet18(pretrained: Optional[PathOrStateDict] = None, **kwargs) -> ResNet:
    """ResNet-18; ``pretrained``: path to (or mapping of) a torchvision-format state dict."""
    return _resnet("resnet18", pretrained, **kwargs)


def resnet34(pretrained: Optional[PathOrStateDict] = None, **kwargs) -> ResNet:
    """ResNet-34; ``pretrained``: path to (or mapping of) a torchvision-format state dict."""
    return _resnet("resnet34", pretrained, **kwargs)


def resnet50(pretrained: Optional[PathOrStateDict] = None, **kwargs) -> ResNet:
    """ResNet-50; ``pretrained``: path to (or mapping of) a torchvision-format state dict."""
    return _resnet("resnet50", pretrained, **kwargs)
