"""The supervised ceiling: SimCLR's encoder architecture trained end to end with labels under the
same budget (epochs, batch size, crop + flip), then top-1 / top-5 on the held-out split.

Optimizer: momentum SGD (0.9, Nesterov), lr 0.1 x B/128, weight decay 5e-4: the standard CIFAR
ResNet recipe (lr 0.1 at batch 128) scaled linearly with the batch, 10% linear warm-up then cosine.
LARS is what makes SimCLR's very large batches trainable; at these batch sizes plain momentum
SGD is the established supervised recipe, so the ceiling is not handicapped by the optimizer.
"""
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .data import EvalView, OneView, normalize
from .evaluate import topk_accuracy
from .models import ResNetEncoder, CIFAR_STEM_MAX_SIZE
from .schedule import WarmupCosine


class Classifier(nn.Module):
    def __init__(self, arch, width, image_size, num_classes):
        super().__init__()
        self.encoder = ResNetEncoder(arch, width=width, cifar_stem=image_size <= CIFAR_STEM_MAX_SIZE)
        self.fc = nn.Linear(self.encoder.feature_dim, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(x))


def train_supervised(train_source, test_source, image_size: int, num_classes: int, *,
                     arch: str = "resnet18", width: int = 16, epochs: int = 30,
                     batch_size: int = 128, crop_scale=(0.08, 1.0), base_lr: float = 0.1,
                     weight_decay: float = 5e-4, device="cpu", seed: int = 0,
                     color_strength: float = 0.0, blur_p: float = 0.0, log=None) -> dict:
    """Train the encoder + a linear layer with cross-entropy; -> {'top1', 'top5', 'train_top1',
    'seconds'} (percent; train_top1 on un-augmented train images). color_strength > 0 or
    blur_p > 0 add SimCLR's color distortion (p 0.8, gray 0.2) and blur to the crop + flip, on
    the device (data.DeviceAugment): the paper's supervised column of its color study."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = torch.device(device)
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 777)
        model = Classifier(arch, width, image_size, num_classes).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    # why: the CIFAR recipe's lr 0.1 at batch 128, scaled linearly with the batch
    peak = base_lr * batch_size / 128
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=peak, momentum=0.9, nesterov=True)
    data = OneView(train_source, image_size, seed=seed, scale=crop_scale)
    steps_per_epoch = max(1, len(data) // batch_size)
    sched = WarmupCosine(peak, epochs * steps_per_epoch, int(round(0.1 * epochs * steps_per_epoch)))
    distort = None
    if color_strength > 0 or blur_p > 0:
        from .augment import ColorDistortion
        from .data import DeviceAugment

        # its own generator: the crops and the classifier's init keep their random streams
        distort = DeviceAugment(ColorDistortion, image_size, color_strength, blur_p,
                                generator=torch.Generator(device).manual_seed(seed + 778))
        if color_strength == 0:  # blur only: the color op at strength 0 is the identity
            distort.color.p = distort.color.p_gray = 0.0
    step = 0
    model.train()
    for epoch in range(epochs):
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(seed + epoch))
        total, n = 0.0, 0
        for x, y in loader:
            sched.apply(opt, step)
            x, y = x.to(device), y.to(device)
            x = distort(x) if distort is not None else normalize(x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total, n = total + loss.item(), n + 1
        if not math.isfinite(total):
            raise FloatingPointError(f"supervised loss is not finite at epoch {epoch}")
        if log is not None:
            log(epoch=epoch + 1, loss=total / max(n, 1))
    res = evaluate_classifier(model, test_source, image_size, device)
    res["train_top1"] = evaluate_classifier(model, train_source, image_size, device)["top1"]
    res["seconds"] = time.time() - t0
    return res


@torch.no_grad()
def evaluate_classifier(model, source, image_size, device, batch_size=512) -> dict:
    model.eval()
    logits, labels = [], []
    for x, y in DataLoader(EvalView(source, image_size), batch_size=batch_size):
        logits.append(model(normalize(x.to(device))).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train()
    return topk_accuracy(torch.cat(logits), torch.cat(labels))
