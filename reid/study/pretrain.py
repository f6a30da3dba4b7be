"""The study's "ImageNet": a C2D network trained on a disjoint synthetic set, kept as a 2D ResNet.

The paper inflates an ImageNet-trained 2D ResNet into every network it compares. Here the
same role is played by the 2D backbone of a C2D re-ID run on a synthetic set drawn with another
seed (grid.PRETRAIN_DATA). ``c2d_to_torchvision_2d`` turns that checkpoint into a
torchvision-named 2D state dict, which ``reid.train --pretrained`` inflates like any ImageNet file.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

import torch

__all__ = ["c2d_to_torchvision_2d", "convert_checkpoint"]

# The video head's parameters (BN neck, classifier): not part of a torchvision ResNet.
_HEAD_PREFIXES = ("bn.", "classifier.")


def c2d_to_torchvision_2d(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A C2D video network's state dict -> the 2D ResNet's, with torchvision's names.

    C2D's convolutions are 1 x k x k 3D convs with the 2D layer names, so the conversion drops
    the head and squeezes the time axis. Anything else (a temporal block's weights) is refused:
    only a C2D network is a pure 2D network.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIXES):
            continue
        if value.dim() == 5:
            if value.shape[2] != 1:
                raise ValueError(f"state dict entry {key} has temporal extent {value.shape[2]} (shape "
                                 f"{tuple(value.shape)}): expected a C2D network, whose convolutions are 1xkxk")
            value = value.squeeze(2)
        out[key] = value.detach().clone().contiguous()
    if "conv1.weight" not in out:
        raise ValueError(f"not a ResNet state dict (no conv1.weight; keys start {sorted(out)[:4]})")
    return out


def convert_checkpoint(checkpoint: str, out_path: str) -> str:
    """Read a ``reid.train`` checkpoint of a C2D network, write the 2D backbone (atomically)."""
    from reid.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    arch = ckpt.get("config", {}).get("arch", "")
    if not str(arch).startswith("c2d"):
        raise ValueError(f"checkpoint {checkpoint} holds {arch!r}; the pretrained backbone must come from a c2d_* run")
    state = c2d_to_torchvision_2d(ckpt["model"])
    tmp = out_path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, out_path)
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reid.study.pretrain", allow_abbrev=False,
                                description="Convert a C2D reid.train checkpoint to a torchvision 2D ResNet state dict.")
    p.add_argument("checkpoint", help="checkpoint_last.pth or model_best.pth of a c2d_* run")
    p.add_argument("out", help="output .pth (torchvision names; loads with reid.train --pretrained)")
    args = p.parse_args(argv)
    from reid.engine.checkpoint import CheckpointError

    try:
        convert_checkpoint(args.checkpoint, args.out)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
