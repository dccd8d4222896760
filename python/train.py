"""SimCLR pretraining, then linear evaluation of the learned encoder beside a random-init one.

    python python/train.py                                   # embedded data, CPU-sized defaults
    torchrun --nproc_per_node=8 python/train.py --dataset imagefolder --data-dir /imagenet ...

One process or torchrun (NCCL on GPU, gloo on CPU); DDP + global batch norm; NT-Xent with
negatives gathered across ranks; LARS; warm-up + cosine; bf16 autocast on GPU; atomic checkpoints
every epoch (and every --save-every-steps) and on SIGTERM / Ctrl-C, the previous one kept beside;
--resume continues exactly, and --resume auto (or a torchrun restart) continues the run in
--run-dir by itself; a non-finite loss stops the run before it can overwrite a good checkpoint.
See README for the flags and its "Fault tolerance" section.

A run is the steps below, in order (docs/architecture.md, section 7): parse_flags, set_up,
load_data, build_training, restore, then pretrain (train_one_epoch + save_checkpoint per epoch),
evaluate and report.
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import _bootstrap  # noqa: F401  (python/_bootstrap.py: the installed simclr_ext, else this tree's in-place build)

import simclr_ext
from simclr_ext import checkpoint as ckpt_lib
from simclr_ext import reference as simclr_reference
from simclr_ext import distributed as D
from simclr_ext.data import (DATASETS, EMBEDDED, DataError, DeviceAugment, DeviceJpegDecoder,
                             EncodedFolderSource, ResumableSampler, bad_image_count,
                             collate_encoded, collate_images, count_non_jpeg, load_sources,
                             view_seed)
from simclr_ext.defaults import augmentation_defaults, native_image_size
from simclr_ext.evaluate import format_table, linear_eval, random_init_model
from simclr_ext.models import ARCHS, HEADS, SimCLRModel, preferred_memory_format
from simclr_ext.monitor import EpochMonitor
from simclr_ext.recipe import IMPLS, build_ops, simclr_step
from simclr_ext.schedule import WarmupCosine, default_warmup_epochs, scaled_lr
from simclr_ext.supervised import train_supervised

# Flags that define the model and the data stream: a resumed run takes them from its checkpoint.
RUN_KEYS = ("arch", "width", "head", "proj_dim", "image_size", "dataset", "data_dir", "train_size",
            "test_size", "batch_size", "epochs", "base_lr", "lr_scaling", "warmup_epochs",
            "weight_decay", "temperature", "color_strength", "blur_p", "seed", "lars_eta", "momentum",
            "val_fraction", "augment", "crop_scale", "decode_device", "loss", "semi_hard",
            "margin", "gray_p", "ramp")
# --augment: SimCLRAugment's fused kernels, or the same views made per view with torchvision's
# functional ops (simclr_ext.reference.SimCLRAugment: same sampler, the baseline it is compared to)
AUGMENTS = ("fused", "torchvision")
# checkpoints written before a key existed ran with this value
RUN_KEY_BEFORE = {"crop_scale": 0.08, "decode_device": "cpu", "loss": "nt_xent",
                  "semi_hard": False, "margin": None, "gray_p": 0.2, "ramp": 0.0}
# --decode-device: where an ImageFolder's JPEGs are decoded (docs/architecture.md, 10.4): by the
# loader on the CPU, or from their bytes on the training GPU in one batched nvJPEG call per step
DECODE_DEVICES = ("cpu", "cuda")
# --loss: the contrastive objectives of the paper's Table 4 (docs/architecture.md, 2.5)
LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")
DEFAULT_MARGIN = 0.5


def build_parser():
    p = argparse.ArgumentParser(
        description="SimCLR pretraining + linear evaluation (simclr_ext).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)  # a resumed run compares the flags given; no silent abbreviations
    a = p.add_argument_group("data")
    a.add_argument("--dataset", default="shapes", choices=DATASETS,
                   help="shapes, objects = the embedded procedural data sets (no files, no download)")
    a.add_argument("--data-dir", default=None, help="root for imagefolder / cifar10 / cifar100 / stl10")
    a.add_argument("--image-size", type=int, default=None,
                   help="default: the data's native side (embedded sets 24, CIFAR 32, STL-10 96, "
                        "an ImageFolder its first image's short side), at most 224")
    a.add_argument("--train-size", type=int, default=4000, help="embedded sets: training images")
    a.add_argument("--test-size", type=int, default=2000, help="embedded sets: held-out images")
    a.add_argument("--val-fraction", type=float, default=0.1,
                   help="imagefolder without train/ and val/: held-out fraction")
    a.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    a.add_argument("--skip-bad-images", action="store_true",
                   help="imagefolder: use the next readable image in place of an unreadable one "
                        "(listed in <run-dir>/bad_images.txt, counted in the log) instead of "
                        "stopping with an error naming the file")
    a.add_argument("--decode-device", default="cpu", choices=DECODE_DEVICES,
                   help="imagefolder: decode the JPEG files on the CPU in the loader, or on the "
                        "training GPU (cuda: the loader reads the files' bytes, torchvision's "
                        "decode_jpeg decodes each batch on the device; other formats stay on the CPU)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="resnet18", help=f"one of {sorted(ARCHS)}")
    m.add_argument("--width", type=int, default=16,
                   help="channels of the first ResNet stage (torchvision's ResNets: 64)")
    m.add_argument("--head", default="nonlinear", help=f"projection head, one of {HEADS}")
    m.add_argument("--proj-dim", type=int, default=128)
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=50)
    o.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks together)")
    o.add_argument("--base-lr", type=float, default=None,
                   help="peak lr = base_lr x sqrt(B) (or x B/256 with --lr-scaling linear); default "
                        "0.15 up to 64 px (docs/recipe.md, section 7), 0.075 (the paper's) above")
    o.add_argument("--lr-scaling", default="sqrt", choices=["linear", "sqrt"],
                   help="sqrt: the paper's choice for small batches / short runs; linear: its ImageNet one")
    o.add_argument("--warmup-epochs", type=float, default=None,
                   help="default: 10, or 10%% of --epochs when under 100")
    o.add_argument("--weight-decay", type=float, default=1e-6)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--lars-eta", type=float, default=0.001)
    o.add_argument("--loss", default="nt_xent", choices=LOSSES,
                   help="the contrastive loss on z (the paper's Table 4): NT-Xent, NT-Logistic "
                        "(--temperature too) or the margin triplet loss (--margin)")
    o.add_argument("--semi-hard", action="store_true",
                   help="nt_logistic / margin_triplet: only semi-hard negatives (NT-Logistic: "
                        "those farther than the positive; margin triplet: those within the margin "
                        "of it)")
    o.add_argument("--margin", type=float, default=None,
                   help=f"margin_triplet: the margin on cosine similarities (default {DEFAULT_MARGIN})")
    o.add_argument("--temperature", type=float, default=0.1,
                   help="NT-Xent and NT-Logistic temperature")
    o.add_argument("--crop-scale", type=float, default=None,
                   help="lower bound of the random crop's area fraction; default 0.35 up to 64 px, "
                        "0.08 (the paper's) above")
    o.add_argument("--color-strength", type=float, default=None,
                   help="default 0.5 up to 64 px (the paper's CIFAR value), 1.0 above")
    o.add_argument("--blur-p", type=float, default=None,
                   help="default 0 up to 64 px (the paper's CIFAR recipe), 0.5 above")
    o.add_argument("--gray-p", type=float, default=None,
                   help="probability of turning a view to grayscale; default 0.5 up to 64 px "
                        "(docs/recipe.md, section 5), 0.2 (the paper's) above")
    o.add_argument("--ramp", type=float, default=None,
                   help="largest amplitude of the illumination ramp added to each view (0: none); "
                        "default 0.4 up to 64 px (docs/recipe.md, section 5), 0 above")
    o.add_argument("--impl", default="fused", choices=IMPLS,
                   help="fused simclr_ext ops (NT-Xent, LARS), or their plain-PyTorch references")
    o.add_argument("--augment", default="fused", choices=AUGMENTS,
                   help="the two views per image, made on the training device from the uint8 "
                        "batch: simclr_ext.SimCLRAugment (fused), or the same views per view with "
                        "torchvision's functional ops")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    r.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads; 1 is fastest for the default small model (per-op "
                        "thread sync costs more than it gains) and robust on a shared machine; "
                        "0 = torch's default")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--run-dir", default=None, help="default: runs/<date-time>")
    r.add_argument("--resume", default=None, metavar="RUN_DIR_OR_CKPT_OR_auto",
                   help="continue a run exactly from its latest checkpoint; 'auto': continue the "
                        "run in --run-dir when it has a checkpoint, else start it (what a torchrun "
                        "restart does by itself)")
    r.add_argument("--save-every-steps", type=int, default=0,
                   help="also checkpoint every N global steps (0: at epoch ends only)")
    r.add_argument("--dist-timeout", type=float, default=1800,
                   help="seconds a collective waits for the other ranks before this rank leaves "
                        "with an error (a rank that died without torchrun noticing)")
    r.add_argument("--eval-epochs", type=int, default=100, help="linear classifier epochs")
    r.add_argument("--no-eval", action="store_true", help="pretrain only")
    r.add_argument("--no-random-baseline", action="store_true",
                   help="skip evaluating the random-init encoder")
    r.add_argument("--supervised-baseline", action="store_true",
                   help="also train the same encoder with labels under the same budget (epochs, "
                        "batch, crop + flip): the supervised ceiling, in the final table")
    r.add_argument("--monitor-every", type=int, default=1,
                   help="epochs between monitor points (kNN top-1, positive cosine, alignment, "
                        "uniformity, effective rank) in metrics.jsonl; 0 = none")
    r.add_argument("--log-every", type=int, default=10, help="steps between metric lines")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--stop-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: act as if SIGTERM arrived
    r.add_argument("--nan-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: the loss of this step is NaN
    r.add_argument("--sigkill-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: the last rank SIGKILLs itself after this step (first torchrun attempt only)
    return p


def validate(p, args):
    if args.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (NT-Xent needs negatives), got {args.batch_size}")
    if args.arch not in ARCHS:
        p.error(f"--arch: unknown architecture {args.arch!r}; expected one of {sorted(ARCHS)}")
    if args.head not in HEADS:
        p.error(f"--head: unknown projection head {args.head!r}; expected one of {list(HEADS)}")
    for name in ("epochs", "width", "proj_dim", "train_size", "test_size", "eval_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.image_size is not None and args.image_size < 8:
        p.error(f"--image-size must be >= 8, got {args.image_size}")
    if args.crop_scale is not None and not 0 < args.crop_scale <= 1:
        p.error(f"--crop-scale must be in (0, 1], got {args.crop_scale}")
    if args.monitor_every < 0:
        p.error(f"--monitor-every must be >= 0, got {args.monitor_every}")
    for name in ("base_lr", "temperature"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.semi_hard and args.loss == "nt_xent":
        p.error("--semi-hard applies to --loss nt_logistic or margin_triplet; NT-Xent weighs every "
                "negative by its softmax and has no mining")
    if args.margin is not None and args.loss != "margin_triplet":
        p.error(f"--margin applies to --loss margin_triplet only, got --loss {args.loss}")
    if args.margin is not None and not args.margin > 0:
        p.error(f"--margin must be > 0, got {args.margin}")
    if (args.weight_decay < 0 or (args.color_strength is not None and args.color_strength < 0)
            or (args.blur_p is not None and not 0 <= args.blur_p <= 1)):
        p.error("--weight-decay and --color-strength must be >= 0 and --blur-p in [0, 1]")
    if args.gray_p is not None and not 0 <= args.gray_p <= 1:
        p.error(f"--gray-p must be in [0, 1], got {args.gray_p}")
    if args.ramp is not None and not (math.isfinite(args.ramp) and args.ramp >= 0):
        p.error(f"--ramp must be finite and >= 0, got {args.ramp}")
    if args.color_strength is not None and args.color_strength > 2.5:
        p.error(f"--color-strength must be <= 2.5 (its hue range 0.2 x strength must stay <= 0.5, "
                f"as torchvision requires), got {args.color_strength}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.save_every_steps < 0:
        p.error(f"--save-every-steps must be >= 0 (0: epoch ends only), got {args.save_every_steps}")
    if not args.dist_timeout > 0:
        p.error(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.decode_device == "cuda":
        if args.dataset != "imagefolder":
            p.error(f"--decode-device cuda decodes the JPEG files of an ImageFolder "
                    f"(--dataset imagefolder); --dataset {args.dataset} has none: leave it at cpu")
        if args.device == "cpu" or not torch.cuda.is_available():
            p.error("--decode-device cuda needs a CUDA device to train on"
                    + (", and --device is cpu" if args.device == "cpu" else
                       ", and none is available here (torch.cuda.is_available() is False)")
                    + ": use --decode-device cpu")
    if args.dataset not in EMBEDDED:
        if args.data_dir is None:
            p.error(f"--dataset {args.dataset} needs --data-dir")
        if not os.path.isdir(args.data_dir):
            p.error(f"--data-dir {args.data_dir}: data directory does not exist")


def explicit_flags(argv):
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def torchrun_restarts() -> int:
    """How many times torchrun's elastic agent has restarted the worker group (0: first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def say_once(*a):
    """print on global rank 0 only (before the process group exists: torchrun's RANK)."""
    if int(os.environ.get("RANK") or 0) == 0:
        print(*a, flush=True)


