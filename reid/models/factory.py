"""``build_model``: every AP3D-paper architecture by name, on ResNet-18/34/50.

Names are ``<architecture>[_<backbone>]``, e.g. ``ap3d_resnet50``, ``c2d_resnet18``, ``nl_ap3d``
(the backbone defaults to ResNet-50). Architectures (Tables 1 and 2 of the paper):

==============  =======================================================================
``c2d``         inflated ResNet, no temporal modelling but the final temporal mean
``i3d``         ``I3D`` blocks (3x3x3 conv)            ``ap_i3d``    APM + 3x3x3 conv
``p3d_a/b/c``   P3D-A/B/C blocks (1x3x3 + 3x1x1)       ``ap_p3d_a/b/c``  with APM
``ap3d``        alias of ``ap_p3d_c``
``nl``          C2D + non-local blocks                 ``nl_p3d_c``, ``nl_ap3d``: both
``ca_nl``       C2D + non-local blocks with APM's contrastive-attention gate (Table 2)
``deform3d``    deformable 3D conv blocks (alias ``d3d``; Table 2)
``cnn_lstm``    C2D per-frame features, then an LSTM 2048 -> 512 (Table 2)
==============  =======================================================================

Placement (the paper's default, Tables 1/2): ``conv2`` of blocks [0, 2] of layer2 and [0, 2, 4]
of layer3 ("half" of the blocks of stages 2 and 3); non-local blocks after blocks [1, 3] of layer2
and [1, 3, 5] of layer3. Table 3 varies ``stages`` and ``num_blocks``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ap3d_kernels.modules import (
    API3D,
    APP3DA,
    APP3DB,
    APP3DC,
    I3D,
    P3DA,
    P3DB,
    P3DC,
    ContrastiveNonLocalBlock3D,
    Deform3D,
    NonLocalBlock3D,
)

from .resnet import RESNET_CONFIGS, PathOrStateDict, ResNet, read_state_dict
from .recurrent import LSTMVideoResNet
from .resnet import load_pretrained as _load_pretrained_2d
from .video_resnet import VideoResNet, check_stages

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "ALIASES",
    "BACKBONES",
    "MODEL_NAMES",
    "parse_model_name",
    "resolve_placement",
    "default_nonlocal_placement",
    "build_model",
    "count_parameters",
]


@dataclass(frozen=True)
class Architecture:
    name: str
    label: str  # as in the paper's tables
    block: Optional[type]  # TemporalBlock class, or None (no temporal blocks)
    nonlocal_blocks: bool
    nonlocal_block: type = NonLocalBlock3D  # the non-local block class, when nonlocal_blocks
    head: str = "mean"  # temporal aggregation of the frame features: "mean" or "lstm"


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("c2d", "C2D", None, False),
        Architecture("i3d", "I3D", I3D, False),
        Architecture("ap_i3d", "AP-I3D", API3D, False),
        Architecture("p3d_a", "P3D-A", P3DA, False),
        Architecture("p3d_b", "P3D-B", P3DB, False),
        Architecture("p3d_c", "P3D-C", P3DC, False),
        Architecture("ap_p3d_a", "AP-P3D-A", APP3DA, False),
        Architecture("ap_p3d_b", "AP-P3D-B", APP3DB, False),
        Architecture("ap_p3d_c", "AP-P3D-C (AP3D)", APP3DC, False),
        Architecture("nl", "NL", None, True),
        Architecture("nl_p3d_c", "NL-P3D", P3DC, True),
        Architecture("nl_ap3d", "NL-AP3D", APP3DC, True),
        Architecture("ca_nl", "CA-NL", None, True, nonlocal_block=ContrastiveNonLocalBlock3D),
        Architecture("deform3d", "Deformable 3D Conv", Deform3D, False),
        Architecture("cnn_lstm", "CNN+LSTM", None, False, head="lstm"),
    )
}
ALIASES: dict[str, str] = {"ap3d": "ap_p3d_c", "d3d": "deform3d"}
BACKBONES: tuple[str, ...] = tuple(RESNET_CONFIGS)  # resnet18, resnet34, resnet50
DEFAULT_BACKBONE = "resnet50"
_ARCH_NAMES = (*ARCHITECTURES, *ALIASES)
#: Every name ``build_model`` accepts (usable as argparse ``choices``).
MODEL_NAMES: tuple[str, ...] = _ARCH_NAMES + tuple(f"{a}_{b}" for b in BACKBONES for a in _ARCH_NAMES)

_RULES = {
    "one": lambda n: [max(n - 2, 0)],  # Table 3: the second-to-last block of the stage
    "half": lambda n: list(range(0, n, 2)),  # every other block from the first: [0, 2, 4, ...]
    "all": lambda n: list(range(n)),
}


def parse_model_name(name: str) -> tuple[str, str]:
    """``"ap3d_resnet18"`` -> ``("ap_p3d_c", "resnet18")``; ``"i3d"`` -> ``("i3d", "resnet50")``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    arch, backbone = key, DEFAULT_BACKBONE
    for b in BACKBONES:
        if key.endswith("_" + b):
            arch, backbone = key[: -len(b) - 1], b
            break
    arch = ALIASES.get(arch, arch)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown model name {name!r}: expected <architecture>[_<backbone>] with architecture one of "
            f"{list(_ARCH_NAMES)} and backbone one of {list(BACKBONES)} (default {DEFAULT_BACKBONE})"
        )
    return arch, backbone


