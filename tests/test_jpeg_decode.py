"""ImageFolder JPEGs decoded from their bytes in one batched call (--decode-device cuda): the
byte-loading path gives the loader's images, variable sizes collate to a list, non-JPEG files
and unreadable ones follow the loader's rules, the flag's errors are clear; on CUDA, nvJPEG's
images are close to the CPU's and a training step runs (docs/architecture.md, 10.4).

Tolerance, CPU: the loader decodes with Pillow, the byte path with torchvision.io.decode_jpeg;
both wheels bundle libjpeg-turbo and both use its defaults (accurate integer IDCT, smooth
chroma upsampling), so the images must be equal, bit for bit. A build linking another libjpeg
(IJG libjpeg 9 upsamples chroma differently) would fail here, and the message says why.
CUDA: nvJPEG is another decoder (its own IDCT and chroma upsampling): torchvision's own bound
against libjpeg-turbo, a mean absolute difference under 2 levels per image."""
import importlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from simclr_ext.data import (DataError, DeviceJpegDecoder, EncodedBatch, EncodedFolderSource,
                             FolderSource, TensorSource, _scan_folder, collate_encoded,
                             collate_images, is_whole_jpeg, make_shapes)

# the JPEG files of these tests are written with torchvision's encoder too
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
SAME_DECODER = ("Pillow and torchvision.io.decode_jpeg both use libjpeg-turbo with its default "
                "IDCT and chroma upsampling here, so their images must be equal; a different "
                "libjpeg build in either package explains a difference")


def fresh_generator():
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))


def random_image(g, h, w, channels=3):
    """A smooth random field plus noise: texture at every frequency, as photographs have."""
    coarse = torch.rand(1, channels, 5, 7, generator=g) * 255
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    img = img + 12 * torch.randn(1, channels, h, w, generator=g)
    return img[0].clamp(0, 255).round().to(torch.uint8)


def write_jpeg(path, img, g):
    """img uint8 [C, H, W] -> a JPEG file, by torchvision or by Pillow (random choice)."""
    from PIL import Image
    from torchvision.io import encode_jpeg

    quality = int(torch.randint(60, 98, (), generator=g))
    if bool(torch.randint(0, 2, (), generator=g)):
        data = encode_jpeg(img, quality=quality).numpy().tobytes()
    else:
        arr = img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if img.shape[0] == 1 else arr).save(buf, "JPEG",
                                                                        quality=quality)
        data = buf.getvalue()
    Path(path).write_bytes(data)


def jpeg_folder(root, n, g, sizes=None, gray_every=5):
    """n JPEGs in two class directories: random sizes (odd ones too), some grayscale."""
    for i in range(n):
        h, w = sizes if sizes else (int(v) for v in torch.randint(9, 61, (2,), generator=g))
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        write_jpeg(d / f"{i:03d}.jpg", random_image(g, h, w, 1 if i % gray_every == 3 else 3), g)


def folder_source(root, skip_bad_images=False, bad_log=None):
    """Every image of root (no held-out split) as the trainer's FolderSource."""
    return FolderSource(*_scan_folder(str(root)), skip_bad_images, bad_log)


def decode_all(src, indices, device="cpu"):
    enc = EncodedFolderSource(src)
    batch, labels = collate_encoded([enc[i] for i in indices])
    return DeviceJpegDecoder(src, device)(batch, labels)


def test_byte_path_gives_the_loaders_images_bit_for_bit(tmp_path):
    g = fresh_generator()
    jpeg_folder(tmp_path, 24, g)
    src = folder_source(tmp_path)
    enc = EncodedFolderSource(src)
    for i in range(len(src)):
        item, label, idx = enc[i]
        assert item.dim() == 1 and item.dtype == torch.uint8 and idx == i  # bytes, not pixels
        assert label == src.samples[i][1]
    images, labels = decode_all(src, range(len(src)))
    assert isinstance(images, list) and len(images) == len(src)
    for i, img in enumerate(images):
        ref, target = src[i]
        assert img.shape == ref.shape and img.dtype == torch.uint8 and int(labels[i]) == target
        assert torch.equal(img, ref), f"{src.samples[i][0]}: max difference " \
            f"{(img.int() - ref.int()).abs().max()}. {SAME_DECODER}"


def test_one_size_stacks_mixed_sizes_list_as_collate_images(tmp_path):
    g = fresh_generator()
    jpeg_folder(tmp_path / "same", 6, g, sizes=(23, 31))
    jpeg_folder(tmp_path / "mixed", 6, g, sizes=None)
    for name, stacked in (("same", True), ("mixed", False)):
        src = folder_source(tmp_path / name)
        idx = torch.randperm(len(src), generator=g)[:5].tolist()
        images, labels = decode_all(src, idx)
        ref, ref_labels = collate_images([src[i] for i in idx])
        assert isinstance(images, torch.Tensor) == stacked == isinstance(ref, torch.Tensor)
        assert torch.equal(labels, ref_labels)
        if stacked:
            assert images.shape == (5, 3, 23, 31) and torch.equal(images, ref), SAME_DECODER
        else:
            assert len({tuple(x.shape) for x in images}) > 1
            assert all(torch.equal(a, b) for a, b in zip(images, ref)), SAME_DECODER