def find_checkpoint(parser, args):
    """The checkpoint --resume (or a torchrun restart) points at -> dict or None (start fresh).
    A run directory gives its latest usable checkpoint (checkpoint_prev.pt when the latest is
    unreadable); 'auto' starts fresh when the directory holds none."""
    auto = args.resume == "auto"
    if args.resume is None and torchrun_restarts() > 0:
        if args.run_dir is None:
            say_once(f"note: torchrun restart {torchrun_restarts()}, but without --run-dir there is "
                     f"no run to continue: starting a new one (give --run-dir to resume by itself)")
            return None
        say_once(f"torchrun restart {torchrun_restarts()}: continuing the run in {args.run_dir}")
        auto = True
    if auto:
        if args.run_dir is None:
            parser.error("--resume auto needs --run-dir (the run directory to continue or start)")
        return ckpt_lib.load_latest(args.run_dir, say_once) if os.path.isdir(args.run_dir) else None
    if args.resume is None:
        return None
    if os.path.isdir(args.resume):
        ckpt = ckpt_lib.load_latest(args.resume, say_once)
        if ckpt is None:
            raise ckpt_lib.CheckpointError(f"no checkpoint at {os.path.join(args.resume, ckpt_lib.LAST)}")
        return ckpt
    return ckpt_lib.load(args.resume)


