"""The linear evaluation protocol: frozen encoder, features h of un-augmented images (or, for the
paper's h-versus-g(h) comparison, the projection output z = g(h): feature_network), a linear
classifier trained on the train split, top-1 / top-5 on the held-out split. Also what
python/linear_eval.py and python/finetune.py share: their common flags, loading a saved run,
the random-init baseline model."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import DATASETS, EvalView, normalize

# The random-init baseline's seed offset: the same baseline network in all three scripts.
RANDOM_INIT_SEED_OFFSET = 12345


@torch.no_grad()
def extract_features(encoder, source, image_size: int, device, batch_size: int = 512,
                     num_workers: int = 0, channels_last: bool = False):
    """-> (outputs float32 [N, F] on CPU, labels int64 [N]) of `encoder` (or any network, e.g.
    encoder + classifier) in eval mode on the un-augmented, normalized views of `source`."""
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(EvalView(source, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    feats, labels = [], []
    for x, y in loader:
        x = normalize(x.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16,
                            enabled=x.device.type == "cuda"):
            h = encoder(x)
        feats.append(h.float().cpu())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


# Where linear evaluation reads a SimCLRModel: h (the encoder's pooled output, the paper's
# representation) or g(h) (the projection head's output z, what the loss sees).
FEATURES = ("h", "g")


def feature_network(model, at: str = "h"):
    """The network whose output linear evaluation reads: model.encoder for at="h", encoder then
    head for at="g" (z = g(h); with the 'none' head this is h again). Shares model's weights."""
    if at == "h":
        return model.encoder
    if at == "g":
        return torch.nn.Sequential(model.encoder, model.head)
    raise ValueError(f"at must be one of {FEATURES} (h = encoder output, g = projection head "
                     f"output), got {at!r}")


def topk_accuracy(logits, labels, ks=(1, 5)):
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        hit = (logits.topk(k_eff, dim=1).indices == labels[:, None]).any(1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def train_linear(train_x, train_y, test_x, test_y, num_classes: int, epochs: int = 100,
                 lr: float = 0.01, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0):
    """Multinomial logistic regression on standardized features (mean/std of the train split),
    Adam with cosine decay; returns {'top1', 'top5', 'train_top1'} in percent."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps = epochs * max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(max(1, n // batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(xtr[idx] @ w + b, train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        res = topk_accuracy(xte @ w + b, test_y)
        res["train_top1"] = topk_accuracy(xtr @ w + b, train_y, ks=(1,))["top1"]
    return res


def linear_eval(encoder, train_source, test_source, image_size: int, device, num_classes: int,
                epochs: int = 100, batch_size: int = 512, seed: int = 0, channels_last=False):
    ftr, ytr = extract_features(encoder, train_source, image_size, device, batch_size,
                                channels_last=channels_last)
    fte, yte = extract_features(encoder, test_source, image_size, device, batch_size,
                                channels_last=channels_last)
    return train_linear(ftr, ytr, fte, yte, num_classes, epochs=epochs, seed=seed)


def format_table(results: dict, first_column: str = "encoder") -> str:
    """Markdown table of {name: {"top1", "top5"[, "train_top1"]}} as the scripts print it."""
    train = all("train_top1" in r for r in results.values())
    cols = [first_column, "top-1 %", "top-5 %"] + (["train top-1 %"] if train else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for name, r in results.items():
        cells = [name, f"{r['top1']:.1f}", f"{r['top5']:.1f}"]
        if train:
            cells.append(f"{r['train_top1']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def random_init_model(cfg: dict, seed: int):
    """The random-init baseline: a model of the run's architecture (cfg: arch, image_size, head,
    width, proj_dim) initialized from seed + RANDOM_INIT_SEED_OFFSET, the global RNG untouched."""
    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + RANDOM_INIT_SEED_OFFSET)
        return build_model(cfg)


def load_pretrained(checkpoint: str, dataset=None, data_dir=None):
    """A run's checkpoint, its model and its data, for linear_eval.py and finetune.py.

    Returns (ckpt, cfg, model, train_source, test_source). `dataset` / `data_dir` override the
    run's (evaluate on other data). Raises checkpoint.CheckpointError or data.DataError with a
    message naming the file or directory.
    """
    from . import checkpoint as ckpt_lib
    from .data import load_sources
    from .models import build_model

    ck = ckpt_lib.load(checkpoint)
    cfg = dict(ck["config"])
    if dataset is not None:
        cfg["dataset"], cfg["data_dir"] = dataset, data_dir
    elif data_dir is not None:
        cfg["data_dir"] = data_dir
    model = build_model(cfg)
    ckpt_lib.load_model_state(model, ck["model"], ck["path"])
    _, train_src, test_src = load_sources(cfg["dataset"], cfg["data_dir"], cfg["image_size"],
                                          cfg["seed"], cfg["train_size"], cfg["test_size"],
                                          cfg.get("val_fraction", 0.1))
    return ck, cfg, model, train_src, test_src


def add_pretrained_arguments(parser):
    """The flags python/linear_eval.py and python/finetune.py share (see open_pretrained)."""
    parser.add_argument("checkpoint", help="run directory (uses its checkpoint_last.pt) or checkpoint file")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="default: the pretraining data set")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)


class Pretrained(NamedTuple):
    ckpt: dict
    cfg: dict
    model: torch.nn.Module  # on `device`
    train_source: object
    test_source: object
    device: torch.device


def open_pretrained(args) -> Pretrained:
    """Apply --threads, resolve --device and load the run named by the add_pretrained_arguments
    flags. Raises checkpoint.CheckpointError / data.DataError (messages name the file or
    directory) or ValueError (--device cuda without a GPU)."""
    from .distributed import resolve_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    ck, cfg, model, train_src, test_src = load_pretrained(args.checkpoint, args.dataset, args.data_dir)
    return Pretrained(ck, cfg, model.to(device), train_src, test_src, device)