def test_non_jpeg_files_are_decoded_on_the_cpu_in_the_loader(tmp_path):
    """A PNG, and a PNG named .jpg: the loader decodes them (the bytes' markers decide)."""
    from PIL import Image

    g = fresh_generator()
    jpeg_folder(tmp_path, 4, g)
    png = random_image(g, 17, 29)
    Image.fromarray(png.permute(1, 2, 0).numpy()).save(tmp_path / "c0" / "x.png")
    Image.fromarray(png.permute(1, 2, 0).numpy()).save(tmp_path / "c1" / "y.jpg", format="PNG")
    src = folder_source(tmp_path)
    enc = EncodedFolderSource(src)
    kinds = {os.path.basename(src.samples[i][0]): enc[i][0].dim() for i in range(len(src))}
    assert kinds["x.png"] == kinds["y.jpg"] == 3 and sum(v == 1 for v in kinds.values()) == 4
    images, _ = decode_all(src, range(len(src)))
    for i, img in enumerate(images):
        assert torch.equal(img, src[i][0])
    assert torch.equal(images[[os.path.basename(p) for p, _ in src.samples].index("x.png")], png)


def _bad_files(root):
    """A JPEG cut short (no end-of-image marker: the loader's CPU path meets it) and one whose
    markers look whole around garbage (it reaches the batched decode, which rejects it)."""
    good = sorted((root / "c0").glob("*.jpg"))[0].read_bytes()
    cut = root / "c0" / "cut.jpg"
    cut.write_bytes(good[: len(good) // 2])
    junk = root / "c1" / "junk.jpg"
    # 0x1f after the start-of-image marker: not a marker type any JPEG decoder knows
    junk.write_bytes(good[:3] + b"\x1f" + bytes(torch.randint(0, 256, (300,)).tolist())
                     + b"\xff\xd9")
    assert not is_whole_jpeg(cut.read_bytes()) and is_whole_jpeg(junk.read_bytes())
    return cut, junk


@pytest.mark.parametrize("which", ["cut", "junk"])
def test_unreadable_files_are_a_data_error_naming_them(tmp_path, which):
    g = fresh_generator()
    jpeg_folder(tmp_path, 8, g)
    files = dict(zip(("cut", "junk"), _bad_files(tmp_path)))
    bad = files.pop(which)
    files.popitem()[1].unlink()  # the other one: the error names the first file met
    src = folder_source(tmp_path)
    with pytest.raises(DataError, match=f"cannot read image {bad}.*--skip-bad-images"):
        decode_all(src, range(len(src)))


def test_unreadable_files_are_skipped_as_by_the_loader(tmp_path):
    """With skip_bad, each bad file's place takes the next readable file of the list, as in the
    loader's CPU path; both are logged; the file the device rejected goes to the CPU afterwards."""
    g = fresh_generator()
    jpeg_folder(tmp_path, 10, g)
    cut, junk = _bad_files(tmp_path)
    log = tmp_path / "bad.txt"
    src = folder_source(tmp_path, skip_bad_images=True, bad_log=str(log))
    ref_src = folder_source(tmp_path, skip_bad_images=True, bad_log=str(tmp_path / "ref.txt"))
    enc = EncodedFolderSource(src)
    decoder = DeviceJpegDecoder(src, "cpu")
    idx = list(range(len(src)))
    images, labels = decoder(*collate_encoded([enc[i] for i in idx]))
    ref, ref_labels = collate_images([ref_src[i] for i in idx])
    assert all(torch.equal(a, b) for a, b in zip(images, ref)) and torch.equal(labels, ref_labels)
    listed = {line.split("\t")[0] for line in log.read_text().splitlines()}
    assert listed == {str(cut), str(junk)}
    junk_i = [p for p, _ in src.samples].index(str(junk))
    assert decoder.cpu_only == {junk_i}
    again, _ = decoder(*collate_encoded([enc[junk_i]]))  # straight to the CPU: no new failure
    assert torch.equal(again[0], ref[junk_i]) and len(log.read_text().splitlines()) == 2


def test_encoded_source_needs_an_image_folder():
    with pytest.raises(DataError, match="ImageFolder data set; got TensorSource"):
        EncodedFolderSource(TensorSource(*make_shapes(4, 8), 10))


# ------------------------------------------------------------------------------------------
# The trainer's flag
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "python"))
        yield importlib.import_module("train")