def parse_flags(parser, argv):
    """-> (args, resume checkpoint or None). With --resume (or --resume auto / a torchrun
    restart finding a checkpoint), the flags that define the run come from the checkpoint, and
    an explicitly given one that differs from it is an error."""
    args = parser.parse_args(argv)
    try:
        resume_ckpt = find_checkpoint(parser, args)
    except ckpt_lib.CheckpointError as exc:
        parser.error(f"--resume: {exc}")
    if resume_ckpt is not None:
        given = explicit_flags(argv)
        saved = resume_ckpt["config"]
        diff = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (checkpoint: {saved.get(k)!r})"
                for k in RUN_KEYS if k in given and getattr(args, k) != saved.get(k)]
        if diff:
            parser.error(f"--resume: checkpoint {resume_ckpt['path']} does not match this run: "
                         + ", ".join(diff))
        for k in RUN_KEYS:
            setattr(args, k, saved.get(k, RUN_KEY_BEFORE.get(k)))
        args.run_dir = os.path.dirname(resume_ckpt["path"])
    validate(parser, args)
    if resume_ckpt is None and args.run_dir and os.path.exists(os.path.join(args.run_dir, ckpt_lib.LAST)):
        parser.error(f"--run-dir {args.run_dir} already holds a run; continue it with "
                     f"--resume {args.run_dir}, or pick another --run-dir")
    return args, resume_ckpt


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Metrics:
    """metrics.jsonl (one JSON object a line) in the run directory, written by rank 0."""

    def __init__(self, run_dir, enabled):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.enabled = enabled

    def log(self, **rec):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------------------------------