def resolve_placement(
    layers: Sequence[int], stages: Sequence[int] = (2, 3), num_blocks: Union[None, str, int] = None
) -> dict[int, tuple[int, ...]]:
    """Residual blocks that get a temporal block, as ``{stage: indices}`` (stages 1..4 = layer1..4).

    ``num_blocks`` (Table 3's "Num."): ``"half"`` (default; [0, 2] of layer2 and [0, 2, 4] of
    layer3 on ResNet-50, 5 blocks), ``"one"`` (the second-to-last block of each stage; 1 block for
    one stage, 2 for stages 2 and 3), ``"all"`` (every block; 10 on ResNet-50), or the total number
    of blocks, which must be what one of these rules gives.
    """
    check_stages("stages", stages)
    counts = {s: layers[s - 1] for s in sorted(stages)}
    if num_blocks is None:
        rule = "half"
    elif isinstance(num_blocks, str):
        if num_blocks not in _RULES:
            raise ValueError(f"num_blocks must be one of {list(_RULES)} or an integer total, got {num_blocks!r}")
        rule = num_blocks
    elif isinstance(num_blocks, int) and not isinstance(num_blocks, bool):
        totals = {r: sum(len(f(n)) for n in counts.values()) for r, f in _RULES.items()}
        rule = next((r for r, t in totals.items() if t == num_blocks), None)
        if rule is None:
            options = ", ".join(f"{t} ({r})" for r, t in totals.items())
            raise ValueError(
                f"num_blocks={num_blocks} is not available for stages {sorted(stages)} with {list(counts.values())} "
                f"blocks: choose one of {options}"
            )
    else:
        raise TypeError(f"num_blocks must be None, a str or an int, got {num_blocks!r}")
    return {s: tuple(_RULES[rule](n)) for s, n in counts.items()}


