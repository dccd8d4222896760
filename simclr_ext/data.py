"""Data for SimCLR: the embedded procedural shapes data set (no files, no download), ImageFolder
directories, CIFAR-10/100 and STL-10 from a local directory; the trainer's batches of decoded
uint8 images (`collate_images`: one tensor when the data set has one size, a list otherwise),
whose two views per image simclr_ext.SimCLRAugment makes on the training device, seeded per
step (`view_seed`), or, with --decode-device cuda, an ImageFolder's JPEG bytes
(`EncodedFolderSource`) decoded on the device in one batched call (`DeviceJpegDecoder`); a
resumable distributed sampler. The older split, crop + flip on the loader
(`TwoViews`, `OneView`: fine-tuning uses it) and color + blur on the device (`DeviceAugment`),
is kept for fine-tuning and as the trainer benchmark's baseline.

Every random choice is a pure function of (seed, epoch, step or sample index, rank), so a view
does not depend on worker count or on where a resumed run restarts.
"""
import math
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

DATASETS = ("shapes", "objects", "imagefolder", "cifar10", "cifar100", "stl10")
# the embedded procedural sets, generated in memory from a seed (no files, no download)
EMBEDDED = ("shapes", "objects")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data set that cannot be used as asked (missing or malformed directory, bad option)."""


# ------------------------------------------------------------------------------------------
# The embedded data set: procedural shapes
# ------------------------------------------------------------------------------------------
SHAPE_NAMES = ("disk", "square", "triangle", "ring", "plus", "diamond", "frame", "half-disk",
               "two-dots", "tee")


def _shape_mask(cls: int, u: Tensor, v: Tensor) -> Tensor:
    """Inside-mask of shape `cls` in its own frame (it fits in |u|, |v| <= 1)."""
    r = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    m = torch.maximum(au, av)
    if cls == 0:
        return r < 0.95
    if cls == 1:
        return m < 0.8
    if cls == 2:  # apex up at v = 0.9, base at v = -0.65
        return (v > -0.65) & (v < 0.9 - 1.732 * au)
    if cls == 3:
        return (r < 0.95) & (r > 0.55)
    if cls == 4:
        return ((au < 0.3) & (av < 0.95)) | ((av < 0.3) & (au < 0.95))
    if cls == 5:
        return au + av < 1.0
    if cls == 6:
        return (m < 0.9) & (m > 0.55)
    if cls == 7:
        return (r < 0.95) & (v < 0.15)
    if cls == 8:
        return ((u - 0.5) ** 2 + v * v < 0.16) | ((u + 0.5) ** 2 + v * v < 0.16)
    if cls == 9:
        return ((au < 0.95) & (v > 0.45) & (v < 0.95)) | ((au < 0.25) & (av < 0.95))
    raise ValueError(cls)


_PALETTE = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.7, 0.25], [0.2, 0.3, 0.9], [0.95, 0.85, 0.2],
                         [0.6, 0.25, 0.75], [0.15, 0.15, 0.15], [0.9, 0.9, 0.9], [0.2, 0.75, 0.8]])


def make_shapes(n: int, image_size: int = 32, seed: int = 0, num_classes: int = 10,
                chunk: int = 1024) -> Tuple[Tensor, Tensor]:
    """n labeled images (uint8 [n, 3, S, S], int64 [n]), a pure function of (n, size, seed).

    The class is the shape; its color and the background's (palette colors + jitter), position,
    scale, rotation, a background gradient, a clutter blob and pixel noise are nuisances drawn
    per image.
    """
    if not 1 <= num_classes <= len(SHAPE_NAMES):
        raise DataError(f"shapes has at most {len(SHAPE_NAMES)} classes, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    ss = 2 * image_size  # 2x supersampling, then a 2x2 average: anti-aliased edges
    axis = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    for lo in range(0, n, chunk):
        lab = labels[lo:lo + chunk]
        b = lab.numel()
        rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        scale = 0.45 + 0.35 * rnd(b)                     # shape half-size, in half-image units
        cx = (rnd(b) * 2 - 1) * (1 - scale) * 0.9         # keep most of the shape inside
        cy = (rnd(b) * 2 - 1) * (1 - scale) * 0.9
        theta = (rnd(b) * 2 - 1) * math.radians(30)
        # colors from a small palette (+ jitter): many images share a color pair, so color
        # alone cannot tell an image from the others in a batch; shape has to
        pal = _PALETTE
        pick = torch.randint(0, pal.shape[0], (b, 2), generator=g)
        pick[:, 1] = (pick[:, 0] + 1 + torch.randint(0, pal.shape[0] - 1, (b,), generator=g)) % pal.shape[0]
        bg = (pal[pick[:, 0]] + 0.08 * (rnd(b, 3) * 2 - 1)).clamp(0, 1)
        fg = (pal[pick[:, 1]] + 0.08 * (rnd(b, 3) * 2 - 1)).clamp(0, 1)
        luma = torch.tensor([0.299, 0.587, 0.114])
        low_contrast = ((fg - bg) @ luma).abs() < 0.2
        # too little contrast: push the shape to the dark or bright end, away from the background
        fg = torch.where(low_contrast[:, None],
                         torch.where((bg @ luma > 0.5)[:, None], fg * 0.4, 0.6 + fg * 0.4), fg)
        grad_dir = rnd(b) * 2 * math.pi
        grad_amp = 0.15 * rnd(b)
        blob_c = rnd(b, 2) * 2 - 1
        blob_r = 0.1 + 0.15 * rnd(b)
        blob_col = rnd(b, 3)
        dx = gx[None] - cx[:, None, None]
        dy = gy[None] - cy[:, None, None]
        c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        u = (c * dx + s * dy) / scale[:, None, None]
        v = (-s * dx + c * dy) / scale[:, None, None]
        v = -v  # image rows grow downward; make "up" up
        mask = torch.zeros(b, ss, ss, dtype=torch.bool)
        for k in range(num_classes):
            idx = (lab == k).nonzero().flatten()
            if idx.numel():
                mask[idx] = _shape_mask(k, u[idx], v[idx])
        ramp = (torch.cos(grad_dir)[:, None, None] * gx + torch.sin(grad_dir)[:, None, None] * gy)
        img = bg[:, :, None, None] + (grad_amp[:, None, None] * ramp)[:, None]
        blob = ((gx[None] - blob_c[:, 0, None, None]) ** 2 + (gy[None] - blob_c[:, 1, None, None]) ** 2
                < blob_r[:, None, None] ** 2)
        img = torch.where(blob[:, None], blob_col[:, :, None, None], img)
        img = torch.where(mask[:, None], fg[:, :, None, None].expand_as(img), img)
        img = F.avg_pool2d(img, 2)
        img = img + 0.04 * torch.randn(img.shape, generator=g)
        images[lo:lo + b] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return images, labels


# ------------------------------------------------------------------------------------------
# Image sources: index -> (uint8 [3, H, W], label)
# ------------------------------------------------------------------------------------------
class TensorSource(Dataset):
    """Images held in memory as one uint8 tensor [N, 3, H, W] (or [N, H, W, 3]) with labels."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int):
        if images.dim() == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.num_classes = num_classes

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class FolderSource(Dataset):
    """Files of an ImageFolder-layout directory (root/<class>/<image>), decoded on access.

    A file that cannot be decoded (empty, truncated, corrupt) is a DataError naming it; with
    skip_bad, the next readable file of the list (with its own label) stands in for it, a
    deterministic choice, so exact resume still holds, and its path is appended to bad_log (one
    line per encounter, from any worker or rank: count the distinct paths, bad_image_count)."""

    def __init__(self, samples, classes, skip_bad: bool = False, bad_log: Optional[str] = None):
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.labels = torch.tensor([t for _, t in samples], dtype=torch.int64)
        self.skip_bad, self.bad_log = skip_bad, bad_log
        self._bad = set()  # indices this process already found unreadable

    def __len__(self):
        return len(self.samples)

    @staticmethod
    def _decode(path):
        from PIL import Image
        import torchvision.transforms.v2.functional as TF

        with Image.open(path) as im:
            return TF.pil_to_tensor(im.convert("RGB"))

    def __getitem__(self, i):
        from PIL import Image

        n = len(self.samples)
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            path, target = self.samples[j]
            try:
                return self._decode(path), target
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                if not self.skip_bad:
                    raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc} "
                                    f"(--skip-bad-images skips unreadable files)") from exc
                self._bad.add(j)
                if self.bad_log is not None:
                    with open(self.bad_log, "a") as f:  # one short append: whole lines
                        f.write(f"{path}\t{type(exc).__name__}: {exc}\n")
        raise DataError(f"none of the {n} images of this split can be read")