# Optional libraries ([train] extra): without them a run still succeeds, minus the extra
# ------------------------------------------------------------------------------------------
_NOTED = set()


def note_missing(module: str, what: str):
    """One line, once per module: what a missing optional library costs and how to get it."""
    if module not in _NOTED:
        _NOTED.add(module)
        print(f"note: {module} is not installed, so no {what} (pip install {module}, or install "
              f"simclr_ext with its [train] extra)")


def progress_bar(total, initial, desc):
    """A tqdm bar, or None when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        note_missing("tqdm", "progress bar")
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)


def make_plot(run_dir, results=None) -> bool:
    """metrics.png (loss, lr, the monitor's kNN top-1 / positive cosine / uniformity / effective
    rank per epoch, linear-evaluation accuracies); False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        note_missing("matplotlib", "metrics.png plot")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    tr = [r for r in recs if r.get("kind") == "train"]
    mon = [r for r in recs if r.get("kind") == "monitor"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    axes = axes.ravel()
    if tr:
        axes[0].plot([r["step"] for r in tr], [r["loss"] for r in tr])
        axes[1].plot([r["step"] for r in tr], [r["lr"] for r in tr])
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title="learning rate", xlabel="step")
    if results:
        names = list(results)
        x = np.arange(len(names))
        for off, key in ((-0.2, "top1"), (0.2, "top5")):
            axes[2].bar(x + off, [results[n][key] for n in names], width=0.4, label=key)
        axes[2].set_xticks(x, names)
        axes[2].legend()
    axes[2].set(title="linear evaluation (held-out)", ylabel="accuracy %")
    if mon:
        ep = [r["epoch"] for r in mon]
        axes[3].plot(ep, [r["knn_top1"] for r in mon], marker="o")
        for key in ("pos_cos", "align", "uniform"):
            axes[4].plot(ep, [r[key] for r in mon], marker="o", label=key)
        axes[4].legend()
        axes[5].plot(ep, [r["erank"] for r in mon], marker="o")
    axes[3].set(title="kNN top-1, k = 20 (held-out subset)", xlabel="epoch", ylabel="accuracy %")
    axes[4].set(title="view pairs: positive cosine, alignment, uniformity", xlabel="epoch")
    axes[5].set(title="effective rank of z", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "metrics.png"), dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------
# The steps of a run
# ------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every step reads: the flags, the process group and device, the precision, the log."""
    args: argparse.Namespace
    info: D.DistInfo
    precision: str
    amp_dtype: Optional[torch.dtype]
    metrics: Metrics
    t0: float
    skipped: int = 0  # unreadable images reported so far

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.args.run_dir, ckpt_lib.LAST)

    @property
    def bad_log(self) -> str:
        return os.path.join(self.args.run_dir, "bad_images.txt")

    def say_skipped(self, when: str, always: bool = False):
        """One line (rank 0) when --skip-bad-images has skipped more files (always: any)."""
        n = bad_image_count(self.bad_log)
        if n != self.skipped or (always and n):
            self.skipped = n
            self.say(f"{when}: skipped {n} unreadable image{'s' * (n != 1)} (listed in {self.bad_log})")
            self.metrics.log(kind="data", skipped_images=n)

    def say(self, *a, **k):
        if self.info.is_main:
            print(*a, **k)


@dataclass
class Data:
    pretrain: object  # image sources: (uint8 [3, H, W], label)
    train: object
    test: object
    sampler: ResumableSampler
    local_batch: int
    steps_per_epoch: int
    # --decode-device cuda: what the pretraining loader reads (the files' bytes) and the device
    # half that decodes a batch of them; None: the loader decodes (pretrain, collate_images)
    encoded: Optional[EncodedFolderSource] = None
    decoder: Optional[DeviceJpegDecoder] = None


class NonFiniteError(FloatingPointError):
    """The loss or the weights stopped being finite: the run diverged."""


class LossGuard:
    """The first step whose loss was not finite, recorded on the device (no host sync per step:
    a GPU keeps running ahead) and read back where the host waits anyway: at the log interval
    and before every checkpoint, so a checkpoint is never written after a non-finite loss."""

    def __init__(self, device):
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none so far

    def update(self, loss, step: int):
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad == 0), step, self.first_bad)

    def check(self, s: "Setup", pos: "Position"):
        step = int(D.all_max(self.first_bad, s.device))  # the same verdict on every rank
        if step:
            raise NonFiniteError(
                f"the loss is not finite (nan or inf) at step {step}; stopped at step "
                f"{pos.global_step} without writing a checkpoint, so {s.checkpoint_path} still "
                f"holds the last finite state. The run diverged: lower --base-lr (or check the "
                f"data) and start again")


