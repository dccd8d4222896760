"""Fine-tune a SimCLR checkpoint on a labeled fraction of the training split (the paper's
semi-supervised setting, 1% or 10% of the labels, class-balanced): encoder + a new zero-initialized
linear layer trained together (momentum SGD, random crops and flips), then top-1 / top-5 on the
held-out split.

    python python/finetune.py runs/20260101-120000 --label-fraction 0.1
    python python/finetune.py runs/x --label-fraction 0.01 --compare-scratch   # also from random init
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

import _bootstrap  # noqa: F401  (python/_bootstrap.py: the installed simclr_ext, else this tree's in-place build)

from simclr_ext.checkpoint import CheckpointError
from simclr_ext.data import DataError, OneView, normalize
from simclr_ext.evaluate import (add_pretrained_arguments, extract_features, format_table,
                                 open_pretrained, random_init_model, topk_accuracy)


def labeled_subset(labels: torch.Tensor, fraction: float, seed: int):
    """A class-balanced, seeded subset: round(fraction x class size) (at least 1) per class."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        k = max(1, int(round(fraction * idx.numel())))
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(keep).sort().values


class Subset(torch.utils.data.Dataset):
    def __init__(self, source, idx):
        self.source, self.idx = source, idx.tolist()
        self.num_classes = source.num_classes

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.source[self.idx[i]]


def finetune(encoder, feat_dim, train_src, test_src, image_size, dev, epochs, batch_size, lr, seed):
    head = torch.nn.Linear(feat_dim, train_src.num_classes)
    torch.nn.init.zeros_(head.weight)  # zero-initialized logits layer, as SimCLR's fine-tuning
    torch.nn.init.zeros_(head.bias)
    net = torch.nn.Sequential(encoder, head).to(dev)
    # SimCLR's fine-tuning recipe: momentum SGD (Nesterov), no weight decay, no warm-up,
    # crops + flips only
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True)
    views = OneView(train_src, image_size, seed=seed)
    bs = min(batch_size, len(train_src))
    steps = epochs * max(1, len(train_src) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        views.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(views, batch_size=bs, shuffle=True, drop_last=True, generator=g)
        for x, y in loader:
            loss = F.cross_entropy(net(normalize(x.to(dev))), y.to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    logits, labels = extract_features(net, test_src, image_size, dev)
    return topk_accuracy(logits, labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pretrained_arguments(p)
    p.add_argument("--label-fraction", type=float, default=0.1, help="e.g. 0.01 or 0.1")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01, help="momentum SGD learning rate (cosine decay)")
    p.add_argument("--compare-scratch", action="store_true", help="also train from random init")
    args = p.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        p.error(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    try:
        run = open_pretrained(args)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sub = Subset(run.train_source, labeled_subset(run.train_source.labels, args.label_fraction, args.seed))
    encoders = {"SimCLR fine-tuned": run.model.encoder}
    if args.compare_scratch:
        encoders["random init, supervised"] = random_init_model(run.cfg, args.seed).encoder
    res = {name: finetune(enc, enc.feature_dim, sub, run.test_source, run.cfg["image_size"],
                          run.device, args.epochs, args.batch_size, args.lr, args.seed)
           for name, enc in encoders.items()}
    print(f"fine-tuning on {len(sub)} labeled images ({100 * args.label_fraction:g}% of "
          f"{run.cfg['dataset']} train):")
    print(format_table(res, "model"))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
