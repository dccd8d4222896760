"""Which knobs limit SimCLR at the embedded data sets' scale: short pretraining runs on both
embedded sets (shapes, objects), one knob changed at a time from a base recipe, each scored by
linear evaluation and a kNN monitor, beside random init and the supervised ceiling.

    python benchmarks/recipe_study.py --plan rank --out benchmarks/results/recipe_study.json
    python benchmarks/recipe_study.py --plan rank --only objects:crop=0.2 ...     # one variant

Every run is appended to the JSON file as soon as it finishes (a killed study keeps what it
measured; a rerun skips variants already in the file unless --redo). docs/recipe.md has the
findings. The loop is the trainer's (TwoViews -> DeviceAugment -> simclr_step with the fused ops,
LARS, warm-up + cosine); it is repeated here so the study does not depend on python/train.py.
"""
import argparse
import json
import math
import os
import platform
import time

import torch

import harness  # noqa: F401,E402  first: puts an in-place build ahead of an installed simclr_ext

from simclr_ext import simclr_param_groups  # noqa: E402
from simclr_ext.data import DeviceAugment, TwoViews, load_sources  # noqa: E402
from simclr_ext.evaluate import extract_features, train_linear  # noqa: E402
from simclr_ext.models import SimCLRModel, preferred_memory_format  # noqa: E402
from simclr_ext.monitor import embedding_stats, knn_top1  # noqa: E402
from simclr_ext.recipe import build_ops, simclr_step  # noqa: E402
from simclr_ext.schedule import WarmupCosine, scaled_lr  # noqa: E402
from simclr_ext.supervised import train_supervised  # noqa: E402

# The recipe before this study (python/train.py's defaults), at a short budget.
BASE = dict(image_size=None, crop=0.08, color=1.0, blur=0.5, base_lr=0.075, lr_scaling="sqrt",
            temperature=0.2, width=16, epochs=15, batch_size=128, train_size=2000, test_size=1000,
            crop_max=1.0, ramp=0.0, gray=0.2, chperm=0.0)
# native sizes of the embedded sets as the study renders them
NATIVE = {"shapes": 24, "objects": 24}

# BASE, the candidate (the paper's CIFAR augmentation: color 0.5, no blur; a crop lower bound
# that keeps small objects in view), then one knob of the candidate at a time back or beyond
CAND = {"crop": 0.35, "color": 0.5, "blur": 0.0}
RANK = [{}, CAND] + [dict(CAND, **k) for k in (
    {"crop": 0.2}, {"crop": 0.08}, {"color": 1.0}, {"blur": 0.5}, {"temperature": 0.5},
    {"base_lr": 0.15}, {"base_lr": 0.0375})]


def channel_perm(x, p, gen):
    """With probability p per view, a random permutation of the RGB channels."""
    n = x.shape[0]
    perm = torch.rand(n, 3, generator=gen, device=x.device).argsort(1)
    on = torch.rand(n, generator=gen, device=x.device) < p
    perm = torch.where(on[:, None], perm, torch.arange(3, device=x.device))
    return torch.gather(x, 1, perm.view(n, 3, 1, 1).expand_as(x))


def variant_name(v):
    return ",".join(f"{k}={v[k]}" for k in sorted(v)) or "base"


def pretrain(cfg, pre_src, dev, seed=0, monitor=None, log=None):
    """SimCLR pretraining with cfg's knobs; -> (model, augment, channels_last, per-epoch records)."""
    torch.manual_seed(seed)
    size = cfg["image_size"]
    views = TwoViews(pre_src, size, seed=seed, scale=(cfg["crop"], cfg.get("crop_max", 1.0)))
    model = SimCLRModel("resnet18", size, "nonlinear", cfg["width"], 128).to(dev)
    cl = preferred_memory_format(model, dev) == torch.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    loss_cls, lars_cls, color_cls = build_ops("fused")
    crit = loss_cls(temperature=cfg["temperature"])
    peak = scaled_lr(cfg["base_lr"], cfg["batch_size"], cfg["lr_scaling"])
    opt = lars_cls(simclr_param_groups(model, 1e-6), lr=peak, momentum=0.9,
                   weight_decay=1e-6, eta=0.001)
    spe = len(views) // cfg["batch_size"]
    sched = WarmupCosine(peak, cfg["epochs"] * spe, int(round(0.1 * cfg["epochs"] * spe)))
    aug = DeviceAugment(color_cls, size, cfg["color"], cfg["blur"],
                        generator=torch.Generator(dev).manual_seed(seed + 1),
                        memory_format=torch.channels_last if cl else torch.contiguous_format,
                        gray_p=cfg["gray"], ramp=cfg["ramp"]).to(dev)
    perm_gen = torch.Generator(dev).manual_seed(seed + 2)
    step, recs = 0, []
    for epoch in range(cfg["epochs"]):
        views.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(views, batch_size=cfg["batch_size"], shuffle=True,
                                             drop_last=True,
                                             generator=torch.Generator().manual_seed(seed + epoch))
        tot, n = 0.0, 0
        for pair, _ in loader:
            sched.apply(opt, step)
            b = pair.shape[0]
            x = pair.to(dev).transpose(0, 1).reshape(2 * b, *pair.shape[2:])
            if cfg.get("chperm", 0.0) > 0:
                x = channel_perm(x, cfg["chperm"], perm_gen)
            x = aug(x)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = simclr_step(model, crit, opt, x)
            step += 1
            tot, n = tot + loss.item(), n + 1
        rec = {"epoch": epoch + 1, "loss": tot / max(n, 1)}
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"loss is not finite at epoch {epoch + 1}")
        if monitor is not None and ((epoch + 1) % monitor["every"] == 0 or epoch + 1 == cfg["epochs"]):
            rec.update(monitor["fn"](model, aug, cl))
        recs.append(rec)
        if log:
            log(rec)
    return model, aug, cl, recs