def bad_image_count(bad_log: str) -> int:
    """Distinct files recorded in a bad-image log (0 when there is none)."""
    if not os.path.exists(bad_log):
        return 0
    with open(bad_log) as f:
        return len({line.split("\t", 1)[0] for line in f if line.strip()})


def _scan_folder(root: str):
    if not os.path.isdir(root):
        raise DataError(f"data directory {root} does not exist (or is not a directory)")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    samples = []
    for ci, cname in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, cname))):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), ci))
    if not classes or not samples:
        raise DataError(
            f"data directory {root} has no class sub-directories with images; expected the "
            f"ImageFolder layout {root}/<class>/<image>.jpg"
        )
    return samples, classes


def _split_indices(n: int, fraction: float, seed: int):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_val = max(1, int(round(n * fraction)))
    return perm[n_val:].sort().values.tolist(), perm[:n_val].sort().values.tolist()


def load_sources(name: str, root: Optional[str] = None, image_size: int = 32, seed: int = 0,
                 train_size: int = 6000, test_size: int = 2000, val_fraction: float = 0.1,
                 num_classes: int = 10, skip_bad_images: bool = False,
                 bad_log: Optional[str] = None):
    """-> (pretrain, train, test) image sources. pretrain is what SimCLR sees (labels unused);
    train / test are the linear-evaluation splits. skip_bad_images, bad_log: imagefolder's
    unreadable files (FolderSource)."""
    if name in EMBEDDED:
        if train_size < 1 or test_size < 1:
            raise DataError(f"{name} needs train_size and test_size >= 1, got {train_size}, {test_size}")
        if name == "shapes":
            make = make_shapes
        else:
            from .objects import make_objects as make
        # distinct seeds per split: held-out images are new draws, never copies of train ones
        tr = TensorSource(*make(train_size, image_size, seed * 2 + 1, num_classes), num_classes)
        te = TensorSource(*make(test_size, image_size, seed * 2 + 2, num_classes), num_classes)
        return tr, tr, te
    if name == "imagefolder":
        if root is None:
            raise DataError("--dataset imagefolder needs --data-dir")
        if not os.path.isdir(root):
            raise DataError(f"data directory {root} does not exist (or is not a directory)")
        tdir, vdir = os.path.join(root, "train"), os.path.join(root, "val")
        if os.path.isdir(tdir) and os.path.isdir(vdir):  # ImageNet layout with its own held-out split
            tr_s, classes = _scan_folder(tdir)
            te_s, vclasses = _scan_folder(vdir)
            if vclasses != classes:
                raise DataError(f"{vdir} and {tdir} have different class directories")
        else:  # one directory: a deterministic automatic held-out split
            samples, classes = _scan_folder(root)
            tri, tei = _split_indices(len(samples), val_fraction, seed)
            tr_s, te_s = [samples[i] for i in tri], [samples[i] for i in tei]
        tr = FolderSource(tr_s, classes, skip_bad_images, bad_log)
        te = FolderSource(te_s, classes, skip_bad_images, bad_log)
        return tr, tr, te
    if name in ("cifar10", "cifar100", "stl10"):
        return _torchvision_sources(name, root)
    raise DataError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def _torchvision_sources(name, root):
    import torchvision.datasets as tvd

    if root is None:
        raise DataError(f"--dataset {name} needs --data-dir (the directory torchvision's {name} "
                        f"files are in; nothing is downloaded)")
    if not os.path.isdir(root):
        raise DataError(f"data directory {root} does not exist (or is not a directory)")
    try:
        if name == "stl10":
            tr = tvd.STL10(root, split="train", download=False)
            te = tvd.STL10(root, split="test", download=False)
            pre = tvd.STL10(root, split="train+unlabeled", download=False)
            mk = lambda d: TensorSource(torch.from_numpy(d.data), torch.from_numpy(d.labels), 10)  # noqa: E731
            return mk(pre), mk(tr), mk(te)
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        tr = cls(root, train=True, download=False)
        te = cls(root, train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {name} from data directory {root}: {exc}") from exc
    k = 10 if name == "cifar10" else 100
    trs = TensorSource(torch.from_numpy(tr.data), torch.tensor(tr.targets), k)
    return trs, trs, TensorSource(torch.from_numpy(te.data), torch.tensor(te.targets), k)


# ------------------------------------------------------------------------------------------
# Loader-side transforms (uint8)
# ------------------------------------------------------------------------------------------
def sample_crop(h: int, w: int, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, drawing from generator g."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        r = torch.rand(3, generator=g).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * r[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r[1])
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            ij = torch.rand(2, generator=g).tolist()
            top = int(ij[0] * (h - ch + 1))
            left = int(ij[1] * (w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: the central crop of the clamped ratio
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize_center(img: Tensor, size: int) -> Tensor:
    """Evaluation view: as is when already size x size, else resize (side / 0.875) + center crop."""
    import torchvision.transforms.v2.functional as TF

    if img.shape[-2:] == (size, size):
        return img
    img = TF.resize(img, [int(round(size / 0.875))], antialias=True)
    return TF.center_crop(img, [size, size])


class TwoViews(Dataset):
    """(uint8 [2, 3, S, S] two random views, label): RandomResizedCrop(scale 0.08-1) + flip."""

    def __init__(self, source, image_size: int, seed: int = 0, scale=(0.08, 1.0)):
        self.source, self.size, self.seed, self.scale = source, image_size, seed, scale
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.source)

    def _view(self, img, g):
        import torchvision.transforms.v2.functional as TF

        top, left, ch, cw = sample_crop(img.shape[-2], img.shape[-1], g, self.scale)
        out = TF.resized_crop(img, top, left, ch, cw, [self.size, self.size], antialias=True)
        if torch.rand(1, generator=g).item() < 0.5:
            out = out.flip(-1)
        return out

    def _generator(self, i):
        # a view is a function of (seed, epoch, index) only: resumable and worker-independent
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % (2**63))

    def __getitem__(self, i):
        img, target = self.source[i]
        g = self._generator(i)
        return torch.stack([self._view(img, g), self._view(img, g)]), target


class OneView(TwoViews):
    """(uint8 [3, S, S] one random view, label): TwoViews' first view alone, for supervised
    fine-tuning (crop + flip)."""

    def __getitem__(self, i):
        img, target = self.source[i]
        return self._view(img, self._generator(i)), target


class EvalView(Dataset):
    """(uint8 [3, S, S] un-augmented image, label)."""

    def __init__(self, source, image_size: int):
        self.source, self.size = source, image_size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        img, target = self.source[i]
        return resize_center(img, self.size), target


def collate_images(batch):
    """(uint8 [3, H, W] image, label) pairs -> (images, labels [B] int64): images one
    [B, 3, H, W] tensor when every image has the same size, else the list of them
    (SimCLRAugment takes either; a list is read in place, never padded or packed)."""
    images = [img for img, _ in batch]
    labels = torch.tensor([t for _, t in batch], dtype=torch.int64)
    first = images[0].shape
    if all(img.shape == first for img in images):
        return torch.stack(images), labels
    return images, labels


# ------------------------------------------------------------------------------------------
# ImageFolder JPEGs decoded on the training device (--decode-device cuda)
# ------------------------------------------------------------------------------------------
JPEG_EXTENSIONS = (".jpg", ".jpeg")


def is_whole_jpeg(data: bytes) -> bool:
    """True when data starts with a JPEG's start-of-image marker and ends with its end-of-image
    marker. Anything else (another format, an empty or cut-short file) goes to the CPU decoder,
    whose rules (DataError or --skip-bad-images) decide whether it is readable."""
    return len(data) > 4 and data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


def _decode_jpegs(encoded, device):
    """torchvision.io.decode_jpeg on a list of encoded JPEGs (1-D uint8 CPU tensors) -> list of
    uint8 [3, H, W] on device (nvJPEG's batched decode on CUDA, libjpeg-turbo on the CPU)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec; they still work
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device)


class EncodedFolderSource(Dataset):
    """A FolderSource read for decoding on the training device: index -> (item, label, index),
    item the file's bytes (uint8 [N]) when it is a whole JPEG (is_whole_jpeg), else the image
    decoded on the CPU by the FolderSource (uint8 [3, H, W]), which applies its unreadable-file
    rules (a DataError naming the file, or with skip_bad the next readable file in its place)."""

    def __init__(self, source: FolderSource):
        if not isinstance(source, FolderSource):
            raise DataError(f"decoding on the training device reads the files of an ImageFolder "
                            f"data set; got {type(source).__name__}, which has no files")
        self.source = source
        self.num_classes = source.num_classes

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        path, target = self.source.samples[i]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""  # the CPU path below raises (or skips) with the reason
        if is_whole_jpeg(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), target, i
        img, target = self.source[i]
        return img, target, i


class EncodedBatch:
    """A loader batch for device decoding: items (encoded JPEG bytes uint8 [N], or an image
    already decoded on the CPU uint8 [3, H, W]) and their sample indices."""

    def __init__(self, items, indices):
        self.items, self.indices = items, indices

    def __len__(self):
        return len(self.items)


def collate_encoded(batch):
    """(item, label, index) triples of EncodedFolderSource -> (EncodedBatch, labels [B] int64).
    Nothing is stacked here: the images' sizes are known only after decoding."""
    labels = torch.tensor([t for _, t, _ in batch], dtype=torch.int64)
    return EncodedBatch([x for x, _, _ in batch], [i for _, _, i in batch]), labels


class DeviceJpegDecoder:
    """The training-device half of --decode-device: EncodedBatch -> (images, labels), images
    on `device` as collate_images makes them (one [B, 3, H, W] tensor when every image has one
    size, else the list). All JPEG bytes of the batch go to one batched decode_jpeg call.

    A JPEG that the device decoder rejects (the batched call raises) is decoded on the CPU by
    the FolderSource, with its rules for unreadable files; its index is remembered, so later
    batches send it to the CPU directly instead of failing a batched call again."""

    def __init__(self, source: FolderSource, device):
        self.source, self.device = source, torch.device(device)
        self.cpu_only = set()  # indices whose bytes the device decoder rejected

    def _cpu(self, i):
        img, target = self.source[i]
        return img.to(self.device, non_blocking=True), target

    def __call__(self, batch: EncodedBatch, labels: Tensor):
        out, labels = [None] * len(batch), labels.clone()
        jpeg = []
        for k, (item, i) in enumerate(zip(batch.items, batch.indices)):
            if item.dim() == 3:  # decoded on the CPU in the loader (not a whole JPEG)
                out[k] = item.to(self.device, non_blocking=True)
            elif i in self.cpu_only:
                out[k], labels[k] = self._cpu(i)
            else:
                jpeg.append(k)
        if jpeg:
            try:
                decoded = _decode_jpegs([batch.items[k] for k in jpeg], self.device)
            except RuntimeError:  # one of them is unreadable here: find it, one by one
                decoded = []
                for k in jpeg:
                    try:
                        decoded.append(_decode_jpegs([batch.items[k]], self.device)[0])
                    except RuntimeError:
                        self.cpu_only.add(batch.indices[k])
                        img, labels[k] = self._cpu(batch.indices[k])
                        decoded.append(img)
            for k, img in zip(jpeg, decoded):
                out[k] = img
        first = out[0].shape
        if all(img.shape == first for img in out):
            return torch.stack(out), labels
        return out, labels


def count_non_jpeg(source: FolderSource) -> int:
    """Files of an ImageFolder source without a .jpg / .jpeg extension."""
    return sum(not p.lower().endswith(JPEG_EXTENSIONS) for p, _ in source.samples)


def view_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The augmentation generator's seed for one step of one rank: the views of a step are a
    function of (seed, epoch, step in epoch, rank) alone, so a resumed run makes the same views
    without any saved generator state, and every rank draws different parameters."""
    return (((seed * 1_000_003 + epoch) * 10_000_019 + step) * 1_009 + rank) % (2**63)


class ResumableSampler(Sampler):
    """DistributedSampler semantics (seeded shuffle per epoch, rank-strided, padded to equal
    length, drop_last at the batch level is the loader's) that can start mid-epoch."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, start: int = 0):
        """start: number of this rank's samples of the epoch already consumed."""
        self.epoch, self.start = epoch, start

    def indices(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return order[self.rank:total:self.world].tolist()

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self):
        return self.per_rank - self.start


# ------------------------------------------------------------------------------------------
# Device-side augmentation
# ------------------------------------------------------------------------------------------
def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur each image of x [B, C, H, W] with its own sigma [B] (separable, reflect padding)."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    y = F.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


class DeviceAugment(nn.Module):
    """The training-device half of SimCLR's views, on a uint8 batch [B, 3, S, S]: color
    distortion (per image) with the mean / std normalization fused into the color kernel's store,
    then Gaussian blur (p, sigma ~ U[0.1, 2], kernel 10% of the side, per image), returned as
    float32 in `memory_format` (the model's: see models.preferred_memory_format). Without blur the
    color kernel writes that layout itself; the blur runs on NCHW and its result is copied once.
    With ramp > 0, each view then gets an illumination ramp (pipeline.illumination_ramp, a ~ U[0,
    ramp]) as SimCLRAugment adds it. All randomness comes from one generator on the images' device
    (its state is checkpointed): color parameters first (grayscale with probability gray_p), then
    the blur's, then the ramps'.

    Blurring after normalizing is the same as blurring before it (docs/architecture.md, 4.2):
    the normalization is a per-channel affine map, and a per-channel blur whose weights sum to 1,
    with reflect padding (which only copies pixels), commutes with any such map."""

    def __init__(self, color_cls, image_size: int, strength: float = 1.0, blur_p: float = 0.5,
                 generator: Optional[torch.Generator] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 gray_p: float = 0.2, ramp: float = 0.0):
        super().__init__()
        self.generator = generator
        self.color = color_cls(strength, 0.8, gray_p, generator=generator, mean=mean, std=std)
        self.blur_p = blur_p
        self.ramp, self.std = float(ramp), std
        k = int(round(0.1 * image_size))
        self.kernel_size = max(3, k + (k + 1) % 2)  # odd, at least 3
        self.memory_format = memory_format

    def forward(self, x: Tensor) -> Tensor:
        x = self._color_blur(x)
        if self.ramp > 0:
            from .pipeline import add_illumination_ramp_, sample_ramp

            add_illumination_ramp_(x, sample_ramp(x.shape[0], self.ramp, x.device, self.generator),
                                   self.std)
        return x

    def _color_blur(self, x: Tensor) -> Tensor:
        if self.blur_p == 0:
            # the color kernel stores in its input's layout: lay out the (4x smaller) uint8 batch
            x = self.color(x.contiguous(memory_format=self.memory_format))
            return x.contiguous(memory_format=self.memory_format)  # no-op for the fused kernel
        # NCHW: the blur's per-image grouped convolution views the batch as B*C channels
        x = self.color(x.contiguous())
        b = x.shape[0]
        r = torch.rand(2, b, device=x.device, generator=self.generator)
        sigma = 0.1 + 1.9 * r[0]
        x = torch.where((r[1] < self.blur_p).view(b, 1, 1, 1),
                        gaussian_blur(x, sigma, self.kernel_size), x)
        # a separate copy: a selection that reads NCHW and writes channels_last in one pass
        # measured slower on CPU than the two passes
        return x.contiguous(memory_format=self.memory_format)


def normalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 or [0, 1] images -> normalized float (evaluation views)."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
