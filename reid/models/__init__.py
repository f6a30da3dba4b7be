"""Video ReID networks of the AP3D paper on ResNet-18/34/50 backbones.

    from reid.models import build_model, MODEL_NAMES
    model = build_model("ap3d_resnet50", num_classes=625, pretrained="resnet50-imagenet.pth")

``python -m reid.models`` prints parameters and GFLOPs of every architecture.
"""
from .factory import (
    ALIASES,
    ARCHITECTURES,
    BACKBONES,
    MODEL_NAMES,
    Architecture,
    build_model,
    count_parameters,
    default_nonlocal_placement,
    parse_model_name,
    resolve_placement,
)
from .inflate import inflate_resnet
from .recurrent import LSTMVideoResNet
from .resnet import ResNet, load_pretrained, resnet18, resnet34, resnet50
from .video_resnet import VideoResNet, apm_modules, set_apm_backend, temporal_blocks

__all__ = [
    "build_model",
    "MODEL_NAMES",
    "ARCHITECTURES",
    "ALIASES",
    "BACKBONES",
    "Architecture",
    "parse_model_name",
    "resolve_placement",
    "default_nonlocal_placement",
    "count_parameters",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "load_pretrained",
    "inflate_resnet",
    "VideoResNet",
    "LSTMVideoResNet",
    "temporal_blocks",
    "apm_modules",
    "set_apm_backend",
]
