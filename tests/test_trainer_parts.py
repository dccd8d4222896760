"""The trainer's library parts: embedded data set, views, sampler, models, schedule, blur, the
device-side augmentation, the uint8 batches and per-step view seeds of the SimCLRAugment path."""
import math

import pytest
import torch

import simclr_ext
from simclr_ext import reference
from simclr_ext.data import (IMAGENET_MEAN, IMAGENET_STD, DataError, DeviceAugment, OneView,
                             ResumableSampler, TensorSource, TwoViews, collate_images,
                             gaussian_blur, load_sources, make_shapes, normalize, view_seed)
from simclr_ext.models import SimCLRModel
from simclr_ext.schedule import WarmupCosine, default_warmup_epochs, scaled_lr


def test_shapes_is_deterministic_and_splits_differ():
    a, la = make_shapes(64, 16, seed=3)
    b, lb = make_shapes(64, 16, seed=3)
    c, _ = make_shapes(64, 16, seed=4)
    assert a.dtype == torch.uint8 and a.shape == (64, 3, 16, 16)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert la.bincount(minlength=10).min() >= 6  # balanced classes
    _, tr, te = load_sources("shapes", image_size=16, train_size=50, test_size=30)
    assert len(tr) == 50 and len(te) == 30 and not torch.equal(tr.images[:30], te.images)


def test_views_depend_only_on_seed_epoch_index():
    src = TensorSource(*make_shapes(8, 16, seed=0), 10)
    v = TwoViews(src, 16, seed=1)
    x1, y1 = v[5]
    x2, _ = v[5]
    assert x1.shape == (2, 3, 16, 16) and x1.dtype == torch.uint8 and y1 == int(src.labels[5])
    assert torch.equal(x1, x2) and not torch.equal(x1[0], x1[1])
    v.set_epoch(1)
    assert not torch.equal(v[5][0], x1)


def test_one_view_is_the_first_of_the_two_views():
    src = TensorSource(*make_shapes(6, 20, seed=int(torch.randint(0, 1000, ()))), 10)
    two, one = TwoViews(src, 16, seed=5), OneView(src, 16, seed=5)
    for epoch in (0, 3):
        two.set_epoch(epoch)
        one.set_epoch(epoch)
        for i in range(len(src)):
            x, y = one[i]
            assert x.shape == (3, 16, 16) and y == two[i][1]
            assert torch.equal(x, two[i][0][0])


def test_sampler_partitions_and_resumes():
    full = [ResumableSampler(10, r, 3, seed=0) for r in range(3)]
    for s in full:
        s.set_epoch(2)
    idx = [s.indices() for s in full]
    assert all(len(i) == 4 for i in idx) and set(sum(idx, [])) == set(range(10))
    full[1].set_epoch(2, start=3)
    assert list(full[1]) == idx[1][3:]


def test_imagefolder_auto_split_and_errors(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("RGB", (20, 24), (i * 40, 10, 200)).save(tmp_path / c / f"{i}.png")
    pre, tr, te = load_sources("imagefolder", str(tmp_path), image_size=16, val_fraction=0.2)
    assert len(tr) == 8 and len(te) == 2 and tr.num_classes == 2
    img, lab = te[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 24, 20)
    assert TwoViews(pre, 16)[0][0].shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="does not exist"):
        load_sources("imagefolder", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="unknown dataset"):
        load_sources("mnist", str(tmp_path))


@pytest.mark.parametrize("arch, head, feat", [("resnet18", "nonlinear", 64), ("resnet50", "linear", 256),
                                               ("resnet34", "none", 64)])
def test_model_shapes(arch, head, feat):
    m = SimCLRModel(arch, 16, head, width=8, proj_dim=12)
    h, z = m(torch.randn(4, 3, 16, 16))
    assert h.shape == (4, feat) and z.shape == (4, feat if head == "none" else 12)
    assert isinstance(m.encoder.maxpool, torch.nn.Identity)  # CIFAR stem at 16 px
    assert not isinstance(SimCLRModel(arch, 96, head, width=8).encoder.maxpool, torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown architecture"):
        SimCLRModel("vgg", 16)


def test_schedule_warmup_then_cosine():
    s = WarmupCosine(peak_lr=1.0, total_steps=100, warmup_steps=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5) and s(99) < 0.01
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8) and scaled_lr(0.075, 256, "sqrt") == pytest.approx(1.2)
    assert default_warmup_epochs(100) == 10 and default_warmup_epochs(20) == pytest.approx(2)


def test_gaussian_blur_per_image_sigma():
    x = torch.rand(3, 3, 12, 12)
    y = gaussian_blur(x, torch.tensor([0.1, 1.0, 2.0]), 5)
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma 0.1: the kernel is a delta
    assert y[2].std() < y[1].std() < x[1].std()
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.05)
    assert math.isclose(gaussian_blur(torch.ones(1, 3, 8, 8), torch.tensor([1.5]), 3).mean().item(), 1.0,
                        rel_tol=1e-6)


