"""Drawing: camera backgrounds, a walking pedestrian, occluders. Pillow only, no per-pixel Python.

Coordinates are in render pixels (the output size times `SUPERSAMPLE`); frames are drawn at that
resolution and reduced when the detection box is cropped, which anti-aliases the edges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .appearance import Appearance

__all__ = ["SUPERSAMPLE", "Camera", "make_camera", "draw_person", "draw_occluder", "Occluder"]

SUPERSAMPLE = 2


@dataclass
class Camera:
    camid: int
    background: Image.Image        # a wide panorama; tracklets scroll across it
    gain: np.ndarray               # per-channel colour cast (lighting temperature)
    brightness: float
    contrast: float
    noise: float                   # sensor noise sigma, in 0..255 units
    jpeg_quality: int
    p_back_view: float             # share of people walking away from this camera
    direction: int                 # dominant walking direction across the image (+1 right, -1 left)


def _jitter(rng, colour, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


SCENES = ("corridor", "street", "park")


def make_camera(camid: int, rng: np.random.Generator, width: int, height: int, kind: str) -> Camera:
    """A camera: a scene (corridor, street or park) with its own layout and lighting."""
    if kind not in SCENES:
        raise ValueError(f"scene kind must be one of {SCENES}, got {kind!r}")
    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.42, 0.58))
    if kind == "corridor":
        wall = _jitter(rng, (200, 195, 180), 40)
        floor = _jitter(rng, (150, 140, 130), 40)
    elif kind == "street":
        wall = _jitter(rng, (150, 110, 90), 50)
        floor = _jitter(rng, (120, 120, 125), 25)
    else:
        wall = _jitter(rng, (120, 170, 120), 40)
        floor = _jitter(rng, (170, 150, 110), 35)
    for y in range(0, horizon, 4):  # vertical gradient (light falls off towards the top)
        f = 0.75 + 0.25 * y / max(1, horizon)
        d.rectangle([0, y, width, y + 4], fill=tuple(int(c * f) for c in wall))
    d.rectangle([0, horizon, width, height], fill=floor)
    x = int(rng.integers(0, 40))
    while x < width:
        w = int(rng.integers(30, 110))
        item = rng.random()
        if kind == "corridor":
            if item < 0.35:  # door
                d.rectangle([x, horizon - int(height * 0.32), x + w // 2 + 20, horizon], fill=_jitter(rng, (110, 80, 60), 40))
            elif item < 0.65:  # poster
                top = horizon - int(height * rng.uniform(0.25, 0.4))
                d.rectangle([x, top, x + w // 2, top + int(height * 0.12)], fill=_jitter(rng, (128, 128, 128), 120))
            else:  # pillar
                d.rectangle([x, 0, x + 18, horizon], fill=tuple(int(c * 0.8) for c in wall))
        elif kind == "street":
            if item < 0.6:  # windows
                for wy in range(int(height * 0.05), horizon - 40, 60):
                    d.rectangle([x, wy, x + w // 2, wy + 34], fill=_jitter(rng, (90, 120, 150), 40))
            elif item < 0.8:  # shop front
                d.rectangle([x, horizon - int(height * 0.2), x + w, horizon], fill=_jitter(rng, (128, 128, 128), 120))
            else:  # lamp post
                d.rectangle([x, int(height * 0.1), x + 6, horizon + 10], fill=(50, 50, 55))
        else:
            if item < 0.55:  # tree
                trunk = int(rng.integers(8, 16))
                d.rectangle([x, horizon - 90, x + trunk, horizon + 5], fill=_jitter(rng, (90, 60, 35), 20))
                r = int(rng.integers(35, 70))
                d.ellipse([x + trunk // 2 - r, horizon - 90 - r, x + trunk // 2 + r, horizon - 90 + r // 2],
                          fill=_jitter(rng, (50, 110, 50), 40))
            elif item < 0.75:  # hedge
                d.rectangle([x, horizon - 40, x + w, horizon], fill=_jitter(rng, (60, 100, 55), 25))
        x += w + int(rng.integers(10, 80))
    # Floor structure: tile seams or paving lines, then grain over everything.
    line = tuple(int(c * 0.85) for c in floor)
    step = int(rng.integers(28, 60))
    for y in range(horizon + step // 2, height, step):
        d.line([0, y, width, y], fill=line, width=2)
    if kind != "park":
        for xl in range(0, width, step * 2):
            d.line([xl, horizon, xl, height], fill=line, width=2)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, 6.0, size=arr.shape[:2] + (1,)).astype(np.float32)
    background = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    temperature = rng.uniform(-0.15, 0.15)
    gain = np.array([1.0 + temperature, 1.0 + rng.uniform(-0.05, 0.05), 1.0 - temperature], np.float32)
    return Camera(camid=camid, background=background, gain=gain,
                  brightness=float(rng.uniform(0.7, 1.15)), contrast=float(rng.uniform(0.8, 1.1)),
                  noise=float(rng.uniform(1.5, 5.0)), jpeg_quality=int(rng.integers(80, 96)),
                  p_back_view=float(rng.uniform(0.1, 0.7)), direction=1 if rng.random() < 0.5 else -1)


def _limb(d: ImageDraw.ImageDraw, pts, width: float, fill) -> None:
    w = max(1, int(round(width)))
    d.line([tuple(p) for p in pts], fill=fill, width=w, joint="curve")
    r = width / 2
    for x, y in (pts[0], pts[-1]):
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)


class _Layers:
    """Paint textured body parts: draw a part's shape into a mask, paste its texture through it."""

    def __init__(self, region: Image.Image):
        self.region = region
        self.draw = ImageDraw.Draw(region)

    def textured(self, texture: Image.Image, shape_fn) -> None:
        mask = Image.new("L", self.region.size, 0)
        shape_fn(ImageDraw.Draw(mask))
        box = mask.getbbox()
        if box is not None:  # pasting only the part's bounding box is several times cheaper
            self.region.paste(texture.crop(box), box[:2], mask.crop(box))


