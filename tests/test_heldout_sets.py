"""benchmarks/heldout_sets.py: the held-out texture set is a pure function of its seed, balanced,
its classes differ in pattern and not in color, and the ImageFolder trees it writes read back
through the trainer's loader with the right classes, splits and native size."""
import importlib.util
import pathlib

import pytest
import torch

from simclr_ext.data import load_sources
from simclr_ext.defaults import native_image_size

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heldout():
    spec = importlib.util.spec_from_file_location("heldout_sets", ROOT / "benchmarks" / "heldout_sets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_textures_deterministic_and_balanced(heldout):
    x, y = heldout.make_textures(60, 16, seed=3)
    x2, y2 = heldout.make_textures(60, 16, seed=3)
    assert x.shape == (60, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, heldout.make_textures(60, 16, seed=4)[0])
    assert torch.bincount(y, minlength=10).tolist() == [6] * 10
    # colors are drawn per image, independently of the class: the mean color of a class is no
    # further from the overall mean than chance allows, while the images are far from flat
    xf = x.float() / 255
    per_image = xf.mean(dim=(2, 3))
    overall = per_image.mean(0)
    for k in range(10):
        assert (per_image[y == k].mean(0) - overall).abs().max() < 0.3
    assert float(xf.std(dim=(2, 3)).mean()) > 0.05


def test_written_trees_read_back(heldout, tmp_path):
    (xtr, ytr), (xte, yte), names = heldout.textures(size=16, n_train=30, n_val=20)
    root = tmp_path / "textures"
    heldout._save(str(root), "train", xtr, ytr, names)
    heldout._save(str(root), "val", xte, yte, names)
    assert native_image_size("imagefolder", str(root)) == 16
    _, tr, te = load_sources("imagefolder", str(root), 16)
    assert len(tr) == 30 and len(te) == 20 and tr.classes == sorted(names)
    img, label = te[0]
    # the PNG round trip is lossless: the loaded image is one of the written ones, same class
    hits = [i for i in range(20) if torch.equal(xte[i], img)]
    assert hits and names[int(yte[hits[0]])] == tr.classes[label]
