"""Defaults that adapt to the data where the SimCLR paper's recipe does: the image size from the
data (its native size when small), then the augmentation by image size. docs/recipe.md has the
measurements behind the small-image values.

- Image size: the embedded sets are drawn at EMBEDDED_SIZE; CIFAR at 32, STL-10 at 96; an
  ImageFolder tree at the short side of its first image, at most 224 (the paper's ImageNet size).
- Up to SMALL_IMAGE_MAX px (the size up to which the encoder gets the CIFAR stem): the paper's
  CIFAR augmentation (color strength 0.5, no blur) and a crop lower bound of 0.35: at this size
  the paper's 0.08 (a 7 x 7 px crop of a 24 px image) often holds none of a small object, and
  the pair then only teaches background statistics (docs/recipe.md).
  On top of the paper's: grayscale with probability 0.5 (the paper's 0.2) and an illumination
  ramp of amplitude up to 0.4 (pipeline.illumination_ramp). Each removes one cue that tells
  images apart without the object, color and a brightness gradient; only the two together made
  the objects set learnable (docs/recipe.md, section 5).
- Above it: the paper's ImageNet augmentation (crop 0.08-1, color strength 1.0, blur p 0.5,
  grayscale p 0.2, no ramp): the section 5 measurements are at 24 px only.
- The learning rate scales with the batch (schedule.scaled_lr: base x sqrt(B) by default, the
  paper's rule for small batches). Its base is 0.15 up to SMALL_IMAGE_MAX px and the paper's
  0.075 above (docs/recipe.md, section 7: 0.15 with the small-image augmentation measured
  better on both embedded sets).
"""
import os

EMBEDDED_SIZE = 24
SMALL_IMAGE_MAX = 64  # = models.CIFAR_STEM_MAX_SIZE
SMALL = {"crop_scale": 0.35, "color_strength": 0.5, "blur_p": 0.0, "gray_p": 0.5, "ramp": 0.4,
         "base_lr": 0.15}
LARGE = {"crop_scale": 0.08, "color_strength": 1.0, "blur_p": 0.5, "gray_p": 0.2, "ramp": 0.0,
         "base_lr": 0.075}
MAX_NATIVE = 224


def native_image_size(dataset: str, data_dir=None) -> int:
    """The side the data comes in (capped at MAX_NATIVE): what --image-size defaults to."""
    from .data import EMBEDDED, DataError, IMG_EXTENSIONS

    if dataset in EMBEDDED:
        return EMBEDDED_SIZE
    if dataset in ("cifar10", "cifar100"):
        return 32
    if dataset == "stl10":
        return 96
    if dataset == "imagefolder":
        from PIL import Image

        tdir = os.path.join(data_dir, "train")
        root = tdir if os.path.isdir(tdir) else data_dir
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        for cname in classes:  # the first image in data.load_sources' order
            for dirpath, dirs, files in os.walk(os.path.join(root, cname)):
                dirs.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMG_EXTENSIONS):
                        path = os.path.join(dirpath, f)
                        try:
                            with Image.open(path) as im:  # reads the header only
                                return min(min(im.size), MAX_NATIVE)
                        except OSError as exc:
                            raise DataError(f"cannot read image {path}: {exc}") from exc
        raise DataError(f"data directory {root} has no class sub-directories with images; expected "
                        f"the ImageFolder layout {root}/<class>/<image>.jpg")
    raise DataError(f"unknown dataset {dataset!r}")


def augmentation_defaults(image_size: int) -> dict:
    """{'crop_scale', 'color_strength', 'blur_p', 'gray_p', 'ramp', 'base_lr'} for views of
    image_size px: the augmentation and the learning rate that goes with it."""
    return dict(SMALL if image_size <= SMALL_IMAGE_MAX else LARGE)
