"""Identity appearance: clothing colours and textures per body part, hair, accessories, build.

Everything an identity looks like is drawn from one RNG seeded by (seed, pid), so an identity
looks the same in every camera and every tracklet, while two identities differ in several
independent attributes (about 10^8 combinations before colours), as in real pedestrian data.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Garment", "Appearance", "sample_appearance", "garment_texture", "PALETTE"]

PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "dots", "two_tone", "logo")
LOWER_PATTERNS = ("solid", "solid", "solid", "jeans", "hstripes", "checks")
HAIR_STYLES = ("short", "short", "long", "ponytail", "bald", "cap", "beanie")
ACCESSORIES = ("none", "none", "backpack", "shoulder_bag", "handbag")
SKIN_TONES = ((255, 219, 180), (241, 194, 150), (224, 172, 130), (198, 134, 96), (141, 85, 54), (96, 60, 40))
HAIR_COLOURS = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (180, 140, 80), (200, 190, 170), (120, 30, 20))


# The `palette` option's colours, in order: palette=K draws every colour (clothes, hat, shoes,
# bag, scarf, belt) from the first K, so many identities share their clothing colours, as
# crowds in dark coats or team shirts do. Ordered from the commonest real clothing colours.
PALETTE = ((25, 25, 28), (235, 235, 232), (120, 120, 125), (40, 55, 120), (170, 30, 35), (60, 110, 60),
           (200, 180, 140), (110, 70, 40), (220, 200, 40), (90, 140, 200), (210, 110, 160), (230, 120, 30))


def _colour(rng: np.random.Generator, palette: tuple = ()) -> tuple[int, int, int]:
    """A clothing colour: a third neutral (black, white, greys), the rest saturated hues; with a
    palette, one of its colours."""
    if palette:
        return tuple(palette[int(rng.integers(len(palette)))])
    if rng.random() < 0.33:
        v = float(rng.choice([0.08, 0.2, 0.4, 0.6, 0.85, 0.97]))
        h, s = float(rng.random()), float(rng.uniform(0.0, 0.12))
    else:
        h, s, v = float(rng.random()), float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.35, 0.95))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _distinct(rng: np.random.Generator, other: tuple[int, int, int], palette: tuple = ()) -> tuple[int, int, int]:
    if palette:  # another palette colour (any one if `other` is not in the palette, e.g. jeans blue)
        if len(palette) == 1 or other not in palette:
            return tuple(palette[int(rng.integers(len(palette)))])
        return tuple(palette[(palette.index(other) + 1 + int(rng.integers(len(palette) - 1))) % len(palette)])
    for _ in range(20):
        c = _colour(rng)
        if sum(abs(a - b) for a, b in zip(c, other)) > 150:
            return c
    return tuple(255 - v for v in other)


@dataclass(frozen=True)
class Garment:
    c1: tuple[int, int, int]
    c2: tuple[int, int, int]
    pattern: str
    period: int          # stripe / check / dot period in render pixels


@dataclass(frozen=True)
class Appearance:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    hat: tuple[int, int, int]
    upper: Garment
    sleeves: str                 # "long" | "short"
    lower_kind: str              # "trousers" | "shorts" | "skirt"
    lower: Garment
    shoes: tuple[int, int, int]
    accessory: str
    accessory_colour: tuple[int, int, int]
    scarf: Optional[tuple[int, int, int]]
    belt: Optional[tuple[int, int, int]]
    height: float                # fraction of the box height the person fills
    head: float                  # head diameter / body height
    legs: float                  # leg length / body height
    shoulders: float             # shoulder half-width / body height
    hips: float                  # hip half-width / body height
    limb: float                  # limb thickness / body height
    cadence: float               # frames per walking cycle
    stride: float                # leg swing amplitude (radians) at full pose amplitude


def sample_appearance(rng: np.random.Generator, palette: int = 0) -> Appearance:
    """One identity's look. palette=0: continuous colours (the default); K > 0: colours from
    PALETTE[:K] only; patterns, hair, build, bags etc. keep their distributions. palette=0 draws
    exactly the default set's identities."""
    if not 0 <= palette <= len(PALETTE):
        raise ValueError(f"palette must be in [0, {len(PALETTE)}], got {palette!r}")
    pal = PALETTE[:palette]
    colour = lambda: _colour(rng, pal)  # noqa: E731
    upper_c1 = colour()
    lower_c1 = colour()
    lower_pattern = str(rng.choice(LOWER_PATTERNS))
    if lower_pattern == "jeans":
        lower_c1 = (int(rng.integers(30, 80)), int(rng.integers(50, 100)), int(rng.integers(110, 170)))
    return Appearance(
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        hair=HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))],
        hair_style=str(rng.choice(HAIR_STYLES)),
        hat=colour(),
        upper=Garment(upper_c1, _distinct(rng, upper_c1, pal), str(rng.choice(PATTERNS)), int(rng.integers(8, 20))),
        sleeves="long" if rng.random() < 0.6 else "short",
        lower_kind=str(rng.choice(["trousers", "trousers", "trousers", "shorts", "skirt"])),
        lower=Garment(lower_c1, _distinct(rng, lower_c1, pal), lower_pattern, int(rng.integers(8, 18))),
        shoes=colour() if rng.random() < 0.5 else (int(rng.integers(10, 60)),) * 3,
        accessory=str(rng.choice(ACCESSORIES)),
        accessory_colour=colour(),
        scarf=colour() if rng.random() < 0.15 else None,
        belt=colour() if rng.random() < 0.25 else None,
        height=float(rng.uniform(0.90, 0.96)),
        head=float(rng.uniform(0.125, 0.15)),
        legs=float(rng.uniform(0.45, 0.51)),
        shoulders=float(rng.uniform(0.10, 0.14)),
        hips=float(rng.uniform(0.075, 0.105)),
        limb=float(rng.uniform(0.045, 0.06)),
        cadence=float(rng.uniform(9.0, 14.0)),
        stride=float(rng.uniform(0.32, 0.48)),
    )


def garment_texture(g: Garment, width: int, height: int, split_y: int, chest: tuple[int, int],
                    rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 tile of the garment's pattern in the person's own coordinates.

    Anchoring the texture to the body (not the scene) keeps stripes and logos on the same body
    part from frame to frame, as real clothing does. `split_y` is where a two-tone garment
    changes colour; `chest` is the (x, y) centre of a logo.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    p = max(4, g.period)
    if g.pattern == "hstripes":
        sel = (yy // (p // 2)) % 2 == 1
    elif g.pattern == "vstripes":
        sel = (xx // (p // 2)) % 2 == 1
    elif g.pattern == "checks":
        sel = ((yy // p) + (xx // p)) % 2 == 1
    elif g.pattern == "dots":
        sel = ((yy % p) - p / 2) ** 2 + ((xx % p) - p / 2) ** 2 < (p / 4) ** 2
    elif g.pattern == "two_tone":
        sel = yy >= split_y
    elif g.pattern == "logo":
        cx, cy = chest
        sel = (np.abs(xx - cx) < p * 0.9) & (np.abs(yy - cy) < p * 0.7)
    else:  # solid, jeans (plain colour; jeans get a coarser grain below)
        sel = np.zeros((height, width), dtype=bool)
    tex = np.where(sel[..., None], np.array(g.c2, np.float32), np.array(g.c1, np.float32))
    # Fabric grain: fixed per identity, so it is appearance, not noise.
    grain = 10.0 if g.pattern == "jeans" else 5.0
    tex += rng.normal(0.0, grain, size=(height, width, 1)).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.uint8)
