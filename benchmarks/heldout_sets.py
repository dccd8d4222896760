"""Held-out data sets for checking the trainer's defaults on data they were not tuned on
(docs/recipe.md, section 6): each is written as an ImageFolder tree (train/<class>/*.png,
val/<class>/*.png) that `python python/train.py --dataset imagefolder --data-dir DIR` reads at its
native size.

    python benchmarks/heldout_sets.py --out /tmp/heldout            # all three
    python benchmarks/heldout_sets.py --out /tmp/heldout --only textures

- digits:   scikit-learn's handwritten digits (1797 real 8 x 8 grayscale scans, shipped inside
            the package: no download), upscaled to 32 px, 1297 train / 500 val, seeded split.
            Needs `pip install scikit-learn`.
- textures: 10 procedural texture classes at 32 px (stripes at two angles, checkerboard, dots,
            rings, cross-hatch, waves, blobs, grid, zigzag), each image in two random colors with
            random frequency, phase and orientation jitter and pixel noise: the signal fills the
            image, as in the issue's texture held-out set. 3000 train / 1000 val.
- objects32: the embedded objects generator at 32 px with seeds the trainer never uses: the same
            kind of data the defaults were tuned on (at 24 px), at the size an ImageFolder of it
            would be read at. Not independent of the tuning; it checks the size adaptation.
"""
import argparse
import math
import os

import torch
from PIL import Image


def _save(root, split, images, labels, names):
    for i, (img, y) in enumerate(zip(images, labels.tolist())):
        d = os.path.join(root, split, names[y])
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(d, f"{i:05d}.png"))


def digits(size=32, n_val=500, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_val], perm[n_val:]
    names = [str(k) for k in range(10)]
    return (x[tr], y[tr]), (x[te], y[te]), names


TEXTURES = ("stripes", "stripes-cross-angle", "checker", "dots", "rings", "hatch", "waves",
            "blobs", "grid", "zigzag")


def make_textures(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        f = (2.0 + 2.0 * float(rnd(1))) * math.pi  # 2-4 periods across the image
        th = float(rnd(1)) * 2 * math.pi / 12 - math.pi / 12  # +-15 degrees
        ph = float(rnd(1)) * 2 * math.pi
        u = math.cos(th) * gx + math.sin(th) * gy
        v = -math.sin(th) * gx + math.cos(th) * gy
        if c == 0:
            m = torch.sin(f * u + ph)
        elif c == 1:
            m = torch.sin(f * (u + v) / math.sqrt(2) + ph)
        elif c == 2:
            m = torch.sin(f * u + ph) * torch.sin(f * v + ph)
        elif c == 3:
            m = 0.6 - ((torch.sin(f * u + ph) * torch.sin(f * v)).abs() < 0.5).float() * 1.2 + \
                1.2 * ((torch.cos(f * u + ph) * torch.cos(f * v)).abs() > 0.8).float()
        elif c == 4:
            cx, cy = float(rnd(1)) - 0.5, float(rnd(1)) - 0.5
            m = torch.sin(f * torch.sqrt((gx - cx) ** 2 + (gy - cy) ** 2) + ph)
        elif c == 5:
            m = torch.maximum(torch.sin(f * (u + v) + ph), torch.sin(f * (u - v) + ph))
        elif c == 6:
            m = torch.sin(f * u + 2.0 * torch.sin(f * 0.5 * v) + ph)
        elif c == 7:
            blobs = torch.randn(1, 1, 6, 6, generator=g)
            m = torch.nn.functional.interpolate(blobs, size=(size, size), mode="bicubic",
                                                align_corners=False)[0, 0]
        elif c == 8:
            m = torch.maximum(torch.cos(f * u + ph), torch.cos(f * v + ph)) * 2 - 1
            m = (m > 0.6).float() * 2 - 1
        else:
            m = torch.sin(f * v + 2.5 * (2 * ((f * 0.5 * u / math.pi + ph) % 1.0 - 0.5)).abs() * 2)
        m = (m - m.mean()) / (m.std() + 1e-6)
        a, b = rnd(3), rnd(3)
        w = torch.sigmoid(2.0 * m)[None]
        img = a[:, None, None] * w + b[:, None, None] * (1 - w) + 0.04 * torch.randn(3, size, size, generator=g)
        out[i] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return out, labels


def textures(size=32, n_train=3000, n_val=1000, seed=0):
    return make_textures(n_train, size, seed * 2 + 101), make_textures(n_val, size, seed * 2 + 102), list(TEXTURES)


def objects32(size=32, n_train=3000, n_val=1000, seed=0):
    from simclr_ext.objects import OBJECT_NAMES, make_objects

    return (make_objects(n_train, size, seed * 2 + 1001), make_objects(n_val, size, seed * 2 + 1002),
            list(OBJECT_NAMES))


SETS = {"digits": digits, "textures": textures, "objects32": objects32}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="parent directory; each set goes to OUT/<name>")
    p.add_argument("--only", default=",".join(SETS), help=f"comma-separated, of {list(SETS)}")
    args = p.parse_args()
    for name in args.only.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}; expected one of {list(SETS)}")
        root = os.path.join(args.out, name)
        if os.path.isdir(root):
            raise SystemExit(f"{root} exists; remove it or choose another --out")
        (xtr, ytr), (xte, yte), names = SETS[name]()
        _save(root, "train", xtr, ytr, names)
        _save(root, "val", xte, yte, names)
        print(f"{name}: {len(ytr)} train / {len(yte)} val images, {len(names)} classes, "
              f"{xtr.shape[-1]} px -> {root}")


if __name__ == "__main__":
    main()
