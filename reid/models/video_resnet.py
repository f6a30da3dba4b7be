"""The video ReID network: an inflated ResNet with temporal blocks and non-local blocks, and the
AP3D head (per-frame spatial max pool, temporal mean, BatchNorm1d neck, linear classifier).

Forward contract (relied on by the training engine)::

    model.train(); logits, features = model(clips)   # clips [B, 3, T, H, W]
                                                     # logits [B, num_classes], features [B, D] post-BN
    model.eval();  frame_features = model(clips)     # [B, T, D]: the neck's output for each frame

In eval mode BatchNorm is affine, so averaging the per-frame features over any set of frames (a
whole tracklet split into clips) equals the neck applied to the averaged pooled feature.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import nn

from ap3d_kernels.modules import APM, NonLocalBlock3D, TemporalBlock
from ap3d_kernels.validation import check_positive_int, check_video_input

from .inflate import ResNet3D, check_resnet
from .resnet import ResNet

__all__ = ["VideoResNet", "check_stages", "temporal_blocks", "apm_modules", "set_apm_backend"]

Placement = Mapping[int, Sequence[int]]  # stage (1..4 = layer1..layer4) -> residual-block indices


class VideoResNet(ResNet3D):
    """An inflated ResNet (temporal kernel 1, i.e. C2D) turned into a video network.

    Args:
        resnet2d: source of the weights (e.g. an ImageNet ``reid.models.resnet50``); not modified.
        num_classes: identities of the training set (size of ``classifier``).
        temporal_block: a ``TemporalBlock`` class (``I3D``, ``APP3DC``, ...) replacing ``conv2`` of
            the residual blocks in ``temporal_placement``; ``None`` for none.
        temporal_placement: ``{stage: [block indices]}``, stages 1..4 = layer1..layer4.
        nonlocal_placement: ``{stage: [block indices]}``: a ``nonlocal_block`` follows each.
        nonlocal_block: the non-local block class, built as ``nonlocal_block(channels)``
            (``NonLocalBlock3D``, or ``ContrastiveNonLocalBlock3D`` for CA-NL).
        block_options: keyword arguments of ``temporal_block.from_2d`` (``time_dim``, APM options).
        last_stride: spatial stride of layer4 (1 in AP3D and most ReID models).
    """

    def __init__(
        self,
        resnet2d: ResNet,
        num_classes: int,
        *,
        temporal_block: Optional[type] = None,
        temporal_placement: Optional[Placement] = None,
        nonlocal_placement: Optional[Placement] = None,
        block_options: Optional[dict] = None,
        last_stride: int = 1,
        nonlocal_block: type = NonLocalBlock3D,
    ):
        check_resnet(resnet2d)
        num_classes = check_positive_int("num_classes", num_classes)
        layers = [len(getattr(resnet2d, f"layer{s}")) for s in (1, 2, 3, 4)]
        temporal_placement = _normalise_placement("temporal_placement", temporal_placement, layers)
        nonlocal_placement = _normalise_placement("nonlocal_placement", nonlocal_placement, layers)
        if temporal_placement and temporal_block is None:
            raise ValueError("temporal_placement was given but temporal_block is None")
        if temporal_block is not None and not (isinstance(temporal_block, type) and issubclass(temporal_block, TemporalBlock)):
            raise TypeError(f"temporal_block must be a TemporalBlock subclass, got {temporal_block!r}")

        def conv2(stage, index, conv2d, stride):  # the temporal blocks, straight from the 2D weights
            if index in temporal_placement.get(stage, ()):
                return temporal_block.from_2d(conv2d, stride=stride, **(block_options or {}))
            return None

        # the C2D trunk (resnet2d inflated with temporal kernel 1) with the temporal blocks in place
        super().__init__(resnet2d, last_stride=last_stride, conv2=conv2)
        self.num_classes = num_classes
        self.temporal_placement = temporal_placement
        self.nonlocal_placement = nonlocal_placement

        for stage, indices in self.nonlocal_placement.items():
            name = f"layer{stage}"
            blocks = []
            for i, block in enumerate(getattr(self, name)):
                blocks.append(block)
                if i in indices:
                    channels = block.bn3.num_features if hasattr(block, "bn3") else block.bn2.num_features
                    blocks.append(nonlocal_block(channels))
            setattr(self, name, nn.Sequential(*blocks))

        d = self.feature_dim
        self.bn = nn.BatchNorm1d(d)  # the neck; its bias is learnable (protocol.md)
        self.classifier = nn.Linear(d, self.num_classes)
        self.reset_head()

    @torch.no_grad()
    def reset_head(self) -> None:
        """The release's head initialisation: neck ``N(1, 0.02)``/0, classifier ``N(0, 0.001)``/0."""
        self.bn.reset_running_stats()
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def pooled_features(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> per-frame spatially max-pooled features ``[B, T, D]`` (pre-neck)."""
        check_video_input(type(self).__name__, clips, channels=3, device=self.conv1.weight.device, name="clips")
        fmap = self.forward_features(clips)  # [B, D, T, h, w]
        if fmap.is_contiguous(memory_format=torch.channels_last_3d):
            # memory order B, T, h, w, D: reduce over the middle of a free [B, T, h*w, D] view (the
            # dim=(3, 4) reduction strides across D: 20x slower in inference, 2.7x fwd+bwd, here)
            return fmap.permute(0, 2, 3, 4, 1).flatten(2, 3).amax(2)
        return fmap.amax(dim=(3, 4)).transpose(1, 2)

    def frame_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame features before the neck, ``[B, T, D] -> [B, T, feature_dim]``: the pooled
        features themselves; a recurrent head (``reid.models.recurrent``) overrides this."""
        return frames

    def forward(self, clips: torch.Tensor):
        if self.training and isinstance(clips, torch.Tensor) and clips.dim() == 5 and clips.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__}: in train mode clips needs a batch of >= 2 (the BatchNorm1d neck uses batch "
                f"statistics), got shape {tuple(clips.shape)}; call model.eval() to embed single clips"
            )
        frames = self.frame_embeddings(self.pooled_features(clips))
        if self.training:
            features = self.bn(frames.mean(dim=1))
            return self.classifier(features), features
        B, T, D = frames.shape
        return self.bn(frames.reshape(B * T, D)).view(B, T, D)

    def extra_repr(self) -> str:
        block = None
        for m in self.modules():
            if isinstance(m, TemporalBlock):
                block = type(m).__name__
                break
        return (
            f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, temporal_block={block}, "
            f"temporal_placement={self.temporal_placement}, nonlocal_placement={self.nonlocal_placement}"
        )