def draw_person(region: Image.Image, app: Appearance, textures: dict, *, box_h: float, phase: float,
                amplitude: float, facing: int, back_view: bool) -> None:
    """Draw one frame of the walking person into `region` (person-centred, box_h tall).

    `amplitude` in [0, 1] scales the walking motion; 0 is a still, upright pose, so with no box
    error every frame of a tracklet shows the body in exactly the same place.
    """
    W, _ = region.size
    cx = W / 2.0
    ph = box_h * app.height
    feet = box_h * 0.975
    legs = ph * app.legs
    thigh = shin = legs / 2.0
    limb = ph * app.limb
    s, c = math.sin(phase), math.cos(phase)
    swing = amplitude * app.stride * s
    # Leg angles (front leg forward when s > 0) and knee flexion of the swinging leg.
    legs_pose = [(-swing, amplitude * 0.55 * max(0.0, -c)), (swing, amplitude * 0.55 * max(0.0, c))]
    reach = max(thigh * math.cos(a) + shin * math.cos(a - k) for a, k in legs_pose)
    hip_y = feet - reach            # the body sinks as the legs spread (keeps the feet on the ground)
    top = hip_y - ph * (1.0 - app.legs)
    sway = amplitude * 0.02 * ph * math.sin(2 * phase) * facing
    rh = ph * app.head / 2.0
    head_c = (cx + sway + facing * ph * 0.01 * amplitude, top + rh)
    sh_y = top + 2 * rh + ph * 0.015
    sw, hw = ph * app.shoulders, ph * app.hips
    L = _Layers(region)
    d = L.draw
    up, up_dark = textures["upper"], textures["upper_dark"]
    lo, lo_dark = textures["lower"], textures["lower_dark"]

    def leg_points(hx, angle, knee):
        k = (hx + facing * thigh * math.sin(angle), hip_y + thigh * math.cos(angle))
        f = (k[0] + facing * shin * math.sin(angle - knee), k[1] + shin * math.cos(angle - knee))
        return [(hx, hip_y), k, f]

    def arm_points(sx, angle):
        elbow_bend = 0.15 + amplitude * 0.35 * max(0.0, math.sin(angle * 4))
        upper, fore = ph * 0.19, ph * 0.17
        e = (sx + facing * upper * math.sin(angle) * 0.6, sh_y + limb * 0.4 + upper * math.cos(angle))
        h = (e[0] + facing * fore * math.sin(angle + elbow_bend) * 0.6, e[1] + fore * math.cos(angle + elbow_bend))
        return [(sx, sh_y + limb * 0.4), e, h]

    back_x, front_x = cx - facing * hw * 0.45, cx + facing * hw * 0.45
    arm_swing = amplitude * app.stride * 0.9 * s
    back_arm = arm_points(cx - facing * (sw - limb * 0.3), arm_swing)
    front_arm = arm_points(cx + facing * (sw - limb * 0.3), -arm_swing)
    back_leg = leg_points(back_x, *legs_pose[0])
    front_leg = leg_points(front_x, *legs_pose[1])

    def draw_leg(pts, dark):
        tex = lo_dark if dark else lo
        if app.lower_kind == "trousers":
            L.textured(tex, lambda m: _limb(m, pts, limb * 1.15, 255))
        else:
            _limb(d, pts, limb * 0.95, app.skin)
            if app.lower_kind == "shorts":
                k = pts[1]
                mid = (pts[0][0] + (k[0] - pts[0][0]) * 0.6, pts[0][1] + (k[1] - pts[0][1]) * 0.6)
                L.textured(tex, lambda m: _limb(m, [pts[0], mid], limb * 1.25, 255))
        fx, fy = pts[-1]
        d.ellipse([fx - limb * 0.7 + facing * limb * 0.35, fy - limb * 0.45,
                   fx + limb * 0.7 + facing * limb * 0.35, fy + limb * 0.35], fill=app.shoes)

    def draw_arm(pts, dark):
        tex = up_dark if dark else up
        if app.sleeves == "long":
            L.textured(tex, lambda m: _limb(m, pts, limb * 0.9, 255))
        else:
            _limb(d, pts[1:], limb * 0.75, app.skin)
            L.textured(tex, lambda m: _limb(m, pts[:2], limb * 0.95, 255))
        hx, hy = pts[-1]
        r = limb * 0.5
        d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=app.skin)

    # Back layer: long hair behind the body, backpack bulge, far arm, far leg.
    if app.hair_style == "long" and not back_view:
        d.rectangle([head_c[0] - rh * 1.05, head_c[1], head_c[0] + rh * 1.05, sh_y + ph * 0.07], fill=app.hair)
    if app.accessory == "backpack" and not back_view:
        bx = cx - facing * (sw + limb * 0.2)
        d.rounded_rectangle([min(bx, cx - facing * sw * 0.6), sh_y + ph * 0.02,
                             max(bx, cx - facing * sw * 0.6), sh_y + ph * 0.25], radius=limb * 0.4,
                            fill=app.accessory_colour)
    draw_arm(back_arm, True)
    draw_leg(back_leg, True)
    draw_leg(front_leg, False)
    # Pelvis / skirt and torso.
    if app.lower_kind == "skirt":
        L.textured(lo, lambda m: m.polygon([(cx - hw, hip_y - ph * 0.05), (cx + hw, hip_y - ph * 0.05),
                                            (cx + hw * 1.7, hip_y + legs * 0.45),
                                            (cx - hw * 1.7, hip_y + legs * 0.45)], fill=255))
    else:
        L.textured(lo, lambda m: m.rectangle([cx - hw, hip_y - ph * 0.05, cx + hw, hip_y + limb * 0.6], fill=255))

    def torso(m):
        m.polygon([(cx - sw, sh_y), (cx + sw, sh_y), (cx + hw * 1.05, hip_y - ph * 0.03),
                   (cx - hw * 1.05, hip_y - ph * 0.03)], fill=255)
        r = limb * 0.6
        for x in (cx - sw + r * 0.7, cx + sw - r * 0.7):
            m.ellipse([x - r, sh_y - r * 0.3, x + r, sh_y + r * 1.7], fill=255)

    L.textured(up, torso)
    if app.belt is not None:
        d.rectangle([cx - hw * 1.05, hip_y - ph * 0.045, cx + hw * 1.05, hip_y - ph * 0.03], fill=app.belt)
    if app.accessory == "backpack":
        if back_view:
            d.rounded_rectangle([cx - sw * 0.8, sh_y + ph * 0.02, cx + sw * 0.8, sh_y + ph * 0.27],
                                radius=limb * 0.5, fill=app.accessory_colour)
        else:
            for side in (-1, 1):
                d.line([(cx + side * sw * 0.7, sh_y), (cx + side * sw * 0.6, sh_y + ph * 0.2)],
                       fill=app.accessory_colour, width=max(1, int(limb * 0.35)))
    elif app.accessory == "shoulder_bag":
        d.line([(cx - facing * sw * 0.7, sh_y), (cx + facing * hw * 1.3, hip_y - ph * 0.02)],
               fill=app.accessory_colour, width=max(1, int(limb * 0.3)))
        bx = cx + facing * hw * 1.3
        d.rectangle([bx - ph * 0.05, hip_y - ph * 0.05, bx + ph * 0.05, hip_y + ph * 0.04],
                    fill=app.accessory_colour)
    draw_arm(front_arm, False)
    if app.accessory == "handbag":
        hx, hy = front_arm[-1]
        d.rectangle([hx - ph * 0.045, hy + limb * 0.2, hx + ph * 0.045, hy + ph * 0.09], fill=app.accessory_colour)
    # Neck, scarf, head, hair.
    d.rectangle([head_c[0] - rh * 0.35, head_c[1] + rh * 0.5, head_c[0] + rh * 0.35, sh_y + 2], fill=app.skin)
    if app.scarf is not None:
        d.rectangle([cx - sw * 0.55, sh_y - ph * 0.015, cx + sw * 0.55, sh_y + ph * 0.035], fill=app.scarf)
    hx, hy = head_c
    d.ellipse([hx - rh, hy - rh, hx + rh, hy + rh], fill=app.skin)
    hair = app.hair_style
    if back_view and hair not in ("bald", "cap", "beanie"):
        d.ellipse([hx - rh * 1.05, hy - rh * 1.08, hx + rh * 1.05, hy + rh * 0.95], fill=app.hair)
        if hair == "long":
            d.rectangle([hx - rh * 1.05, hy, hx + rh * 1.05, sh_y + ph * 0.07], fill=app.hair)
    elif hair in ("short", "long", "ponytail"):
        d.chord([hx - rh * 1.08, hy - rh * 1.12, hx + rh * 1.08, hy + rh * 0.9], 180, 360, fill=app.hair)
        if hair == "ponytail":
            px = hx - facing * rh * 1.1
            d.ellipse([px - rh * 0.35, hy - rh * 0.3, px + rh * 0.35, hy + rh * 0.7], fill=app.hair)
    elif hair == "cap":
        d.chord([hx - rh * 1.08, hy - rh * 1.15, hx + rh * 1.08, hy + rh * 0.7], 180, 360, fill=app.hat)
        d.rectangle([min(hx, hx + facing * rh * 1.5), hy - rh * 0.35, max(hx, hx + facing * rh * 1.5),
                     hy - rh * 0.15], fill=app.hat)
    elif hair == "beanie":
        d.chord([hx - rh * 1.1, hy - rh * 1.3, hx + rh * 1.1, hy + rh * 0.35], 180, 360, fill=app.hat)
    if not back_view:
        ey = hy - rh * 0.05
        for ex in (hx - rh * 0.35 + facing * rh * 0.15, hx + rh * 0.35 + facing * rh * 0.15):
            d.ellipse([ex - rh * 0.1, ey - rh * 0.1, ex + rh * 0.1, ey + rh * 0.1], fill=(40, 30, 30))