@torch.no_grad()
def pair_stats(model, aug, test_src, size, dev, crop, cl=False, seed=0, n_pairs=512):
    """View-pair statistics (positive cosine, alignment, uniformity, effective rank) of z on
    two augmented views of held-out images, the model in eval mode."""
    tv = TwoViews(test_src, size, seed=seed + 99, scale=(crop, 1.0))
    pairs = torch.stack([tv[i][0] for i in range(min(n_pairs, len(test_src)))])
    b = pairs.shape[0]
    was = model.training
    model.eval()
    x = aug(pairs.to(dev).transpose(0, 1).reshape(2 * b, *pairs.shape[2:]))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    _, z = model(x)
    model.train(was)
    return embedding_stats(z[:b], z[b:])


def make_monitor(train_src, test_src, size, dev, crop, every, seed=0):
    """Per-epoch: kNN top-1 (bank: the train split) and view-pair statistics."""
    def fn(model, aug, cl):
        ftr, ytr = extract_features(model.encoder, train_src, size, dev, channels_last=cl)
        fte, yte = extract_features(model.encoder, test_src, size, dev, channels_last=cl)
        out = {"knn_top1": knn_top1(ftr, ytr, fte, yte, k=20)}
        out.update(pair_stats(model, aug, test_src, size, dev, crop, cl, seed))
        return out
    return {"fn": fn, "every": every}