@pytest.mark.parametrize("flags, cuda, message", [
    (["--dataset", "shapes"], True, "--decode-device cuda decodes the JPEG files of an "
                                    "ImageFolder (--dataset imagefolder); --dataset shapes has none"),
    (["--dataset", "imagefolder"], False, "--decode-device cuda needs a CUDA device to train on, "
                                          "and none is available here"),
    (["--dataset", "imagefolder", "--device", "cpu"], True, "needs a CUDA device to train on, "
                                                             "and --device is cpu"),
])
def test_decode_device_flag_errors_are_clear(tmp_path, train, monkeypatch, capsys, flags, cuda,
                                             message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(SystemExit) as e:
        train.main(flags + ["--data-dir", str(tmp_path), "--decode-device", "cuda",
                            "--run-dir", str(tmp_path / "run")])
    assert e.value.code == 2 and message in capsys.readouterr().err


def _setup(train, argv, device="cpu"):
    """What load_data and epoch_loader read of a Setup, without a process group."""
    args = train.build_parser().parse_args(argv)
    train.resolve_defaults(args)
    return SimpleNamespace(args=args, device=torch.device(device), t0=0.0, say=print,
                           bad_log=os.devnull, info=SimpleNamespace(rank=0, world_size=1))


@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_loader_with_device_decode_gives_the_loaders_batches(tmp_path, train, workers,
                                                                     capsys):
    """The trainer's own wiring (load_data, epoch_loader, the decode in the step), run with the
    decoder on the CPU: the batches of every step equal those of the CPU decode path."""
    from PIL import Image

    g = fresh_generator()
    jpeg_folder(tmp_path, 20, g)
    Image.fromarray(random_image(g, 30, 20).permute(1, 2, 0).numpy()).save(tmp_path / "c0" / "p.png")
    common = ["--dataset", "imagefolder", "--data-dir", str(tmp_path), "--batch-size", "6",
              "--workers", str(workers), "--image-size", "16", "--val-fraction", "0.1"]
    s_cpu = _setup(train, common)
    s_dev = _setup(train, common + ["--decode-device", "cuda"])  # its decoder runs on the CPU here
    d_cpu, d_dev = train.load_data(s_cpu), train.load_data(s_dev)
    png = sum(p.endswith(".png") for p, _ in d_dev.pretrain.samples)  # 0 or 1: the split's choice
    out = capsys.readouterr().out
    assert (f"note: {png} of {len(d_dev.pretrain)} pretraining files are not .jpg / .jpeg" in out
            if png else "not .jpg" not in out)
    pos = train.Position(epoch=1)
    steps = 0
    for (a, la), (b, lb) in zip(train.epoch_loader(s_cpu, d_cpu, pos),
                                train.epoch_loader(s_dev, d_dev, pos)):
        assert isinstance(b, EncodedBatch)
        b, lb = d_dev.decoder(b, lb)
        assert torch.equal(la, lb) and len(a) == len(b) == 6
        assert all(torch.equal(x, y) for x, y in zip(a, b)), SAME_DECODER
        steps += 1
    assert steps == d_cpu.steps_per_epoch == 3


# ------------------------------------------------------------------------------------------
# CUDA: nvJPEG
# ------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_decode_is_close_to_the_cpu_decode(tmp_path):
    g = fresh_generator()
    jpeg_folder(tmp_path / "small", 24, g)
    jpeg_folder(tmp_path / "big", 4, g, sizes=(375, 500))  # an ImageNet-like size
    for root in (tmp_path / "small", tmp_path / "big"):
        src = folder_source(root)
        images, _ = decode_all(src, range(len(src)), "cuda")
        for i, img in enumerate(images):
            ref = src[i][0]
            assert img.device.type == "cuda" and img.dtype == torch.uint8
            assert img.shape == ref.shape
            err = (img.cpu().float() - ref.float()).abs()
            assert err.mean() < 2, f"{src.samples[i][0]}: mean |nvJPEG - libjpeg-turbo| " \
                f"{err.mean():.3f}, max {err.max():.0f}"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_decode_trains_a_step(tmp_path, train, capsys):
    from simclr_ext import checkpoint as ckpt_lib

    g = fresh_generator()
    jpeg_folder(tmp_path / "data", 20, g)
    run = tmp_path / "run"
    assert train.main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                       "--decode-device", "cuda", "--device", "cuda", "--batch-size", "8",
                       "--width", "4", "--image-size", "16", "--epochs", "1", "--no-eval",
                       "--no-progress", "--log-every", "1", "--val-fraction", "0.1",
                       "--run-dir", str(run)]) == 0
    ck = ckpt_lib.load(str(run))
    assert ck["global_step"] == 2 and ck["config"]["decode_device"] == "cuda"
    assert all(v.isfinite().all() for v in ck["model"].values() if v.is_floating_point())
