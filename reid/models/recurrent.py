"""``LSTMVideoResNet``: the CNN+LSTM baseline of the AP3D paper's Table 2.

The C2D network computes one feature per frame (spatial max pool of layer4, ``[B, T, 2048]``
on ResNet-50); an LSTM (``2048 -> 512`` by default) reads them in temporal order, and its
outputs ``h_1 .. h_T`` replace the frame features: the clip feature is their temporal mean
(the RNN baseline of Gao & Nevatia, "Revisiting temporal modeling for video-based person
ReID", 2018), then the BatchNorm neck and the classifier, as in every other model here.
ResNet-50 with the 2048 -> 512 LSTM has 28.76M parameters, Table 2's count.

Forward contract (the same as ``VideoResNet``'s)::

    model.train(); logits, features = model(clips)   # features [B, hidden] = BN(mean_t h_t)
    model.eval();  frame_features = model(clips)       # [B, T, hidden] = BN(h_t) for each frame

What eval returns, and why. The evaluator averages the per-frame features of every clip of a
tracklet, frame-weighted (clips of up to 32 frames). Eval returns ``BN(h_t)``: the LSTM runs over
the whole clip from a zero state and ``h_t`` is its output after frame ``t``. BatchNorm is affine
in eval, so the mean of a clip's per-frame features is exactly the training feature of that
clip (``BN(mean_t h_t)``), and the tracklet feature is the frame-weighted mean of its clips'
features, as for every other model. Two consequences to know:

- each clip restarts the LSTM (as the release's 3D models restart their temporal padding every
  32 frames), so no state crosses a clip boundary;
- the LSTM is trained on clips of ``seq_len`` frames (4 in the paper) and evaluated on clips of
  up to ``test_clip_len`` (32): the early outputs of a clip have seen few frames.

Returning only the last output (``h_T``) instead would make the evaluator's frame weighting
meaningless (one feature standing for T frames) and would not be the training feature.
"""
from __future__ import annotations

import torch
from torch import nn

from ap3d_kernels.validation import check_positive_int

from .resnet import ResNet
from .video_resnet import VideoResNet

__all__ = ["LSTMVideoResNet"]


class LSTMVideoResNet(VideoResNet):
    """C2D trunk, then a one-layer unidirectional LSTM over the per-frame features.

    Args:
        resnet2d, num_classes, last_stride: as ``VideoResNet`` (no temporal or non-local
            blocks: the LSTM is the temporal model).
        hidden_size: the LSTM's width, which is also ``feature_dim`` (512 in Table 2).
    """

    def __init__(self, resnet2d: ResNet, num_classes: int, *, hidden_size: int = 512, last_stride: int = 1):
        super().__init__(resnet2d, num_classes, last_stride=last_stride)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.backbone_dim = self.feature_dim  # the trunk's channels, the LSTM's input
        self.lstm = nn.LSTM(self.backbone_dim, self.hidden_size, batch_first=True)
        self.feature_dim = self.hidden_size
        # The neck and classifier act on the LSTM's outputs: rebuild them at its width.
        self.bn = nn.BatchNorm1d(self.feature_dim)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)
        self.reset_head()

    def frame_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, backbone_dim]`` -> the LSTM's outputs ``[B, T, hidden_size]`` (zero initial state)."""
        return self.lstm(frames)[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lstm={self.backbone_dim}->{self.hidden_size}"