def linear(encoder, tr, te, size, dev, k, seed=0):
    ftr, ytr = extract_features(encoder, tr, size, dev)
    fte, yte = extract_features(encoder, te, size, dev)
    res = train_linear(ftr, ytr, fte, yte, k, epochs=100, seed=seed)
    res["knn_top1"] = knn_top1(ftr, ytr, fte, yte, k=20)
    return res


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def report(path):
    """Markdown tables of a study file: one per data set and budget."""
    data = json.load(open(path))
    groups = {}
    for r in data["runs"]:
        groups.setdefault(r["key"].split("|")[0], []).append(r)
    print(f"machine: {data.get('machine')}\n")
    for budget, runs in groups.items():
        rnd = next((r for r in runs if r["kind"] == "random init"), None)
        print(f"#### {budget}\n")
        print("| run | linear top-1 % | kNN top-1 % | final loss | pos. cosine | align | uniform | eff. rank | s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in runs:
            name = {"random init": "random init", "supervised": f"supervised (crop {r['config']['crop']})"}.get(r["kind"], r.get("variant"))
            loss = f"{r['epochs_log'][-1]['loss']:.2f}" if "epochs_log" in r else "-"
            st = [f"{r[k]:.2f}" if k in r else "-" for k in ("pos_cos", "align", "uniform")]
            er = f"{r['erank']:.1f}" if "erank" in r else "-"
            delta = f" ({r['top1'] - rnd['top1']:+.1f})" if rnd and r["kind"] == "simclr" else ""
            knn = f"{r['knn_top1']:.1f}" if "knn_top1" in r else "-"
            print(f"| {name} | {r['top1']:.1f}{delta} | {knn} | {loss} | {' | '.join(st)} | {er} | {r['seconds']:.0f} |")
        print()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", action="store_true", help="print the tables of --out and exit")
    p.add_argument("--plan", default="rank", choices=["rank", "single"])
    p.add_argument("--datasets", default="objects,shapes")
    p.add_argument("--only", default=None,
                   help="run only these, e.g. 'objects:base;shapes:crop=0.2' (knob=value,knob=value)")
    p.add_argument("--set", default="", help="override BASE knobs for every run, e.g. epochs=30,train_size=4000")
    p.add_argument("--out", default="benchmarks/results/recipe_study.json")
    p.add_argument("--monitor-every", type=int, default=0, help="epochs between monitor points (0: none)")
    p.add_argument("--baselines", default="random", help="random or none (the supervised ceiling is a job: 'objects:kind=supervised,crop=0.35')")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.report:
        return report(args.out)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")

    def parse_kv(s):
        out = {}
        for kv in filter(None, s.split(",")):
            k, v = kv.split("=")
            if k not in BASE and k != "kind":
                raise SystemExit(f"unknown knob {k!r}; expected one of {sorted(BASE)}")
            out[k] = v if k in ("lr_scaling", "kind") else (int(float(v)) if k in ("width", "epochs", "batch_size", "train_size", "test_size", "image_size") else float(v))
        return out

    base = dict(BASE, **parse_kv(args.set))
    if args.only:
        jobs = []
        for item in args.only.split(";"):
            ds, _, v = item.partition(":")
            jobs.append((ds, {} if v in ("", "base") else parse_kv(v)))
    else:
        jobs = [(ds, v) for v in RANK for ds in args.datasets.split(",")]

    data = json.load(open(args.out)) if os.path.exists(args.out) else {"runs": []}
    data["machine"] = f"{cpu_name()}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, {args.threads} thread(s)"

    def save():
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(data, f, indent=1)
        os.replace(args.out + ".tmp", args.out)

    def done(key):
        return any(r["key"] == key for r in data["runs"]) and not args.redo

    sources = {}
    for ds, v in jobs:
        cfg = dict(base, **v)
        cfg["image_size"] = cfg["image_size"] or NATIVE[ds]
        skey = (ds, cfg["image_size"], cfg["train_size"], cfg["test_size"])
        if skey not in sources:
            _, tr, te = load_sources(ds, image_size=cfg["image_size"], seed=args.seed,
                                     train_size=cfg["train_size"], test_size=cfg["test_size"])
            sources[skey] = (tr, te)
        tr, te = sources[skey]
        budget = f"{ds}/{cfg['image_size']}px/{cfg['train_size']}/{cfg['epochs']}ep/B{cfg['batch_size']}/w{cfg['width']}"
        # baselines once per data set and budget
        if "random" in args.baselines and not done(budget + "|random"):
            torch.manual_seed(args.seed + 12345)
            rnd = SimCLRModel("resnet18", cfg["image_size"], "nonlinear", cfg["width"], 128)
            t = time.time()
            res = linear(rnd.encoder, tr, te, cfg["image_size"], dev, tr.num_classes)
            data["runs"].append({"key": budget + "|random", "dataset": ds, "kind": "random init",
                                 "config": cfg, **res, "seconds": time.time() - t})
            print(f"[{budget}] random init: {res}", flush=True)
            save()
        supervised = v.pop("kind", "simclr") == "supervised"
        cfg.pop("kind", None)
        if supervised and not done(budget + f"|supervised|crop={cfg['crop']}"):
            res = train_supervised(tr, te, cfg["image_size"], tr.num_classes, width=cfg["width"],
                                   epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                   crop_scale=(cfg["crop"], 1.0), seed=args.seed)
            data["runs"].append({"key": budget + f"|supervised|crop={cfg['crop']}", "dataset": ds,
                                 "kind": "supervised", "config": cfg, **res})
            print(f"[{budget}] supervised (crop {cfg['crop']}): {res}", flush=True)
            save()
        key = budget + "|simclr|" + variant_name(v)
        if supervised or done(key):
            continue
        t = time.time()
        mon = None
        if args.monitor_every:
            mon = make_monitor(tr, te, cfg["image_size"], dev, cfg["crop"], args.monitor_every, args.seed)
        model, aug, cl, recs = pretrain(cfg, tr, dev, seed=args.seed, monitor=mon,
                                        log=lambda r: print(f"  {ds} {variant_name(v)} {r}", flush=True))
        t_pre = time.time() - t
        res = linear(model.encoder, tr, te, cfg["image_size"], dev, tr.num_classes)
        res.update(pair_stats(model, aug, te, cfg["image_size"], dev, cfg["crop"], cl, args.seed))
        data["runs"].append({"key": key, "dataset": ds, "kind": "simclr", "variant": variant_name(v),
                             "config": cfg, **res, "pretrain_seconds": t_pre,
                             "seconds": time.time() - t, "epochs_log": recs})
        print(f"[{budget}] SimCLR {variant_name(v)}: top1 {res['top1']:.1f} knn {res['knn_top1']:.1f} "
              f"loss {recs[-1]['loss']:.3f} ({time.time() - t:.0f} s)", flush=True)
        save()


if __name__ == "__main__":
    main()