@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_blur_commutes_with_per_channel_normalization(kernel_size):
    # weights that sum to 1 and reflect padding: blur((x - m) / s) == (blur(x) - m) / s per channel,
    # which is what lets DeviceAugment normalize in the color kernel before blurring
    b = 5
    x = torch.rand(b, 3, 12, 14)
    mean, std = torch.rand(3) * 0.8, torch.rand(3) * 0.5 + 0.1
    sigma = 0.1 + 1.9 * torch.rand(b)
    m, s = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
    torch.testing.assert_close(gaussian_blur((x - m) / s, sigma, kernel_size),
                               (gaussian_blur(x, sigma, kernel_size) - m) / s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("blur_p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("size", [24, 40])  # blur kernels 3 and 5
def test_device_augment_equals_color_then_blur_then_normalize(memory_format, blur_p, size):
    """The fused path (normalization in the color kernel, blur after it, the model's memory
    format written directly) against the plain composition with the same generator draws."""
    seed = int(torch.randint(0, 2**31, ()))
    b = 12
    x = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)
    aug = DeviceAugment(simclr_ext.ColorDistortion, size, 1.0, blur_p,
                        generator=torch.Generator().manual_seed(seed), memory_format=memory_format)
    got = aug(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert got.is_contiguous(memory_format=memory_format)

    g = torch.Generator().manual_seed(seed)
    y = simclr_ext.ColorDistortion(1.0, 0.8, 0.2, generator=g)(x)  # [0, 1], not normalized
    if blur_p > 0:
        r = torch.rand(2, b, generator=g)
        y = torch.where((r[1] < blur_p).view(b, 1, 1, 1),
                        gaussian_blur(y, 0.1 + 1.9 * r[0], aug.kernel_size), y)
    expected = normalize(y, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
    assert torch.equal(aug.generator.get_state(), g.get_state())  # same draws, same order


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_both_impls_run_a_training_step(impl):
    # --impl fused / reference must expose the same interface to the trainer (build_ops), and a
    # step with either changes the parameters and gives a finite loss.
    from simclr_ext.recipe import build_ops, simclr_step

    torch.manual_seed(0)
    loss_cls, lars_cls, color_cls = build_ops(impl)
    model = SimCLRModel("resnet18", 16, "nonlinear", width=8)
    opt = lars_cls(simclr_ext.simclr_param_groups(model, 1e-6), lr=0.3, momentum=0.9,
                   weight_decay=1e-6)
    augment = DeviceAugment(color_cls, 16, 1.0, 0.5, generator=torch.Generator().manual_seed(0))
    views = augment(torch.randint(0, 256, (2 * 8, 3, 16, 16), dtype=torch.uint8))
    before = [p.detach().clone() for p in model.parameters()]
    loss = simclr_step(model, loss_cls(temperature=0.5), opt, views)
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_collate_images_stacks_one_size_and_lists_mixed_sizes():
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ())))
    same = [(torch.randint(0, 256, (3, 12, 10), generator=g, dtype=torch.uint8), i) for i in range(4)]
    images, labels = collate_images(same)
    assert images.shape == (4, 3, 12, 10) and images.dtype == torch.uint8
    assert torch.equal(labels, torch.arange(4)) and torch.equal(images[2], same[2][0])
    mixed = same[:2] + [(torch.zeros(3, 7, 9, dtype=torch.uint8), 9)]
    images, labels = collate_images(mixed)
    assert isinstance(images, list) and [im.shape for im in images] == [(3, 12, 10)] * 2 + [(3, 7, 9)]
    assert labels.tolist() == [0, 1, 9]


def test_view_seed_is_a_function_of_seed_epoch_step_rank():
    seeds = {view_seed(s, e, t, r) for s in range(2) for e in range(3) for t in range(4) for r in range(2)}
    assert len(seeds) == 48 and view_seed(1, 2, 3, 1) == view_seed(1, 2, 3, 1)
    assert all(0 <= x < 2**63 for x in seeds)


def test_trainer_augments_fused_and_torchvision_make_the_same_views():
    # what python/train.py builds for --augment fused / torchvision, reseeded as in a step
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    out = {}
    for name, cls in (("fused", simclr_ext.SimCLRAugment), ("torchvision", reference.SimCLRAugment)):
        g = torch.Generator()
        aug = cls(16, color_strength=1.0, blur_p=0.5, generator=g, channels_last=True)
        g.manual_seed(view_seed(0, 1, 2, 0))
        out[name] = aug(images)
    assert out["fused"].shape == (12, 3, 16, 16)
    assert out["fused"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out["fused"], out["torchvision"], atol=1e-4, rtol=0)


def test_objects_is_deterministic_balanced_and_splits_differ():
    from simclr_ext.objects import OBJECT_NAMES, make_objects

    seed = int(torch.randint(0, 1000, ()).item())
    a, la = make_objects(60, 20, seed=seed)
    b, lb = make_objects(60, 20, seed=seed)
    c, _ = make_objects(60, 20, seed=seed + 1)
    assert a.dtype == torch.uint8 and a.shape == (60, 3, 20, 20) and la.dtype == torch.int64
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert la.bincount(minlength=len(OBJECT_NAMES)).tolist() == [6] * 10  # balanced classes
    _, tr, te = load_sources("objects", image_size=16, train_size=40, test_size=20)
    assert tr.num_classes == 10 and len(tr) == 40 and not torch.equal(tr.images[:20], te.images)
    with pytest.raises(ValueError, match="num_classes"):
        make_objects(4, 16, num_classes=11)


def test_objects_class_is_not_in_global_color_or_layout_statistics():
    # the nuisances (colors, position, background) are drawn independently of the class: the
    # per-class mean images are far closer to each other than two single images are
    from simclr_ext.objects import make_objects

    x, y = make_objects(1000, 24, seed=int(torch.randint(0, 1000, ()).item()))
    means = torch.stack([x[y == k].float().mean(0) for k in range(10)])
    spread_means = (means - means.mean(0)).abs().mean()
    spread_images = (x[:100].float() - x[100:200].float()).abs().mean()
    assert spread_means < 0.25 * spread_images
