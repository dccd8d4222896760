"""SimCLR pretraining, then linear evaluation of the learned encoder beside a random-init one.

    python python/train.py                                   # embedded data, CPU-sized defaults
    torchrun --nproc_per_node=8 python/train.py --dataset imagefolder --data-dir /imagenet ...

One process or torchrun (NCCL on GPU, gloo on CPU); DDP + global batch norm; NT-Xent with
negatives gathered across ranks; LARS; warm-up + cosine; bf16 autocast on GPU; atomic checkpoints
every epoch and on SIGTERM / Ctrl-C; --resume continues exactly. See README for the flags.
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch

import _bootstrap  # noqa: F401  (python/_bootstrap.py: the installed simclr_ext, else this tree's in-place build)

import simclr_ext
from simclr_ext import checkpoint as ckpt_lib
from simclr_ext import distributed as D
from simclr_ext.data import DATASETS, DataError, DeviceAugment, ResumableSampler, TwoViews, load_sources
from simclr_ext.evaluate import format_table, linear_eval
from simclr_ext.models import ARCHS, HEADS, SimCLRModel, preferred_memory_format
from simclr_ext.recipe import IMPLS, build_ops, simclr_step
from simclr_ext.schedule import WarmupCosine, default_warmup_epochs, scaled_lr

# Flags that define the model and the data stream: a resumed run takes them from its checkpoint.
RUN_KEYS = ("arch", "width", "head", "proj_dim", "image_size", "dataset", "data_dir", "train_size",
            "test_size", "batch_size", "epochs", "base_lr", "lr_scaling", "warmup_epochs",
            "weight_decay", "temperature", "color_strength", "blur_p", "seed", "lars_eta", "momentum",
            "val_fraction")


def build_parser():
    p = argparse.ArgumentParser(
        description="SimCLR pretraining + linear evaluation (simclr_ext).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)  # a resumed run compares the flags given; no silent abbreviations
    a = p.add_argument_group("data")
    a.add_argument("--dataset", default="shapes", choices=DATASETS,
                   help="shapes = the embedded procedural data set (no files, no download)")
    a.add_argument("--data-dir", default=None, help="root for imagefolder / cifar10 / cifar100 / stl10")
    a.add_argument("--image-size", type=int, default=24)
    a.add_argument("--train-size", type=int, default=4000, help="shapes: training images")
    a.add_argument("--test-size", type=int, default=2000, help="shapes: held-out images")
    a.add_argument("--val-fraction", type=float, default=0.1,
                   help="imagefolder without train/ and val/: held-out fraction")
    a.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="resnet18", help=f"one of {sorted(ARCHS)}")
    m.add_argument("--width", type=int, default=16,
                   help="channels of the first ResNet stage (torchvision's ResNets: 64)")
    m.add_argument("--head", default="nonlinear", help=f"projection head, one of {HEADS}")
    m.add_argument("--proj-dim", type=int, default=128)
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks together)")
    o.add_argument("--base-lr", type=float, default=0.075,
                   help="peak lr = base_lr x sqrt(B) (or x B/256 with --lr-scaling linear)")
    o.add_argument("--lr-scaling", default="sqrt", choices=["linear", "sqrt"],
                   help="sqrt: the paper's choice for small batches / short runs; linear: its ImageNet one")
    o.add_argument("--warmup-epochs", type=float, default=None,
                   help="default: 10, or 10%% of --epochs when under 100")
    o.add_argument("--weight-decay", type=float, default=1e-6)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--lars-eta", type=float, default=0.001)
    o.add_argument("--temperature", type=float, default=0.2)
    o.add_argument("--color-strength", type=float, default=1.0)
    o.add_argument("--blur-p", type=float, default=0.5)
    o.add_argument("--impl", default="fused", choices=IMPLS,
                   help="fused simclr_ext ops, or their plain-PyTorch references")
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
    r.add_argument("--resume", default=None, metavar="RUN_DIR_OR_CKPT",
                   help="continue a run exactly from its latest checkpoint")
    r.add_argument("--eval-epochs", type=int, default=100, help="linear classifier epochs")
    r.add_argument("--no-eval", action="store_true", help="pretrain only")
    r.add_argument("--no-random-baseline", action="store_true",
                   help="skip evaluating the random-init encoder")
    r.add_argument("--log-every", type=int, default=10, help="steps between metric lines")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--stop-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: act as if SIGTERM arrived
    return p


def validate(p, args):
    if args.batch_size < 2:
        p.error(f"--batch-size must be >= 2 (NT-Xent needs negatives), got {args.batch_size}")
    if args.arch not in ARCHS:
        p.error(f"--arch: unknown architecture {args.arch!r}; expected one of {sorted(ARCHS)}")
    if args.head not in HEADS:
        p.error(f"--head: unknown projection head {args.head!r}; expected one of {list(HEADS)}")
    for name in ("epochs", "image_size", "width", "proj_dim", "train_size", "test_size", "eval_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.image_size < 8:
        p.error(f"--image-size must be >= 8, got {args.image_size}")
    for name in ("base_lr", "temperature"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.weight_decay < 0 or args.color_strength < 0 or not 0 <= args.blur_p <= 1:
        p.error("--weight-decay and --color-strength must be >= 0 and --blur-p in [0, 1]")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.dataset != "shapes":
        if args.data_dir is None:
            p.error(f"--dataset {args.dataset} needs --data-dir")
        if not os.path.isdir(args.data_dir):
            p.error(f"--data-dir {args.data_dir}: data directory does not exist")


def explicit_flags(argv):
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


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


def make_plot(run_dir, results=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    tr = [r for r in recs if r.get("kind") == "train"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if tr:
        axes[0].plot([r["step"] for r in tr], [r["loss"] for r in tr])
        axes[1].plot([r["step"] for r in tr], [r["lr"] for r in tr])
    axes[0].set(title="NT-Xent loss", xlabel="step")
    axes[1].set(title="learning rate", xlabel="step")
    if results:
        names = list(results)
        x = np.arange(len(names))
        for off, key in ((-0.2, "top1"), (0.2, "top5")):
            axes[2].bar(x + off, [results[n][key] for n in names], width=0.4, label=key)
        axes[2].set_xticks(x, names)
        axes[2].legend()
    axes[2].set(title="linear evaluation (held-out)", ylabel="accuracy %")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "metrics.png"), dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    resume_ckpt = None
    if args.resume is not None:
        try:
            resume_ckpt = ckpt_lib.load(args.resume)
        except ckpt_lib.CheckpointError as exc:
            parser.error(f"--resume: {exc}")
        given = explicit_flags(argv)
        saved = resume_ckpt["config"]
        diff = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (checkpoint: {saved.get(k)!r})"
                for k in RUN_KEYS if k in given and getattr(args, k) != saved.get(k)]
        if diff:
            parser.error(f"--resume: checkpoint {resume_ckpt['path']} does not match this run: "
                         + ", ".join(diff))
        for k in RUN_KEYS:
            setattr(args, k, saved[k])
        args.run_dir = os.path.dirname(resume_ckpt["path"])
    validate(parser, args)
    if resume_ckpt is None and args.run_dir and os.path.exists(os.path.join(args.run_dir, ckpt_lib.LAST)):
        parser.error(f"--run-dir {args.run_dir} already holds a run; continue it with "
                     f"--resume {args.run_dir}, or pick another --run-dir")
    try:
        return run(args, resume_ckpt)
    except (DataError, ckpt_lib.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args, resume_ckpt):
    info = D.init_distributed(args.device)
    dev, rank, world = info.device, info.rank, info.world_size
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {world} ranks")
    local_batch = args.batch_size // world
    use_cuda = dev.type == "cuda"
    precision = args.precision if args.precision != "auto" else ("bf16" if use_cuda else "fp32")
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
        cfg = dict(vars(args), world_size=world, precision=precision, device=str(dev),
                   torch=torch.__version__)
        with open(os.path.join(args.run_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    D.barrier()
    metrics = Metrics(args.run_dir, info.is_main)
    say = print if info.is_main else (lambda *a, **k: None)

    t0 = time.time()
    pre_src, train_src, test_src = load_sources(
        args.dataset, args.data_dir, args.image_size, args.seed, args.train_size, args.test_size,
        args.val_fraction)
    say(f"data: {args.dataset}, {len(pre_src)} pretraining / {len(train_src)} train / "
        f"{len(test_src)} held-out images, {train_src.num_classes} classes ({time.time() - t0:.1f} s)")

    views = TwoViews(pre_src, args.image_size, seed=args.seed)
    sampler = ResumableSampler(len(views), rank, world, seed=args.seed)
    steps_per_epoch = sampler.per_rank // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the data set "
                         f"({len(views)} images)")

    model = SimCLRModel(args.arch, args.image_size, args.head, args.width, args.proj_dim)
    if world > 1:
        model = D.convert_global_batchnorm(model, dev)
    model = model.to(dev)
    # channels_last where it is fast and safe (a oneDNN crash on AVX2 CPUs: docs/known-issues.md)
    memory_format = preferred_memory_format(model, dev)
    channels_last = memory_format == torch.channels_last
    model = model.to(memory_format=memory_format)
    core = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if use_cuda else None, broadcast_buffers=False)

    loss_cls, lars_cls, color_cls = build_ops(args.impl)
    criterion = loss_cls(temperature=args.temperature, gather_distributed=world > 1)
    peak_lr = scaled_lr(args.base_lr, args.batch_size, args.lr_scaling)
    optimizer = lars_cls(simclr_ext.simclr_param_groups(core, args.weight_decay), lr=peak_lr,
                         momentum=args.momentum, weight_decay=args.weight_decay, eta=args.lars_eta)
    warmup = args.warmup_epochs if args.warmup_epochs is not None else default_warmup_epochs(args.epochs)
    schedule = WarmupCosine(peak_lr, args.epochs * steps_per_epoch, int(round(warmup * steps_per_epoch)))
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    aug_gen = torch.Generator(dev).manual_seed(args.seed * 1000 + rank + 1)
    augment = DeviceAugment(color_cls, args.image_size, args.color_strength, args.blur_p,
                            generator=aug_gen, memory_format=memory_format)

    epoch, step_in_epoch, global_step = 0, 0, 0
    if resume_ckpt is not None:
        c = resume_ckpt
        ckpt_lib.load_model_state(core, c["model"], c["path"])
        optimizer.load_state_dict(c["optimizer"])
        scaler.load_state_dict(c["scaler"])
        if len(c["rng"]) != world:
            raise ckpt_lib.CheckpointError(
                f"checkpoint {c['path']} was written by {len(c['rng'])} ranks, this run has {world}")
        ckpt_lib.set_rng_state(c["rng"][rank], aug_gen)
        epoch, step_in_epoch, global_step = c["epoch"], c["step_in_epoch"], c["global_step"]
        say(f"resumed from {c['path']} at epoch {epoch}, step {global_step}")

    def save(tag):
        rngs = D.all_gather_object(ckpt_lib.rng_state(aug_gen))
        if info.is_main:
            state = {
                "format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION,
                "config": {k: getattr(args, k) for k in RUN_KEYS}, "model": core.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "rng": rngs, "tag": tag,
            }
            ckpt_lib.save_atomic(state, os.path.join(args.run_dir, ckpt_lib.LAST))
        D.barrier()

    say(f"pretraining: {args.arch} (width {args.width}, {sum(p.numel() for p in core.parameters()) / 1e6:.2f} M "
        f"params) on {dev} x {world}, {precision}, global batch {args.batch_size}, "
        f"{args.epochs} epochs x {steps_per_epoch} steps, peak lr {peak_lr:.3g}, impl {args.impl}")

    interrupted = None
    with StopFlag() as stop:
        while epoch < args.epochs and interrupted is None:
            views.set_epoch(epoch)
            sampler.set_epoch(epoch, start=step_in_epoch * local_batch)
            loader = torch.utils.data.DataLoader(
                views, batch_size=local_batch, sampler=sampler, num_workers=args.workers,
                drop_last=True, pin_memory=use_cuda, persistent_workers=False,
                generator=torch.Generator().manual_seed(args.seed + epoch))
            bar = None
            if info.is_main and not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                           dynamic_ncols=True, leave=True)
            t_last, n_last, loss_sum, loss_n = time.time(), 0, 0.0, 0
            for pair, _ in loader:
                if step_in_epoch >= steps_per_epoch:
                    break
                lr = schedule.apply(optimizer, global_step)
                b = pair.shape[0]
                # [B, 2, 3, S, S] -> [2B, 3, S, S]: all first views, then all second views
                x = pair.to(dev, non_blocking=True).transpose(0, 1).reshape(2 * b, *pair.shape[2:])
                x = augment(x)  # float32, normalized, in the model's memory format
                loss = simclr_step(model, criterion, optimizer, x, scaler, amp_dtype)
                global_step += 1
                step_in_epoch += 1
                n_last += b * world
                if global_step % args.log_every == 0 or step_in_epoch == steps_per_epoch:
                    lv = loss.item()
                    if not math.isfinite(lv):
                        raise FloatingPointError(f"loss is {lv} at step {global_step}; lower --base-lr")
                    loss_sum, loss_n = loss_sum + lv, loss_n + 1
                    now = time.time()
                    ips = n_last / max(now - t_last, 1e-9)
                    t_last, n_last = now, 0
                    metrics.log(kind="train", epoch=epoch, step=global_step, loss=lv, lr=lr, images_per_s=ips)
                    if bar is not None:
                        bar.set_postfix(loss=f"{lv:.3f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
                if bar is not None:
                    bar.update(1)
                sig = stop.signum
                if args.stop_at_step is not None and global_step == args.stop_at_step:
                    sig = signal.SIGTERM
                if D.any_rank(sig is not None, dev):
                    interrupted = sig or signal.SIGTERM
                    break
            if bar is not None:
                bar.close()
            if interrupted is None:
                epoch, step_in_epoch = epoch + 1, 0
                metrics.log(kind="epoch", epoch=epoch, step=global_step,
                            loss=loss_sum / max(loss_n, 1))
            save("interrupt" if interrupted else "epoch")
    if interrupted is not None:
        say(f"interrupted ({signal.Signals(interrupted).name}): checkpoint saved at epoch {epoch}, "
            f"step {global_step}; continue with: python python/train.py --resume {args.run_dir}")
        if info.created_group:
            torch.distributed.destroy_process_group()
        return 128 + int(interrupted)
    say(f"pretraining done in {time.time() - t0:.0f} s")
    # Every rank has finished pretraining. Only rank 0 evaluates, with no collective after this
    # point: the other ranks leave now instead of waiting in a barrier that a long evaluation
    # (ImageNet) would time out.
    D.barrier()
    if not info.is_main:
        if info.created_group:
            torch.distributed.destroy_process_group()
        return 0

    results = {}
    if not args.no_eval and info.is_main:
        t1 = time.time()
        results["SimCLR"] = linear_eval(core.encoder, train_src, test_src, args.image_size, dev,
                                        train_src.num_classes, epochs=args.eval_epochs, seed=args.seed,
                                        channels_last=channels_last)
        metrics.log(kind="eval", encoder="SimCLR", **results["SimCLR"])
        if not args.no_random_baseline:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed + 12345)
                rnd = SimCLRModel(args.arch, args.image_size, args.head, args.width, args.proj_dim)
            rnd = rnd.to(dev)
            if channels_last:
                rnd = rnd.to(memory_format=torch.channels_last)
            results["random init"] = linear_eval(rnd.encoder, train_src, test_src, args.image_size, dev,
                                                 train_src.num_classes, epochs=args.eval_epochs,
                                                 seed=args.seed, channels_last=channels_last)
            metrics.log(kind="eval", encoder="random init", **results["random init"])
        say(f"\nlinear evaluation ({args.dataset}, {len(train_src)} train / {len(test_src)} held-out, "
            f"{time.time() - t1:.0f} s):\n{format_table(results)}")
        with open(os.path.join(args.run_dir, "results.json"), "w") as f:
            json.dump({"results": results, "total_seconds": time.time() - t0}, f, indent=2)
    if info.is_main:
        make_plot(args.run_dir, results)
        say(f"\nrun directory: {args.run_dir} (config.json, metrics.jsonl, metrics.png, "
            f"{ckpt_lib.LAST}); total {time.time() - t0:.0f} s")
    if info.created_group:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