@dataclass
class Occluder:
    """Something between the camera and the person for part of a tracklet (scene coordinates)."""

    kind: str            # "pole" | "low" | "passer"
    x: float             # scene x of the occluder centre at frame 0
    velocity: float      # scene pixels per frame (0 for static objects)
    width: float
    height: float        # from the ground up ("low", "passer") or full height ("pole")
    colour: tuple[int, int, int]


def draw_occluder(canvas: Image.Image, occ: Occluder, frame: int, scene_left: float, ground_y: float) -> None:
    d = ImageDraw.Draw(canvas)
    x = occ.x + occ.velocity * frame - scene_left
    if occ.kind == "pole":
        d.rectangle([x - occ.width / 2, 0, x + occ.width / 2, canvas.size[1]], fill=occ.colour)
        d.rectangle([x - occ.width / 2, 0, x - occ.width / 4, canvas.size[1]],
                    fill=tuple(min(255, int(v * 1.25)) for v in occ.colour))  # a highlight edge
    elif occ.kind == "low":
        d.rounded_rectangle([x - occ.width / 2, ground_y - occ.height, x + occ.width / 2, canvas.size[1]],
                            radius=occ.width * 0.05, fill=occ.colour)
    else:  # another pedestrian passing in front, closer to the camera (so larger and lower)
        top = ground_y + occ.height * 0.08 - occ.height
        d.ellipse([x - occ.width * 0.2, top, x + occ.width * 0.2, top + occ.width * 0.4], fill=(180, 140, 110))
        d.rounded_rectangle([x - occ.width / 2, top + occ.width * 0.38, x + occ.width / 2, canvas.size[1]],
                            radius=occ.width * 0.2, fill=occ.colour)
