"""simclr_ext.resized_crop against torchvision's resized_crop(img.float(), ..., antialias=True)
(simclr_ext.reference), image by image: random, tiny, full-image and edge-touching boxes,
upscaling and downscaling, uint8 and floating inputs, varying-size lists, layouts, several crops
per image, the custom ops' schemas and the errors."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

import simclr_ext
from simclr_ext import pipeline
from simclr_ext import reference as ref

ATOL_UINT8 = 1e-2  # on the 0..255 scale
ATOL_FLOAT = 1e-4  # on [0, 1]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(20240613)


def random_images(b, c, h, w, dtype, gen):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, h, w), generator=gen, dtype=torch.uint8)
    return torch.rand(b, c, h, w, generator=gen).to(dtype)


def random_boxes(sizes, gen, n=None):
    """One box per (H, W) in sizes (cycled to n rows): random boxes mixed with the special
    cases: 1 x 1, a full row, a full column, the whole image, and boxes touching each edge."""
    rows = []
    n = len(sizes) if n is None else n
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        kind = i % 8
        if kind == 0:
            rows.append((int(torch.randint(0, h, (1,), generator=gen)),
                         int(torch.randint(0, w, (1,), generator=gen)), 1, 1))
        elif kind == 1:
            rows.append((int(torch.randint(0, h, (1,), generator=gen)), 0, 1, w))
        elif kind == 2:
            rows.append((0, int(torch.randint(0, w, (1,), generator=gen)), h, 1))
        elif kind == 3:
            rows.append((0, 0, h, w))
        elif kind == 4:  # bottom-right corner
            bh = int(torch.randint(1, h + 1, (1,), generator=gen))
            bw = int(torch.randint(1, w + 1, (1,), generator=gen))
            rows.append((h - bh, w - bw, bh, bw))
        else:
            bh = int(torch.randint(1, h + 1, (1,), generator=gen))
            bw = int(torch.randint(1, w + 1, (1,), generator=gen))
            rows.append((int(torch.randint(0, h - bh + 1, (1,), generator=gen)),
                         int(torch.randint(0, w - bw + 1, (1,), generator=gen)), bh, bw))
    return torch.tensor(rows, dtype=torch.int64)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype, atol", [(torch.uint8, ATOL_UINT8), (torch.float32, ATOL_FLOAT)])
@pytest.mark.parametrize("size", [5, 24, 96])  # downscale, mixed, upscale of 41 x 53 images
def test_matches_torchvision_per_image(device, dtype, atol, size, gen):
    images = random_images(16, 3, 41, 53, dtype, gen)
    boxes = random_boxes([(41, 53)] * 16, gen)
    flip = torch.rand(16, generator=gen) < 0.5
    out = simclr_ext.resized_crop(images.to(device), boxes.to(device), size, flip.to(device))
    expected = ref.resized_crop(images, boxes, size, flip)
    assert out.dtype == torch.float32 and out.shape == (16, 3, size, size)
    torch.testing.assert_close(out.cpu(), expected, atol=atol, rtol=0)


def test_float32_error_against_float64_twin(device, gen):
    # The kernel computes in float32; against the float64 twin its error stays at float32 level.
    images = random_images(12, 3, 37, 29, torch.float32, gen)
    boxes = random_boxes([(37, 29)] * 12, gen)
    out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 17)
    expected = ref.resized_crop(images, boxes, 17, dtype=torch.float64)
    torch.testing.assert_close(out.cpu().double(), expected, atol=2e-6, rtol=0)


def test_antialias_on_large_downscale(device, gen):
    # A 300 x 400 image shrunk to 16 px: the antialiased filter spans ~19 x 25 source pixels.
    images = random_images(2, 3, 300, 400, torch.uint8, gen)
    boxes = torch.tensor([[0, 0, 300, 400], [13, 57, 250, 301]])
    out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 16)
    expected = ref.resized_crop(images, boxes, 16)
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL_UINT8, rtol=0)
    # Not vacuous: plain bilinear (no antialias) differs by far more than the tolerance.
    plain = TF.resized_crop(images[0].float(), 0, 0, 300, 400, [16, 16], antialias=False)
    assert (plain - expected[0]).abs().max() > 5.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_floating_input_dtypes(device, dtype, gen):
    images = random_images(8, 3, 23, 31, dtype, gen)
    boxes = random_boxes([(23, 31)] * 8, gen)
    out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 19)
    expected = ref.resized_crop(images, boxes, 19)  # torchvision on img.float()
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL_FLOAT, rtol=0)


def test_varying_size_list(device, gen):
    sizes = [(41, 53), (17, 90), (64, 64), (8, 5), (120, 33), (33, 120)]
    images = [random_images(1, 3, h, w, torch.uint8, gen)[0] for h, w in sizes]
    # Layouts the list may hold: a channels-last image and a strided view.
    images[2] = images[2].permute(1, 2, 0).contiguous().permute(2, 0, 1)
    big = random_images(1, 3, 240, 33, torch.uint8, gen)[0]
    images[4] = big[:, ::2, :]
    boxes = random_boxes(sizes, gen)
    flip = torch.rand(len(sizes), generator=gen) < 0.5
    out = simclr_ext.resized_crop([im.to(device) for im in images], boxes.to(device), 32,
                                  flip.to(device))
    expected = ref.resized_crop(images, boxes, 32, flip)
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL_UINT8, rtol=0)


def test_layouts_channels_last_and_strided(device, gen):
    base = random_images(6, 3, 40, 44, torch.float32, gen)
    boxes = random_boxes([(40, 44)] * 6, gen)
    expected = ref.resized_crop(base, boxes, 21)
    variants = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": random_images(6, 3, 80, 44, torch.float32, gen)[:, :, ::2].copy_(base),
    }
    for name, images in variants.items():
        out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 21)
        torch.testing.assert_close(out.cpu(), expected, atol=ATOL_FLOAT, rtol=0, msg=name)


def test_several_crops_per_image_read_image_n_mod_b(device, gen):
    images = random_images(3, 3, 30, 26, torch.uint8, gen)
    boxes = random_boxes([(30, 26)] * 3, gen, n=9)
    out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 12)
    expected = ref.resized_crop(images, boxes, 12)  # row n crops image n % 3
    torch.testing.assert_close(out.cpu(), expected, atol=ATOL_UINT8, rtol=0)


def test_flip_mirrors_the_resized_crop(device, gen):
    images = random_images(4, 3, 20, 25, torch.float32, gen).to(device)
    boxes = random_boxes([(20, 25)] * 4, gen).to(device)
    plain = simclr_ext.resized_crop(images, boxes, 9)
    flipped = simclr_ext.resized_crop(images, boxes, 9, torch.ones(4, dtype=torch.bool,
                                                                     device=device))
    assert torch.equal(flipped, plain.flip(-1))


def test_internal_op_scale_and_channels_last_output(device, gen):
    images = random_images(4, 3, 20, 25, torch.uint8, gen).to(device)
    boxes = random_boxes([(20, 25)] * 4, gen).to(device)
    plain = pipeline._resized_crop_op(images, boxes, None, 11, 1.0, False)
    scaled = pipeline._resized_crop_op(images, boxes, None, 11, 1.0 / 255.0, True)
    assert scaled.is_contiguous(memory_format=torch.channels_last) and not scaled.is_contiguous()
    torch.testing.assert_close(scaled, plain * (1.0 / 255.0), atol=1e-7, rtol=0)


def test_single_channel_and_many_channels(device, gen):
    for c in (1, 5):
        images = random_images(3, c, 18, 22, torch.float32, gen)
        boxes = random_boxes([(18, 22)] * 3, gen)
        out = simclr_ext.resized_crop(images.to(device), boxes.to(device), 10)
        torch.testing.assert_close(out.cpu(), ref.resized_crop(images, boxes, 10),
                                   atol=ATOL_FLOAT, rtol=0)


def test_uint8_path_equals_float_path_bitwise(gen):
    # uint8 sources take a fixed-tap horizontal loop (zero weights past each span); float
    # sources the exact-count loop. For finite samples the two are the same sums.
    images = random_images(12, 3, 300, 260, torch.uint8, gen)
    boxes = random_boxes([(300, 260)] * 12, gen)
    for size in (7, 64, 224):  # 7 downscales by up to ~40x: beyond the fixed-tap cases
        a = simclr_ext.resized_crop(images, boxes, size)
        b = simclr_ext.resized_crop(images.float(), boxes, size)
        assert torch.equal(a, b), size


def test_deterministic(gen):
    images = random_images(16, 3, 64, 48, torch.uint8, gen)
    boxes = random_boxes([(64, 48)] * 16, gen)
    a = simclr_ext.resized_crop(images, boxes, 40)
    b = simclr_ext.resized_crop(images, boxes, 40)
    assert torch.equal(a, b)


def test_opcheck(device, gen):
    images = random_images(2, 3, 12, 14, torch.uint8, gen).to(device)
    boxes = random_boxes([(12, 14)] * 2, gen).to(device)
    flip = torch.tensor([True, False], device=device)
    torch.library.opcheck(pipeline._resized_crop_op, (images, boxes, flip, 7, 1.0, False))
    torch.library.opcheck(pipeline._resized_crop_op, (images.float(), boxes, None, 9, 0.5, True))
    list_boxes = torch.tensor([[0, 0, 12, 14], [2, 3, 5, 6]], device=device)
    torch.library.opcheck(pipeline._resized_crop_list_op,
                          ([images[0], images[1, :, :10]], list_boxes, flip, 5, 1.0, False))


def test_compile_fullgraph(gen):
    images = random_images(4, 3, 20, 24, torch.float32, gen)
    boxes = random_boxes([(20, 24)] * 4, gen)
    compiled = torch.compile(lambda x, b: simclr_ext.resized_crop(x, b, 8) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(images, boxes), simclr_ext.resized_crop(images, boxes, 8) * 2)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_bad_boxes_raise(device):
    images = torch.zeros(2, 3, 10, 12, dtype=torch.uint8, device=device)
    if device == "cuda":
        pytest.skip("CUDA boxes are not read on the host (documented: clamped into the image)")
    bad = {
        "outside": [[0, 0, 10, 12], [5, 0, 6, 12]],   # bottom edge past the image
        "negative": [[0, -1, 4, 4], [0, 0, 3, 3]],
        "right": [[0, 10, 4, 3], [0, 0, 3, 3]],
    }
    for name, rows in bad.items():
        with pytest.raises(ValueError, match=r"boxes\[\d\].*must lie inside image"):
            simclr_ext.resized_crop(images, torch.tensor(rows, device=device), 8)
    for rows in ([[0, 0, 0, 4], [0, 0, 3, 3]], [[0, 0, 4, -2], [0, 0, 3, 3]]):
        with pytest.raises(ValueError, match=r"height and width >= 1"):
            simclr_ext.resized_crop(images, torch.tensor(rows, device=device), 8)


def test_cpp_entry_checks_boxes_too():
    # A direct call (or the custom op reached without the wrapper) still refuses a bad box.
    images = torch.zeros(1, 3, 10, 12)
    with pytest.raises(RuntimeError, match=r"boxes\[0\].*must lie inside image 0 of size 10 x 12"):
        pipeline._C.resized_crop(images, torch.tensor([[8, 0, 4, 4]]), None, 8, 1.0, False)


def test_wrong_types_and_shapes_raise():
    images = torch.zeros(2, 3, 10, 12, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 5, 5], [1, 1, 5, 5]])
    with pytest.raises(TypeError, match="boxes must be an integer tensor"):
        simclr_ext.resized_crop(images, boxes.float(), 8)
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, 4\]"):
        simclr_ext.resized_crop(images, boxes[:, :3], 8)
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, 4\]"):
        simclr_ext.resized_crop(images, boxes[:1], 8)
    with pytest.raises(TypeError, match="images must be uint8 or floating"):
        simclr_ext.resized_crop(images.int(), boxes, 8)
    with pytest.raises(ValueError, match="images must be a 4-d batch"):
        simclr_ext.resized_crop(images[0], boxes, 8)
    with pytest.raises(ValueError, match="size must be >= 1"):
        simclr_ext.resized_crop(images, boxes, 0)
    with pytest.raises(TypeError, match="size must be an int"):
        simclr_ext.resized_crop(images, boxes, 8.0)
    with pytest.raises(TypeError, match="flip must be a bool tensor"):
        simclr_ext.resized_crop(images, boxes, 8, torch.zeros(2))
    with pytest.raises(ValueError, match=r"flip must have shape \(2,\)"):
        simclr_ext.resized_crop(images, boxes, 8, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-empty list"):
        simclr_ext.resized_crop([], boxes, 8)
    with pytest.raises(RuntimeError, match=r"images\[1\] has 1 channels"):
        simclr_ext.resized_crop([images[0], images[1, :1]], boxes, 8)
    with pytest.raises(RuntimeError, match=r"images\[1\] has dtype"):
        simclr_ext.resized_crop([images[0], images[1].float()], boxes, 8)
    with pytest.raises(TypeError, match="images must be a"):
        simclr_ext.resized_crop("not images", boxes, 8)
