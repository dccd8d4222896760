"""Writes docs/color_distortion_grid.png: procedural images (left column) and SimCLR color
distortions of each (fused kernel, strength 1, p = 0.8, p_gray = 0.2, fixed seed). No downloads.

Run from the repository root: python benchmarks/color_grid.py
"""
import math

import harness  # first: puts an in-place build ahead of an installed simclr_ext

import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

import simclr_ext  # noqa: E402

SIZE = 96
VARIANTS = 6


def hsv_to_rgb(h, s, v):
    """h, s, v in [0, 1] -> [3, ...] float RGB (the standard formula, for drawing only)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def procedural_images(size=SIZE):
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sqrt(x**2 + y**2)
    angle = (torch.atan2(y, x) / (2 * math.pi)) % 1.0
    wheel = hsv_to_rgb(angle, r.clamp(0, 1), torch.where(r <= 1, 1.0, 0.15))
    # sunset: sky gradient, a sun, a dark-green hill
    sky = torch.stack([0.9 - 0.3 * y, 0.45 - 0.35 * y, 0.35 + 0.45 * y]).clamp(0, 1)
    sun = ((x - 0.35) ** 2 + (y + 0.25) ** 2) < 0.09
    hill = y > 0.45 + 0.2 * torch.cos(3 * x)
    sunset = torch.where(sun, torch.tensor([1.0, 0.85, 0.3]).view(3, 1, 1), sky)
    sunset = torch.where(hill, torch.tensor([0.1, 0.4, 0.15]).view(3, 1, 1), sunset)
    # fruit bowl: colored discs on a wooden table
    table = torch.stack([0.55 + 0.1 * torch.sin(20 * y), 0.35 + 0.05 * torch.sin(20 * y),
                         0.2 + 0 * y])
    fruit = table.clone()
    for cx, cy, rad, col in [(-0.4, -0.2, 0.35, (0.9, 0.1, 0.1)), (0.3, -0.3, 0.3, (1.0, 0.6, 0.0)),
                             (0.0, 0.35, 0.35, (0.5, 0.8, 0.1)), (0.55, 0.4, 0.25, (0.4, 0.1, 0.6))]:
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < rad**2
        shade = (1.2 - 0.6 * (((x - cx + 0.1) ** 2 + (y - cy + 0.1) ** 2) / rad**2)).clamp(0.4, 1.1)
        fruit = torch.where(disc, (torch.tensor(col).view(3, 1, 1) * shade).clamp(0, 1), fruit)
    # color bars over a brightness ramp
    bars = hsv_to_rgb(torch.floor((x + 1) * 4) / 8, torch.ones_like(x), (1 - y) / 2)
    imgs = torch.stack([wheel, sunset, fruit, bars]).clamp(0, 1)
    return (imgs * 255).round().to(torch.uint8)


def main():
    images = procedural_images()
    gen = torch.Generator().manual_seed(2020)
    distort = simclr_ext.ColorDistortion(strength=1.0, p=0.8, p_gray=0.2, generator=gen)
    columns = [images.float() / 255] + [distort(images) for _ in range(VARIANTS)]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row = one image and its distortions
    grid = make_grid(tiles, nrow=VARIANTS + 1, padding=4, pad_value=1.0)
    out = harness.ROOT / "docs" / "color_distortion_grid.png"
    out.parent.mkdir(exist_ok=True)
    save_image(grid, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