class PoisonedLoss(torch.nn.Module):
    """Tests (--nan-at-step): the wrapped loss times NaN, so its backward poisons the weights."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, z):
        return self.criterion(z) * float("nan")


@dataclass
class Training:
    model: torch.nn.Module  # DDP-wrapped when W > 1
    core: torch.nn.Module  # the SimCLRModel itself (what is saved and evaluated)
    memory_format: torch.memory_format
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: torch.amp.GradScaler
    augment: torch.nn.Module  # SimCLRAugment (or its torchvision twin), drawing from aug_gen
    aug_gen: torch.Generator
    peak_lr: float
    guard: LossGuard


@dataclass
class Position:
    """Where pretraining stands; saved in every checkpoint."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def set_up(args) -> Setup:
    """Process group and device, precision, threads, seeds, run directory and config.json."""
    info = D.init_distributed(args.device, args.dist_timeout)
    if args.batch_size % info.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the "
                         f"{info.world_size} ranks")
    precision = args.precision if args.precision != "auto" else (
        "bf16" if info.device.type == "cuda" else "fp32")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.run_dir is None:
        args.run_dir = D.broadcast_object(os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if info.is_main:
        os.makedirs(args.run_dir, exist_ok=True)
        cfg = dict(vars(args), world_size=info.world_size, precision=precision,
                   device=str(info.device), torch=torch.__version__)
        with open(os.path.join(args.run_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    D.barrier()
    return Setup(args, info, precision, amp_dtype, Metrics(args.run_dir, info.is_main), time.time())


def load_data(s: Setup) -> Data:
    """Image sources and this rank's resumable sampler over the pretraining images."""
    a, info = s.args, s.info
    pre, train, test = load_sources(a.dataset, a.data_dir, a.image_size, a.seed, a.train_size,
                                    a.test_size, a.val_fraction, skip_bad_images=a.skip_bad_images,
                                    bad_log=s.bad_log)
    s.say(f"data: {a.dataset}, {len(pre)} pretraining / {len(train)} train / {len(test)} held-out "
          f"images, {train.num_classes} classes ({time.time() - s.t0:.1f} s)")
    sampler = ResumableSampler(len(pre), info.rank, info.world_size, seed=a.seed)
    local_batch = a.batch_size // info.world_size
    steps_per_epoch = sampler.per_rank // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {a.batch_size} is larger than the data set "
                         f"({len(pre)} images)")
    data = Data(pre, train, test, sampler, local_batch, steps_per_epoch)
    if a.decode_device == "cuda":
        data.encoded = EncodedFolderSource(pre)
        data.decoder = DeviceJpegDecoder(pre, s.device)
        other = count_non_jpeg(pre)
        if other:
            s.say(f"note: {other} of {len(pre)} pretraining files are not .jpg / .jpeg: they are "
                  f"decoded on the CPU in the loader, the JPEGs on {s.device}")
    return data


def build_training(s: Setup, data: Data) -> Training:
    """Model (global BN + DDP when W > 1, the memory format it runs fastest in), the three ops
    (--impl), LARS with SimCLR's groups, the lr schedule, the augmentation (--augment)."""
    a, dev, world = s.args, s.device, s.info.world_size
    core = SimCLRModel(a.arch, a.image_size, a.head, a.width, a.proj_dim)
    if world > 1:
        core = D.convert_global_batchnorm(core, dev)
    # channels_last where it is fast and safe (a oneDNN crash on AVX2 CPUs: docs/known-issues.md)
    memory_format = preferred_memory_format(core, dev)
    core = core.to(dev).to(memory_format=memory_format)
    model = core
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    _, lars_cls, _ = build_ops(a.impl)
    criterion = build_criterion(a, world > 1)
    peak_lr = scaled_lr(a.base_lr, a.batch_size, a.lr_scaling)
    optimizer = lars_cls(simclr_ext.simclr_param_groups(core, a.weight_decay), lr=peak_lr,
                         momentum=a.momentum, weight_decay=a.weight_decay, eta=a.lars_eta)
    warmup = a.warmup_epochs if a.warmup_epochs is not None else default_warmup_epochs(a.epochs)
    schedule = WarmupCosine(peak_lr, a.epochs * data.steps_per_epoch,
                            int(round(warmup * data.steps_per_epoch)))
    scaler = torch.amp.GradScaler(dev.type, enabled=s.precision == "fp16")
    # reseeded before every step (view_seed); the views come in the model's memory format
    aug_gen = torch.Generator(dev).manual_seed(view_seed(a.seed, 0, 0, s.info.rank))
    aug_cls = simclr_ext.SimCLRAugment if a.augment == "fused" else simclr_reference.SimCLRAugment
    augment = aug_cls(a.image_size, scale=(a.crop_scale, 1.0), color_strength=a.color_strength,
                      gray_p=a.gray_p, blur_p=a.blur_p, ramp=a.ramp,
                      generator=aug_gen, channels_last=memory_format == torch.channels_last)
    return Training(model, core, memory_format, criterion, optimizer, schedule, scaler, augment,
                    aug_gen, peak_lr, LossGuard(dev))


def build_criterion(a, gather_distributed: bool) -> torch.nn.Module:
    """The --loss module (--impl fused: simclr_ext's kernels; reference: the plain-PyTorch twins
    in simclr_ext.reference), negatives gathered across ranks when gather_distributed."""
    m = simclr_ext if a.impl == "fused" else simclr_reference
    if a.loss == "nt_xent":
        return build_ops(a.impl)[0](temperature=a.temperature, gather_distributed=gather_distributed)
    if a.loss == "nt_logistic":
        return m.NTLogisticLoss(temperature=a.temperature, semi_hard=a.semi_hard,
                                gather_distributed=gather_distributed)
    if a.loss == "margin_triplet":
        margin = DEFAULT_MARGIN if a.margin is None else a.margin
        return m.MarginTripletLoss(margin=margin, semi_hard=a.semi_hard,
                                   gather_distributed=gather_distributed)
    raise ValueError(f"--loss: unknown loss {a.loss!r}; expected one of {LOSSES}")


def restore(s: Setup, tr: Training, ckpt: dict) -> Position:
    """Model, optimizer, scaler, this rank's RNG states and the position from a checkpoint."""
    ckpt_lib.load_model_state(tr.core, ckpt["model"], ckpt["path"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scaler.load_state_dict(ckpt["scaler"])
    if len(ckpt["rng"]) != s.info.world_size:
        raise ckpt_lib.CheckpointError(
            f"checkpoint {ckpt['path']} was written by {len(ckpt['rng'])} ranks, this run has "
            f"{s.info.world_size}")
    ckpt_lib.set_rng_state(ckpt["rng"][s.info.rank], tr.aug_gen)
    pos = Position(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"])
    if s.info.is_main:
        trim_metrics(s.metrics.path, pos.global_step)
    s.say(f"resumed from {ckpt['path']} at epoch {pos.epoch}, step {pos.global_step}")
    return pos


def trim_metrics(path: str, global_step: int):
    """Drop the metric lines of steps after the checkpoint (a crashed attempt logged them, the
    resumed run logs them again), so metrics.jsonl and its plot show each step once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= global_step:
                keep.append(line)
        except ValueError:  # a line cut short by the crash
            pass
    if len(keep) != len(lines):
        with open(path, "w") as f:
            f.writelines(keep)


def save_checkpoint(s: Setup, tr: Training, pos: Position, tag: str):
    """Every rank's RNG states gathered; rank 0 writes checkpoint_last.pt atomically, the one it
    replaces kept as checkpoint_prev.pt. Nothing is written unless every loss so far and the
    weights are finite (NonFiniteError), so the last good checkpoint survives a divergence."""
    tr.guard.check(s, pos)
    # one reduction over all parameters: a non-finite gradient can poison the weights while the
    # loss of that step was still finite
    finite = torch.stack([p.detach().isfinite().all() for p in tr.core.parameters()]).all()
    if int(D.all_max((~finite).int(), s.device)):
        raise NonFiniteError(f"the weights are not finite at step {pos.global_step}; stopped "
                             f"without writing a checkpoint, so {s.checkpoint_path} still holds "
                             f"the last finite state. Lower --base-lr and start again")
    rngs = D.all_gather_object(ckpt_lib.rng_state(tr.aug_gen))
    if s.info.is_main:
        state = {
            "format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION,
            "config": {k: getattr(s.args, k) for k in RUN_KEYS}, "model": tr.core.state_dict(),
            "optimizer": tr.optimizer.state_dict(), "scaler": tr.scaler.state_dict(),
            "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch, "global_step": pos.global_step,
            "rng": rngs, "tag": tag,
        }
        ckpt_lib.save_atomic(state, s.checkpoint_path, keep_previous=True)
    D.barrier()


def epoch_loader(s: Setup, data: Data, pos: Position):
    """This rank's batches of the epoch pos.epoch, from step pos.step_in_epoch on: decoded uint8
    images only (one tensor when the data set has one size, a list otherwise), or with
    --decode-device cuda the JPEG files' bytes (data.EncodedBatch, decoded in the step)."""
    data.sampler.set_epoch(pos.epoch, start=pos.step_in_epoch * data.local_batch)
    encoded = data.encoded is not None  # --decode-device cuda: file bytes, decoded on the device
    return torch.utils.data.DataLoader(
        data.encoded if encoded else data.pretrain, batch_size=data.local_batch,
        sampler=data.sampler, num_workers=s.args.workers,
        collate_fn=collate_encoded if encoded else collate_images, drop_last=True,
        pin_memory=s.device.type == "cuda" and not encoded, persistent_workers=False,
        generator=torch.Generator().manual_seed(s.args.seed + pos.epoch))


class EpochLog:
    """One epoch's step bookkeeping: images/s, a metrics line every --log-every steps and at the
    epoch's end (the only points where the loss is read back to the host), the progress bar."""

    def __init__(self, s: Setup, data: Data, pos: Position, guard: LossGuard):
        self.s, self.steps_per_epoch, self.guard = s, data.steps_per_epoch, guard
        self.bar = None
        if s.info.is_main and not s.args.no_progress:
            self.bar = progress_bar(data.steps_per_epoch, pos.step_in_epoch,
                                    f"epoch {pos.epoch + 1}/{s.args.epochs}")
        self.t_last, self.images, self.losses = time.time(), 0, []

    def step(self, pos: Position, loss, lr: float, images: int):
        self.images += images
        if pos.global_step % self.s.args.log_every == 0 or pos.step_in_epoch == self.steps_per_epoch:
            self.guard.check(self.s, pos)  # any non-finite loss since the last check stops here
            lv = loss.item()
            self.losses.append(lv)
            now = time.time()
            ips = self.images / max(now - self.t_last, 1e-9)
            self.t_last, self.images = now, 0
            self.s.metrics.log(kind="train", epoch=pos.epoch, step=pos.global_step, loss=lv, lr=lr,
                               images_per_s=ips)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{lv:.3f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> float:
        """-> the mean of the logged losses."""
        if self.bar is not None:
            self.bar.close()
        return sum(self.losses) / max(len(self.losses), 1)


def train_one_epoch(s: Setup, data: Data, tr: Training, pos: Position, stop: StopFlag):
    """Steps until the epoch ends or a stop signal (on any rank) -> (signal or None, mean of
    the logged losses). pos advances with every step."""
    a = s.args
    log = EpochLog(s, data, pos, tr.guard)
    interrupted = None
    for images, labels in epoch_loader(s, data, pos):
        if pos.step_in_epoch >= data.steps_per_epoch:
            break
        lr = tr.schedule.apply(tr.optimizer, pos.global_step)
        b = len(images)
        if data.decoder is not None:  # JPEG bytes: one batched decode on the device
            images, labels = data.decoder(images, labels)
        elif isinstance(images, torch.Tensor):
            images = images.to(s.device, non_blocking=True)
        else:  # images of different sizes: SimCLRAugment reads them where they are
            images = [img.to(s.device, non_blocking=True) for img in images]
        # the views of this step depend on (seed, epoch, step, rank) only: exact resume
        tr.aug_gen.manual_seed(view_seed(a.seed, pos.epoch, pos.step_in_epoch, s.info.rank))
        x = tr.augment(images)  # [2B, 3, S, S]: all first views, then all second views; float32,
        #                         normalized, in the model's memory format
        criterion = tr.criterion if a.nan_at_step != pos.global_step + 1 else PoisonedLoss(tr.criterion)
        loss = simclr_step(tr.model, criterion, tr.optimizer, x, tr.scaler, s.amp_dtype)
        pos.global_step += 1
        pos.step_in_epoch += 1
        tr.guard.update(loss, pos.global_step)
        log.step(pos, loss, lr, b * s.info.world_size)
        if (a.sigkill_at_step == pos.global_step and torchrun_restarts() == 0
                and s.info.rank == s.info.world_size - 1):
            os.kill(os.getpid(), signal.SIGKILL)  # tests: a rank dies with no chance to clean up
        sig = stop.signum
        if a.stop_at_step is not None and pos.global_step == a.stop_at_step:
            sig = signal.SIGTERM
        if D.any_rank(sig is not None, s.device):  # all ranks stop at the same step
            interrupted = sig or signal.SIGTERM
            break
        if (a.save_every_steps and pos.global_step % a.save_every_steps == 0
                and pos.step_in_epoch < data.steps_per_epoch):  # the epoch's end saves anyway
            save_checkpoint(s, tr, pos, "step")
    return interrupted, log.close()


def pretrain(s: Setup, data: Data, tr: Training, pos: Position, monitor=None):
    """Epochs until the last one or a stop signal, a checkpoint after each -> signal or None.
    monitor (rank 0): its figures go to metrics.jsonl as kind "monitor" every --monitor-every
    epochs and after the last."""
    a = s.args
    s.say(f"pretraining: {a.arch} (width {a.width}, "
          f"{sum(p.numel() for p in tr.core.parameters()) / 1e6:.2f} M params) on {s.device} x "
          f"{s.info.world_size}, {s.precision}, global batch {a.batch_size}, {a.epochs} epochs x "
          f"{data.steps_per_epoch} steps, peak lr {tr.peak_lr:.3g}, impl {a.impl}, augment "
          f"{a.augment}, loss {loss_name(a)}")
    s.say(f"views: {a.image_size} px, crop {a.crop_scale:g}-1 + flip, color strength "
          f"{a.color_strength:g} (p 0.8), grayscale p {a.gray_p:g}, blur p {a.blur_p:g}, "
          f"illumination ramp {a.ramp:g}")
    interrupted = None
    with StopFlag() as stop:
        while pos.epoch < a.epochs and interrupted is None:
            interrupted, mean_loss = train_one_epoch(s, data, tr, pos, stop)
            if interrupted is None:
                pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                s.metrics.log(kind="epoch", epoch=pos.epoch, step=pos.global_step, loss=mean_loss)
                if monitor is not None and (pos.epoch % a.monitor_every == 0 or pos.epoch == a.epochs):
                    s.metrics.log(kind="monitor", epoch=pos.epoch, step=pos.global_step,
                                  **monitor(tr.core))
            save_checkpoint(s, tr, pos, "interrupt" if interrupted else "epoch")
            if a.skip_bad_images:
                s.say_skipped(f"epoch {pos.epoch}")
    return interrupted


def evaluate(s: Setup, data: Data, tr: Training) -> dict:
    """Linear evaluation (rank 0) of the pretrained encoder and of a random-init one."""
    a, t1 = s.args, time.time()
    encoders = {"SimCLR": tr.core.encoder}
    if not a.no_random_baseline:
        rnd = random_init_model(vars(a), a.seed).to(s.device).to(memory_format=tr.memory_format)
        encoders["random init"] = rnd.encoder
    results = {}
    for name, encoder in encoders.items():
        results[name] = linear_eval(encoder, data.train, data.test, a.image_size, s.device,
                                    data.train.num_classes, epochs=a.eval_epochs, seed=a.seed,
                                    channels_last=tr.memory_format == torch.channels_last)
        s.metrics.log(kind="eval", encoder=name, **results[name])
    if a.supervised_baseline:
        s.say(f"supervised baseline: the same encoder trained with labels, {a.epochs} epochs, "
              f"batch {a.batch_size}, crop {a.crop_scale}-1 + flip")
        sup = train_supervised(data.train, data.test, a.image_size, data.train.num_classes,
                               arch=a.arch, width=a.width, epochs=a.epochs,
                               batch_size=a.batch_size, crop_scale=(a.crop_scale, 1.0),
                               device=s.device, seed=a.seed)
        results["supervised"] = {k: sup[k] for k in ("top1", "top5", "train_top1")}
        s.metrics.log(kind="eval", encoder="supervised", **sup)
    s.say(f"\nlinear evaluation ({a.dataset}, {len(data.train)} train / {len(data.test)} held-out, "
          f"{time.time() - t1:.0f} s):\n{format_table(results)}")
    if "supervised" in results and results["supervised"]["top1"] > 0:
        frac = 100 * results["SimCLR"]["top1"] / results["supervised"]["top1"]
        s.say(f"SimCLR reaches {frac:.0f}% of the supervised ceiling "
              f"({results['SimCLR']['top1']:.1f}% / {results['supervised']['top1']:.1f}% top-1)")
    return results


def report(s: Setup, results: dict):
    """results.json (when evaluated), metrics.png, the run directory's contents. Nothing here
    fails a run that has already succeeded: a plot that cannot be drawn is a one-line note."""
    a = s.args
    if a.skip_bad_images:
        s.say_skipped("run", always=True)
    files = ["config.json", "metrics.jsonl", ckpt_lib.LAST]
    if os.path.exists(os.path.join(a.run_dir, ckpt_lib.PREV)):
        files.append(ckpt_lib.PREV)
    if os.path.exists(s.bad_log):
        files.append(os.path.basename(s.bad_log))
    if not a.no_eval:
        with open(os.path.join(a.run_dir, "results.json"), "w") as f:
            json.dump({"results": results, "total_seconds": time.time() - s.t0}, f, indent=2)
        files.append("results.json")
    try:
        if make_plot(a.run_dir, results):
            files.append("metrics.png")
    except Exception as exc:  # e.g. a broken matplotlib backend: the run's results are saved
        print(f"note: metrics.png could not be drawn ({type(exc).__name__}: {exc})")
    s.say(f"\nrun directory: {a.run_dir} ({', '.join(files)}); total {time.time() - s.t0:.0f} s")


def finish(s: Setup, code: int) -> int:
    if s.info.created_group:
        torch.distributed.destroy_process_group()
    return code


def resolve_defaults(args):
    """Fill the flags left at None whose default depends on the data: the image size
    from the data, then crop scale, color strength, blur, grayscale, ramp and the base learning
    rate by image size (simclr_ext/defaults.py).
    A resumed run has them all from its checkpoint."""
    if args.image_size is None:
        args.image_size = native_image_size(args.dataset, args.data_dir)
    for k, v in augmentation_defaults(args.image_size).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.loss == "margin_triplet" and args.margin is None:
        args.margin = DEFAULT_MARGIN


def loss_name(a) -> str:
    """--loss with its knobs, as the log and the studies name it."""
    extra = {"nt_xent": f"t={a.temperature}", "nt_logistic": f"t={a.temperature}",
             "margin_triplet": f"m={a.margin if a.margin is not None else DEFAULT_MARGIN}"}[a.loss]
    return f"{a.loss} ({extra}{', semi-hard' if a.semi_hard else ''})"


def build_monitor(s: Setup, data: Data, tr: Training) -> Optional[EpochMonitor]:
    """The per-epoch monitor (rank 0, --monitor-every > 0): fixed subsets and pairs, its own
    augmentation generator, so it leaves the training's random streams alone."""
    a = s.args
    if a.monitor_every == 0 or not s.info.is_main:
        return None
    _, _, color_cls = build_ops(a.impl)
    aug = DeviceAugment(color_cls, a.image_size, a.color_strength, a.blur_p,
                        generator=torch.Generator(s.device).manual_seed(a.seed + 777),
                        memory_format=tr.memory_format, gray_p=a.gray_p, ramp=a.ramp)
    return EpochMonitor(data.train, data.test, a.image_size, aug, s.device, a.crop_scale,
                        seed=a.seed, channels_last=tr.memory_format == torch.channels_last)


def run(args, resume_ckpt) -> int:
    resolve_defaults(args)
    s = set_up(args)
    data = load_data(s)
    tr = build_training(s, data)
    pos = restore(s, tr, resume_ckpt) if resume_ckpt is not None else Position()
    interrupted = pretrain(s, data, tr, pos, build_monitor(s, data, tr))
    if interrupted is not None:
        s.say(f"interrupted ({signal.Signals(interrupted).name}): checkpoint saved at epoch "
              f"{pos.epoch}, step {pos.global_step}; continue with: python python/train.py "
              f"--resume {args.run_dir}")
        return finish(s, 128 + int(interrupted))
    s.say(f"pretraining done in {time.time() - s.t0:.0f} s")
    # Only rank 0 evaluates, with no collective after this barrier: the other ranks leave now
    # instead of waiting in a barrier that a long evaluation (ImageNet) would time out.
    D.barrier()
    if not s.info.is_main:
        return finish(s, 0)
    results = {} if args.no_eval else evaluate(s, data, tr)
    report(s, results)
    return finish(s, 0)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, resume_ckpt = parse_flags(build_parser(), argv)
    try:
        return run(args, resume_ckpt)
    except (DataError, ckpt_lib.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a collective that failed: name the rank that was lost
        if D.world_size() > 1 and D.is_collective_failure(exc):
            lost = D.roll_call(wait_s=min(args.dist_timeout, 60))
            if lost != []:
                who = (f"rank {', '.join(map(str, lost))} did not answer a roll call: it died "
                       f"(or hangs); its own log says why" if lost else
                       "the process group's store is unreachable too: its host (torchrun's "
                       "agent, or rank 0) died")
                print(f"error: rank {torch.distributed.get_rank()} of "
                      f"{torch.distributed.get_world_size()} lost its peers, {who}. "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})", file=sys.stderr)
                return 4
        raise  # not a lost rank
    except NonFiniteError as exc:
        if int(os.environ.get("RANK") or 0) == 0:  # every rank stops with the same verdict
            print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