def default_nonlocal_placement(layers: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """After blocks [1, 3] of layer2 and [1, 3, 5] of layer3 (ResNet-50): every other block from
    the second, in stages 2 and 3."""
    return {s: tuple(range(1, layers[s - 1], 2)) for s in (2, 3)}


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: Optional[PathOrStateDict] = None,
    stages: Optional[Sequence[int]] = None,
    num_blocks: Union[None, str, int] = None,
    temporal_placement: Optional[Mapping[int, Sequence[int]]] = None,
    nonlocal_placement: Optional[Mapping[int, Sequence[int]]] = None,
    time_dim: int = 3,
    apm_scale: float = 4.0,
    apm_reduction: int = 16,
    contrastive: bool = True,
    detach_gate_inputs: bool = True,
    apm_backend: str = "auto",
    last_stride: int = 1,
    lstm_hidden_size: int = 512,
) -> VideoResNet:
    """Build a video ReID network by name (see the module docstring for the names).

    Args:
        name: ``<architecture>[_<backbone>]``, e.g. ``"ap3d_resnet50"``; one of ``MODEL_NAMES``.
        num_classes: training identities (``model.classifier``'s outputs).
        pretrained: path to a torchvision-format ImageNet state dict of the backbone (or the
            mapping itself), loaded into the 2D ResNet before inflation; ``None``: random init.
            Nothing is downloaded.
        stages, num_blocks: Table 3 placement (see ``resolve_placement``); default stages (2, 3),
            "half" of their blocks. ``temporal_placement``: explicit ``{stage: [indices]}`` instead.
        nonlocal_placement: ``{stage: [indices]}`` of the non-local blocks (``nl*`` and ``ca_nl``).
        time_dim: temporal kernel ``N`` of the temporal blocks (and APM's window).
        apm_scale, apm_reduction, contrastive, detach_gate_inputs, apm_backend: APM options
            (AP-models only; accepted and unused by the others so one config fits all models).
        last_stride: layer4's spatial stride (1 in the paper).
        lstm_hidden_size: the LSTM's width (``cnn_lstm`` only; 512 in Table 2).

    Returns:
        a ``VideoResNet`` (``LSTMVideoResNet`` for ``cnn_lstm``) with ``model.feature_dim``, ``model.classifier`` and, for reference,
        ``model.architecture``, ``model.backbone`` and ``model.model_name``.
    """
    arch_name, backbone = parse_model_name(name)
    arch = ARCHITECTURES[arch_name]
    block_cls, layers = RESNET_CONFIGS[backbone]

    placement_given = stages is not None or num_blocks is not None or temporal_placement is not None
    if arch.block is None and placement_given:
        raise ValueError(
            f"{arch_name!r} has no temporal blocks, so stages/num_blocks/temporal_placement do not apply "
            f"(got stages={stages!r}, num_blocks={num_blocks!r}, temporal_placement={temporal_placement!r})"
        )
    if temporal_placement is not None and (stages is not None or num_blocks is not None):
        raise ValueError("give either temporal_placement or stages/num_blocks, not both")
    if nonlocal_placement is not None and not arch.nonlocal_blocks:
        with_nl = ", ".join(a.name for a in ARCHITECTURES.values() if a.nonlocal_blocks)
        raise ValueError(f"{arch_name!r} has no non-local blocks; nonlocal_placement applies to {with_nl}")

    if arch.block is None:
        temporal = None
    elif temporal_placement is not None:
        temporal = temporal_placement
    else:
        temporal = resolve_placement(layers, (2, 3) if stages is None else stages, num_blocks)
    nonlocal_ = None
    if arch.nonlocal_blocks:
        nonlocal_ = default_nonlocal_placement(layers) if nonlocal_placement is None else nonlocal_placement

    options = {"time_dim": time_dim}
    if arch.block is not None and arch.block.uses_apm:
        options.update(
            apm_reduction=apm_reduction,
            scale=apm_scale,
            contrastive=contrastive,
            detach_gate_inputs=detach_gate_inputs,
            backend=apm_backend,
        )

    if pretrained is None:
        resnet2d = ResNet(block_cls, layers)
    else:
        # Built on "meta" and given the file's tensors: no random initialisation to overwrite.
        # (fc stays on meta: it is not part of the video network.)
        dtype = torch.get_default_dtype()  # a half-precision file still gives a float32 model
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in read_state_dict(pretrained).items()}
        with torch.device("meta"):
            resnet2d = ResNet(block_cls, layers)
        _load_pretrained_2d(resnet2d, state, assign=True)
    if arch.head == "lstm":
        model = LSTMVideoResNet(resnet2d, num_classes, hidden_size=lstm_hidden_size, last_stride=last_stride)
    else:
        model = VideoResNet(
            resnet2d,
            num_classes,
            temporal_block=arch.block,
            temporal_placement=temporal,
            nonlocal_placement=nonlocal_,
            nonlocal_block=arch.nonlocal_block,
            block_options=options,
            last_stride=last_stride,
        )
    model.architecture = arch_name
    model.backbone = backbone
    model.model_name = f"{arch_name}_{backbone}"
    return model


def count_parameters(model, *, exclude_classifier: bool = True) -> int:
    """Number of parameters (the paper's "Param." excludes the classifier)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_classifier and n.startswith("classifier.")))

