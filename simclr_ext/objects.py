"""The second embedded data set: procedural "objects", hard the way photos are.

`make_objects(n, image_size, seed)` draws n labeled images in memory (no files): the class is the
shape of one small object, several of them thin or outlined, placed anywhere among nuisances
that a contrastive learner can latch on to instead of the object: a strong background gradient
plus a low-frequency texture, line clutter crossing the image, a smaller distractor object of
another class, an occluding patch over part of the object, pixel noise. Compare
`data.make_shapes`, where a large filled shape fills most of the image.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECT_NAMES = ("circle-outline", "square-outline", "triangle-outline", "plus", "bar-pair",
                "disk", "triangle", "corner", "chevron", "bullseye")

_PALETTE = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.7, 0.25], [0.2, 0.3, 0.9], [0.95, 0.85, 0.2],
                         [0.6, 0.25, 0.75], [0.12, 0.12, 0.12], [0.92, 0.92, 0.92],
                         [0.2, 0.75, 0.8], [0.95, 0.55, 0.15], [0.55, 0.4, 0.25]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _seg(u: Tensor, v: Tensor, a, b) -> Tensor:
    """Distance from (u, v) to the segment a-b (points in the object's frame)."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = (((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy)).clamp(0, 1)
    return torch.sqrt((u - ax - t * dx) ** 2 + (v - ay - t * dy) ** 2)


def _polyline(u, v, pts, closed=False):
    segs = list(zip(pts[:-1], pts[1:])) + ([(pts[-1], pts[0])] if closed else [])
    d = _seg(u, v, *segs[0])
    for a, b in segs[1:]:
        d = torch.minimum(d, _seg(u, v, a, b))
    return d


_TRI = [(0.0, 0.95), (-0.85, -0.6), (0.85, -0.6)]


def _object_mask(cls: int, u: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Inside-mask of object `cls` in its own frame (it fits in |u|, |v| <= 1); t [B, 1, 1] is
    the half-thickness of strokes in the same units (thin shapes are about 1-1.5 px wide)."""
    r = torch.sqrt(u * u + v * v)
    if cls == 0:
        return (r - 0.85).abs() < t
    if cls == 1:
        return (torch.maximum(u.abs(), v.abs()) - 0.75).abs() < t
    if cls == 2:
        return _polyline(u, v, _TRI, closed=True) < t
    if cls == 3:
        return torch.minimum(_seg(u, v, (-0.9, 0.0), (0.9, 0.0)), _seg(u, v, (0.0, -0.9), (0.0, 0.9))) < t
    if cls == 4:
        return torch.minimum(_seg(u, v, (-0.45, -0.9), (-0.45, 0.9)), _seg(u, v, (0.45, -0.9), (0.45, 0.9))) < t
    if cls == 5:
        return r < 0.7
    if cls == 6:
        return (v > -0.6) & (v < 0.95 - 1.83 * u.abs())
    if cls == 7:
        return _polyline(u, v, [(-0.6, 0.9), (-0.6, -0.6), (0.8, -0.6)]) < t
    if cls == 8:
        return _polyline(u, v, [(-0.8, 0.7), (0.0, -0.5), (0.8, 0.7)]) < t
    if cls == 9:
        return (r < 0.3) | ((r - 0.85).abs() < t)
    raise ValueError(cls)


def _frame(gx, gy, cx, cy, theta, scale):
    """Pixel grid -> each image's object frame (rotation theta, half-size scale)."""
    dx = gx[None] - cx[:, None, None]
    dy = gy[None] - cy[:, None, None]
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = (c * dx + s * dy) / scale[:, None, None]
    v = -(-s * dx + c * dy) / scale[:, None, None]  # image rows grow downward; make "up" up
    return u, v


def _masks(labels, u, v, t, num_classes):
    mask = torch.zeros(u.shape, dtype=torch.bool)
    for k in range(num_classes):
        idx = (labels == k).nonzero().flatten()
        if idx.numel():
            mask[idx] = _object_mask(k, u[idx], v[idx], t[idx])
    return mask


def make_objects(n: int, image_size: int = 32, seed: int = 0, num_classes: int = 10,
                 chunk: int = 512) -> Tuple[Tensor, Tensor]:
    """n labeled images (uint8 [n, 3, S, S], int64 [n]), a pure function of (n, size, seed).

    Per image: background = palette color + a strong linear gradient + a low-frequency texture;
    0-2 thin clutter lines across the image; with probability 0.5 a distractor object of another
    class at 35-50% of the size; the object (the label) with a radius of 16-30% of the side,
    rotated +-30 degrees, anywhere in the image; with probability 0.3 an occluding patch over a
    corner of it; pixel noise.
    """
    if not 1 <= num_classes <= len(OBJECT_NAMES):
        raise ValueError(f"num_classes: objects has at most {len(OBJECT_NAMES)} classes, got {num_classes}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    ss = 2 * image_size  # 2x supersampling, then a 2x2 average: anti-aliased thin strokes
    axis = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    px = 2.0 / image_size  # one output pixel in image units (the image spans [-1, 1])
    npal = _PALETTE.shape[0]
    for lo in range(0, n, chunk):
        lab = labels[lo:lo + chunk]
        b = lab.numel()
        rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        # colors: background, object, distractor, each a distinct palette entry (+ jitter)
        pick = torch.stack([torch.randperm(npal, generator=g)[:4] for _ in range(b)])
        col = (_PALETTE[pick] + 0.08 * (rnd(b, 4, 3) * 2 - 1)).clamp(0, 1)  # [b, 4, 3]
        bg, fg, dcol, ocol = col[:, 0], col[:, 1], col[:, 2], col[:, 3]
        # too little contrast with the background: push the object to the dark or bright end
        low = ((fg - bg) @ _LUMA).abs() < 0.25
        fg = torch.where(low[:, None], torch.where((bg @ _LUMA > 0.5)[:, None], fg * 0.35, 0.65 + fg * 0.35), fg)
        # background: strong gradient + low-frequency texture (a random plaid of two sinusoids)
        gdir = rnd(b) * 2 * math.pi
        gamp = 0.15 + 0.25 * rnd(b)
        ramp = torch.cos(gdir)[:, None, None] * gx + torch.sin(gdir)[:, None, None] * gy
        freq = 1.5 + 3.0 * rnd(b, 2)
        phase = rnd(b, 2) * 2 * math.pi
        tdir = rnd(b) * math.pi
        tu = torch.cos(tdir)[:, None, None] * gx + torch.sin(tdir)[:, None, None] * gy
        tv = -torch.sin(tdir)[:, None, None] * gx + torch.cos(tdir)[:, None, None] * gy
        tex = (torch.sin(freq[:, 0, None, None] * math.pi * tu + phase[:, 0, None, None])
               * torch.sin(freq[:, 1, None, None] * math.pi * tv + phase[:, 1, None, None]))
        tamp = 0.1 * rnd(b)
        img = bg[:, :, None, None] + (gamp[:, None, None] * ramp + tamp[:, None, None] * tex)[:, None]
        # line clutter: 0-2 thin lines across the whole image, random colors
        nlines = torch.randint(0, 3, (b,), generator=g)
        for k in range(2):
            ang = rnd(b) * math.pi
            off = (rnd(b) * 2 - 1) * 0.8
            d = (torch.cos(ang)[:, None, None] * gx + torch.sin(ang)[:, None, None] * gy - off[:, None, None]).abs()
            on = (d < 0.5 * px * (0.8 + 0.6 * rnd(b))[:, None, None]) & (nlines > k)[:, None, None]
            lcol = rnd(b, 3)
            img = torch.where(on[:, None], lcol[:, :, None, None], img)
        # the object: radius 16-30% of the side, anywhere (mostly inside), rotated +-30 degrees
        scale = 0.32 + 0.28 * rnd(b)
        cx = (rnd(b) * 2 - 1) * (1 - scale)
        cy = (rnd(b) * 2 - 1) * (1 - scale)
        theta = (rnd(b) * 2 - 1) * math.radians(30)
        # distractor (p 0.5): another class, 35-50% of the size, on the other side of the image
        dlab = (lab + 1 + torch.randint(0, num_classes - 1, (b,), generator=g)) % num_classes if num_classes > 1 else lab
        dscale = scale * (0.35 + 0.15 * rnd(b))
        has_d = rnd(b) < 0.5
        dcx = (-torch.sign(cx) * rnd(b)) * (1 - dscale)
        dcy = (-torch.sign(cy) * rnd(b)) * (1 - dscale)
        dtheta = (rnd(b) * 2 - 1) * math.radians(30)
        # strokes 1.2-1.8 output pixels wide, whatever the object's size
        half_t = (0.5 * px * (1.2 + 0.6 * rnd(b)))
        du, dv = _frame(gx, gy, dcx, dcy, dtheta, dscale)
        dmask = _masks(dlab, du, dv, (half_t / dscale)[:, None, None], num_classes) & has_d[:, None, None]
        img = torch.where(dmask[:, None], dcol[:, :, None, None], img)
        u, v = _frame(gx, gy, cx, cy, theta, scale)
        mask = _masks(lab, u, v, (half_t / scale)[:, None, None], num_classes)
        shade = 1 + 0.15 * (rnd(b) * 2 - 1)[:, None, None] * (u.clamp(-1, 1))  # a little shading
        obj = (fg[:, :, None, None] * shade[:, None]).clamp(0, 1)
        img = torch.where(mask[:, None], obj, img)
        # occlusion: with p 0.3, a patch of another color covering a corner of the object
        occ = rnd(b) < 0.3
        ox = cx + torch.where(rnd(b) < 0.5, -1.0, 1.0) * scale * (0.5 + 0.5 * rnd(b))
        oy = cy + torch.where(rnd(b) < 0.5, -1.0, 1.0) * scale * (0.5 + 0.5 * rnd(b))
        ow = scale * (0.3 + 0.25 * rnd(b))
        patch = (((gx[None] - ox[:, None, None]).abs() < ow[:, None, None])
                 & ((gy[None] - oy[:, None, None]).abs() < ow[:, None, None]) & occ[:, None, None])
        img = torch.where(patch[:, None], ocol[:, :, None, None], img)
        img = F.avg_pool2d(img, 2)
        img = img + 0.04 * torch.randn(img.shape, generator=g)
        images[lo:lo + b] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return images, labels
