"""Clip-level spatial transforms: every random decision is taken once per clip, not per frame.

Flipping or erasing frames independently would itself create the temporal misalignment that
AP3D is meant to handle, so a clip shares one flip decision and one erased rectangle.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["ClipTransform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClipTransform:
    """Frames (PIL images or ``[H, W, 3]`` uint8 arrays) -> normalised FloatTensor [3, T, H, W].

    Resize with bicubic interpolation; with `train`, a horizontal flip with probability
    `flip_prob` for the whole clip and, if `random_erasing`, one rectangle (Zhong et al., AAAI
    2020: area 2-40 %, aspect 0.3-3.3, probability `erasing_prob`) erased in every frame. Erased
    pixels are set to 0 after normalisation, i.e. the dataset mean colour.
    """

    def __init__(self, height: int, width: int, *, train: bool, flip_prob: float = 0.5,
                 random_erasing: bool = False, erasing_prob: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int (pixels), got {v!r}")
        for name, v in (("flip_prob", flip_prob), ("erasing_prob", erasing_prob)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 values with std > 0, got mean={mean}, std={std}")
        self.height, self.width, self.train = height, width, train
        self.flip_prob, self.random_erasing, self.erasing_prob = flip_prob, random_erasing, erasing_prob
        # (pixel / 255 - mean) / std as one multiply-add per colour (the last axis of a frame)
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self._scale = 1.0 / (255.0 * std_t)
        self._offset = -mean_t / std_t

    def __call__(self, frames: Sequence[Union[Image.Image, np.ndarray, None]],
                 rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        if self.train and rng is None:
            raise ValueError("a training ClipTransform needs rng (a numpy Generator) for its random decisions")
        size = (self.width, self.height)
        arrays = []
        for img in frames:
            if img is None:  # an unreadable tracklet: a mean-coloured frame (0 after normalisation)
                arrays.append(None)
                continue
            if isinstance(img, np.ndarray):  # [H, W, 3] uint8 pixels (reid.data.images.read_frame_pixels)
                if img.shape[:2] == (self.height, self.width):
                    arrays.append(img)
                    continue
                img = Image.fromarray(img)
            if img.size != size:
                img = img.resize(size, Image.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.uint8))
        clip = np.zeros((len(frames), self.height, self.width, 3), dtype=np.uint8)
        blank = np.zeros(len(frames), dtype=bool)
        for i, a in enumerate(arrays):
            if a is None:
                blank[i] = True
            else:
                clip[i] = a
        pixels = torch.from_numpy(clip)  # [T, H, W, 3]
        if self.train and rng.random() < self.flip_prob:
            pixels = pixels.flip(2)
        # [3, T, H, W] in memory order T, H, W, 3: the loaders stack such clips into a channels_last_3d
        # batch without a layout copy (reid.data.loaders.collate_clips)
        x = torch.addcmul(self._offset, pixels, self._scale).permute(3, 0, 1, 2)
        if blank.any():
            x[:, torch.from_numpy(blank)] = 0.0
        if self.train and self.random_erasing and rng.random() < self.erasing_prob:
            self._erase(x, rng)
        return x

    def _erase(self, x: torch.Tensor, rng: np.random.Generator) -> None:
        h, w = self.height, self.width
        for _ in range(100):
            area = rng.uniform(0.02, 0.4) * h * w
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                x[:, :, y0:y0 + eh, x0:x0 + ew] = 0.0
                return