def check_stages(name: str, stages) -> tuple[int, ...]:
    """Distinct ResNet stage numbers 1..4 (layer1..layer4): the one check of a stage number."""
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise TypeError(f"{name} must be a non-empty sequence of stage numbers 1..4, got {stages!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 4 for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"{name} must be distinct integers in 1..4 (layer1..layer4), got {list(stages)}")
    return tuple(stages)


def _normalise_placement(name: str, placement: Optional[Placement], layers: list) -> dict:
    """``{stage: sorted distinct indices}`` without empty stages, after checking every entry."""
    placement = dict(placement or {})
    if placement:
        check_stages(f"{name} keys (stages)", list(placement))
    for stage, indices in placement.items():
        n = layers[stage - 1]
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise TypeError(f"{name}[{stage}] must be a sequence of block indices, got {indices!r}")
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
        if bad:
            raise ValueError(f"{name}[{stage}]: layer{stage} has {n} blocks (indices 0..{n - 1}), got {list(indices)}")
    return {s: tuple(sorted(set(i))) for s, i in sorted(placement.items()) if i}


def temporal_blocks(model: nn.Module) -> list[TemporalBlock]:
    return [m for m in model.modules() if isinstance(m, TemporalBlock)]


def apm_modules(model: nn.Module) -> list[APM]:
    return [m for m in model.modules() if isinstance(m, APM)]


def set_apm_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every APM of ``model`` to ``backend`` (e.g. ``"reference"`` for debugging)."""
    for m in apm_modules(model):
        m.backend = backend
    return model
