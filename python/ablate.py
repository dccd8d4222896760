"""The SimCLR paper's studies, one command each: pretrain a set of settings with the trainer
(python/train.py), evaluate each by linear evaluation, and write a table, a picture and a JSON.

    python python/ablate.py --study head                      # projection head, h vs g(h)
    python python/ablate.py --study loss --dataset shapes,objects --run-dir studies/loss
    python python/ablate.py --study augment --epochs 3 --train-size 2000

Studies (docs/studies.md): loss (Table 4), head (Figure 8), temperature (Table 5), batch
(Figure 9), color (Table 1: SimCLR and supervised), augment (Figure 5's heat map), all. Any
other flag is python/train.py's and applies to every run (--width, --train-size, --base-lr, ...);
--dataset takes a comma-separated list. Each run is the trainer's own steps (set_up, load_data,
build_training, pretrain) in this process, in <run-dir>/runs/<dataset>/<setting>/; a finished
run is recorded in <run-dir>/study.json at once, so a rerun of the same command (or one killed
half way) redoes nothing finished and continues an interrupted run from its last epoch.
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as trainer  # noqa: E402  python/train.py: its steps are the runs' steps

from simclr_ext import checkpoint as ckpt_lib  # noqa: E402
from simclr_ext.evaluate import feature_network, linear_eval, random_init_model  # noqa: E402
from simclr_ext.study_augment import TRANSFORMS, AsymmetricViews  # noqa: E402
from simclr_ext.supervised import train_supervised  # noqa: E402

STUDIES = ("loss", "head", "temperature", "batch", "color", "augment")
# Pretraining epochs per run when --epochs is not given: loss and head sized to about 15 minutes
# each on 2 shared CPU cores with the embedded data (docs/studies.md has the measured times).
DEFAULT_EPOCHS = {"loss": 8, "head": 12, "temperature": 8, "batch": 6, "color": 6, "augment": 3}
TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_SIZES = (32, 64, 128, 256)
BATCH_EPOCH_FACTORS = (1, 2, 4)  # training lengths: --epochs times these
# Table 1's color strengths, the last with blur (its "1 (+Blur)" column)
COLOR = ((0.125, 0.0, "1/8"), (0.25, 0.0, "1/4"), (0.5, 0.0, "1/2"), (1.0, 0.0, "1"),
         (1.0, 0.5, "1 (+blur)"))


@dataclass
class Setting:
    """One run of a study: its name in the table, the train.py flags that make it, what kind of
    training (simclr, supervised, or a random-init encoder), where linear evaluation reads, the
    augment study's second-view transformations, and its coordinates for the table and plot."""
    name: str
    flags: List[str] = field(default_factory=list)
    kind: str = "simclr"
    features: Tuple[str, ...] = ("h",)
    transforms: Optional[Tuple[str, ...]] = None
    coords: dict = field(default_factory=dict)
    epochs_factor: int = 1


def study_settings(study: str, supervised_ceiling: bool) -> List[Setting]:
    """The runs of a study, baselines first (a random-init encoder, then the supervised ceiling
    at the same budget when asked, or always for the color study, which compares with it)."""
    out = [Setting("random init", kind="random", features=("h", "g") if study == "head" else ("h",))]
    if supervised_ceiling and study != "color":
        out.append(Setting("supervised", kind="supervised"))
    if study == "loss":
        for loss, label in (("nt_xent", "NT-Xent"), ("nt_logistic", "NT-Logistic"),
                            ("margin_triplet", "margin triplet")):
            for semi in ((False,) if loss == "nt_xent" else (False, True)):
                out.append(Setting(label + (" (semi-hard)" if semi else ""),
                                   ["--loss", loss] + (["--semi-hard"] if semi else []),
                                   coords={"loss": label, "semi_hard": semi}))
    elif study == "head":
        for head in ("none", "linear", "nonlinear"):
            out.append(Setting(f"{head} head", ["--head", head], features=("h", "g"),
                               coords={"head": head}))
    elif study == "temperature":
        for t in TEMPERATURES:
            out.append(Setting(f"t={t}", ["--temperature", str(t)], coords={"temperature": t}))
    elif study == "batch":
        for f in BATCH_EPOCH_FACTORS:
            for b in BATCH_SIZES:
                out.append(Setting(f"B={b}, {f}x epochs", ["--batch-size", str(b)],
                                   coords={"batch": b, "epochs_factor": f}, epochs_factor=f))
    elif study == "color":
        for strength, blur_p, label in COLOR:
            flags = ["--color-strength", str(strength), "--blur-p", str(blur_p)]
            for kind in ("simclr", "supervised"):
                out.append(Setting(f"{kind} color {label}", flags, kind=kind,
                                   coords={"strength": label, "kind": kind}))
    elif study == "augment":
        for a in TRANSFORMS:
            for b in TRANSFORMS:
                names = (a,) if a == b else (a, b)
                out.append(Setting("+".join(names), transforms=names,
                                   coords={"first": a, "second": b}))
    else:
        raise ValueError(f"unknown study {study!r}; expected one of {STUDIES}")
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-" else "_" for c in text)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------
def train_args(base_argv: List[str], setting: Setting, dataset: str, epochs: int, run_dir: str):
    """The trainer's flags of one run, parsed and validated by train.py's own parser."""
    parser = trainer.build_parser()
    argv = (base_argv + ["--dataset", dataset, "--epochs", str(epochs * setting.epochs_factor)]
            + setting.flags + ["--run-dir", run_dir, "--monitor-every", "0"])
    args = parser.parse_args(argv)
    trainer.validate(parser, args)
    trainer.resolve_defaults(args)
    return args


def last_epoch_loss(run_dir: str) -> Optional[float]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    losses = [json.loads(line)["loss"] for line in open(path) if '"kind": "epoch"' in line]
    return losses[-1] if losses else None


def run_setting(setting: Setting, args, keep_checkpoints: bool) -> dict:
    """Train and evaluate one setting -> {'results': {features: {top1, top5, train_top1}},
    'final_loss', ...}. Raises KeyboardInterrupt when a signal stopped pretraining (the
    checkpoint is saved; a rerun continues it)."""
    s = trainer.set_up(args)
    data = trainer.load_data(s)
    results = {}
    if setting.kind == "supervised":
        # the color study trains with its color distortion; the ceiling elsewhere is the
        # trainer's --supervised-baseline (crop + flip only)
        distort = "strength" in setting.coords
        sup = train_supervised(data.train, data.test, args.image_size, data.train.num_classes,
                               arch=args.arch, width=args.width, epochs=args.epochs,
                               batch_size=args.batch_size, crop_scale=(args.crop_scale, 1.0),
                               device=s.device, seed=args.seed,
                               color_strength=args.color_strength if distort else 0.0,
                               blur_p=args.blur_p if distort else 0.0)
        results["h"] = {k: sup[k] for k in ("top1", "top5", "train_top1")}
        return {"results": results}
    if setting.kind == "random":
        model = random_init_model(vars(args), args.seed).to(s.device)
        channels_last = False
    else:
        tr = trainer.build_training(s, data)
        if setting.transforms is not None:
            tr.augment = AsymmetricViews(args.image_size, setting.transforms,
                                         crop_scale=(args.crop_scale, 1.0),
                                         color_strength=args.color_strength or 1.0,
                                         generator=tr.aug_gen,
                                         channels_last=tr.memory_format == torch.channels_last)
        pos = trainer.Position()
        ck = ckpt_lib.load_latest(args.run_dir, print)
        if ck is not None:
            pos = trainer.restore(s, tr, ck)
        if trainer.pretrain(s, data, tr, pos) is not None:
            raise KeyboardInterrupt
        model, channels_last = tr.core, tr.memory_format == torch.channels_last
    for at in setting.features:
        results[at] = linear_eval(feature_network(model, at), data.train, data.test,
                                  args.image_size, s.device, data.train.num_classes,
                                  epochs=args.eval_epochs, seed=args.seed,
                                  channels_last=channels_last)
    out = {"results": results}
    if setting.kind == "simclr":
        out["final_loss"] = last_epoch_loss(args.run_dir)
        for name in (ckpt_lib.PREV,) + (() if keep_checkpoints else (ckpt_lib.LAST,)):
            path = os.path.join(args.run_dir, name)
            if os.path.exists(path):
                os.remove(path)
    return out


# ------------------------------------------------------------------------------------------
# The study file, table and picture
# ------------------------------------------------------------------------------------------
def load_study(path: str, header: dict) -> dict:
    """study.json, or a new one. A file of another study or other settings is an error (its
    runs would not be comparable): pick another --run-dir."""
    if not os.path.exists(path):
        return dict(header, runs={})
    with open(path) as f:
        study = json.load(f)
    mismatch = [k for k in ("study", "epochs", "train_flags") if study.get(k) != header[k]]
    if mismatch:
        raise SystemExit(
            f"error: {path} holds a study with other settings ("
            + ", ".join(f"{k}: {study.get(k)!r} there, {header[k]!r} now" for k in mismatch)
            + "); give another --run-dir, or the same flags to continue it")
    return study


def save_json(path: str, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def runs_of(runs: dict, ds: str) -> dict:
    """{setting name: record} of one data set."""
    return {k.split("/", 1)[1]: v for k, v in runs.items() if k.split("/", 1)[0] == ds}


def pct(r, at="h"):
    v = (r or {}).get("results", {}).get(at, {}).get("top1")
    return "-" if v is None else f"{v:.1f}"


def markdown(study: dict, datasets: List[str], settings: List[Setting]) -> str:
    """The study's Markdown table(s): one row per (data set, setting); the augment study a
    heat map per data set (row: first transformation, column: second; the diagonal: one)."""
    runs, name = study["runs"], study["study"]
    lines = [f"## {name} study: {study['epochs']} pretraining epochs per run (x the factor "
             f"where shown), linear evaluation top-1 % on the held-out split", "",
             f"machine: {study['machine']}", "",
             f"trainer flags: `{' '.join(study['train_flags']) or '(defaults)'}`", ""]
    for ds in datasets:
        got = runs_of(runs, ds)
        lines.append(f"### {ds}")
        lines.append("")
        base = [s for s in settings if s.kind in ("random", "supervised") and name != "color"]
        if name == "augment":
            lines.append("| first \\ second | " + " | ".join(TRANSFORMS) + " |")
            lines.append("|" + " --- |" * (len(TRANSFORMS) + 1))
            for a in TRANSFORMS:
                cells = [pct(got.get("+".join((a,) if a == b else (a, b)))) for b in TRANSFORMS]
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
            lines += ["", "| baseline | top-1 % |", "| --- | --- |"]
            lines += [f"| {s.name} | {pct(got.get(s.name))} |" for s in base]
        elif name == "color":
            lines.append("| color strength | SimCLR top-1 % | supervised top-1 % |")
            lines.append("| --- | --- | --- |")
            for _, _, label in COLOR:
                lines.append(f"| {label} | {pct(got.get(f'simclr color {label}'))} | "
                             f"{pct(got.get(f'supervised color {label}'))} |")
            lines.append(f"| random init (no training) | {pct(got.get('random init'))} | |")
        elif name == "head":
            lines.append("| setting | top-1 % on h | top-1 % on g(h) | final loss | minutes |")
            lines.append("| --- | --- | --- | --- | --- |")
            for s in settings:
                r = got.get(s.name)
                g = pct(r, "g") if "g" in s.features and s.name != "none head" else "= h"
                if s.kind == "supervised":
                    g = "-"
                lines.append(f"| {s.name} | {pct(r)} | {g} | {fmt_loss(r)} | {minutes(r)} |")
        else:
            lines.append("| setting | top-1 % | top-5 % | final loss | minutes |")
            lines.append("| --- | --- | --- | --- | --- |")
            for s in settings:
                r = got.get(s.name)
                t5 = (r or {}).get("results", {}).get("h", {}).get("top5")
                lines.append(f"| {s.name} | {pct(r)} | {'-' if t5 is None else f'{t5:.1f}'} | "
                             f"{fmt_loss(r)} | {minutes(r)} |")
        lines.append("")
    return "\n".join(lines)


def fmt_loss(r):
    v = (r or {}).get("final_loss")
    return "-" if v is None else f"{v:.3f}"


def minutes(r):
    return "-" if r is None else f"{r['seconds'] / 60:.1f}"


def top1(r, at="h"):
    v = (r or {}).get("results", {}).get(at, {}).get("top1")
    return float("nan") if v is None else v


def plot(study: dict, datasets: List[str], settings: List[Setting], path: str) -> bool:
    """study.png: the heat map (augment), lines (temperature, batch, color) or bars (loss,
    head), one panel per data set. False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed, so no study.png (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs, name = study["runs"], study["study"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        got = runs_of(runs, ds)
        rnd = top1(got.get("random init"))
        if name == "augment":
            m = np.array([[top1(got.get("+".join((a,) if a == b else (a, b)))) for b in TRANSFORMS]
                          for a in TRANSFORMS])
            im = ax.imshow(m, cmap="viridis")
            for i in range(len(TRANSFORMS)):
                for j in range(len(TRANSFORMS)):
                    if not math.isnan(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_xticks(range(len(TRANSFORMS)), TRANSFORMS, rotation=45)
            ax.set_yticks(range(len(TRANSFORMS)), TRANSFORMS)
            ax.set(xlabel="2nd transformation", ylabel="1st transformation",
                   title=f"{ds}: top-1 % (random init {rnd:.1f})")
            fig.colorbar(im, ax=ax, fraction=0.046)
            continue
        if name == "temperature":
            ts = [s for s in settings if s.kind == "simclr"]
            ax.plot([s.coords["temperature"] for s in ts], [top1(got.get(s.name)) for s in ts], marker="o")
            ax.set_xscale("log")
            ax.set(xlabel="temperature")
        elif name == "batch":
            for f in BATCH_EPOCH_FACTORS:
                bs = [s for s in settings if s.coords.get("epochs_factor") == f]
                ax.plot([s.coords["batch"] for s in bs], [top1(got.get(s.name)) for s in bs],
                        marker="o", label=f"{study['epochs'] * f} epochs")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="batch size")
            ax.legend()
        elif name == "color":
            labels = [c[2] for c in COLOR]
            for kind in ("simclr", "supervised"):
                ax.plot(labels, [top1(got.get(f"{kind} color {lab}")) for lab in labels], marker="o",
                        label="SimCLR (linear eval)" if kind == "simclr" else "supervised")
            ax.set(xlabel="color distortion strength")
            ax.legend()
        else:
            shown = [s for s in settings if s.kind != "random"]
            x = np.arange(len(shown))
            if name == "head":
                ax.bar(x - 0.2, [top1(got.get(s.name)) for s in shown], 0.4, label="h")
                ax.bar(x + 0.2, [top1(got.get(s.name), "g") if s.kind == "simclr" else float("nan")
                                 for s in shown], 0.4, label="g(h)")
                ax.legend()
            else:
                ax.bar(x, [top1(got.get(s.name)) for s in shown])
            ax.set_xticks(x, [s.name for s in shown], rotation=20, ha="right")
        if not math.isnan(rnd):
            ax.axhline(rnd, color="gray", ls="--", lw=1, label="random init")
        ax.set(ylabel="linear eval top-1 %", title=f"{name} study, {ds}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------
# The study loop
# ------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        description="Run one of the SimCLR paper's studies with the trainer; other flags are "
                    "python/train.py's and apply to every run.", allow_abbrev=False)
    p.add_argument("--study", required=True, choices=STUDIES + ("all",))
    p.add_argument("--epochs", type=int, default=None,
                   help=f"pretraining epochs per run (default per study: {DEFAULT_EPOCHS})")
    p.add_argument("--dataset", default="shapes",
                   help="a train.py --dataset, or several separated by commas (shapes,objects)")
    p.add_argument("--run-dir", default=None,
                   help="default: studies/<study>; --study all uses <run-dir>/<study>")
    p.add_argument("--only", default=None,
                   help="run only these settings (names as in the table, separated by ';')")
    p.add_argument("--supervised-ceiling", action="store_true",
                   help="also train the same network with labels at the same budget (a row of "
                        "the table; the color study always does)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's checkpoint_last.pt (default: removed once "
                        "evaluated, the results are in study.json)")
    return p


def run_study(study_name: str, opts, train_flags: List[str]) -> int:
    datasets = [d for d in opts.dataset.split(",") if d]
    epochs = opts.epochs or DEFAULT_EPOCHS[study_name]
    run_dir = opts.run_dir or os.path.join("studies", study_name)
    if opts.study == "all" and opts.run_dir:
        run_dir = os.path.join(opts.run_dir, study_name)
    settings = study_settings(study_name, opts.supervised_ceiling)
    if opts.only:
        wanted = [w.strip() for w in opts.only.split(";") if w.strip()]
        unknown = [w for w in wanted if w not in {s.name for s in settings}]
        if unknown:
            raise SystemExit(f"error: --only: no setting named {unknown} in the {study_name} "
                             f"study; its settings: {[s.name for s in settings]}")
        settings = [s for s in settings if s.name in wanted]
    # every run's flags are checked by train.py's parser before the first run starts
    todo_args = {}
    for ds in datasets:
        for st in settings:
            todo_args[f"{ds}/{st.name}"] = (st, train_args(
                train_flags, st, ds, epochs, os.path.join(run_dir, "runs", slug(ds), slug(st.name))))
    os.makedirs(run_dir, exist_ok=True)
    header = {"study": study_name, "epochs": epochs, "train_flags": train_flags,
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"}
    path = os.path.join(run_dir, "study.json")
    study = load_study(path, header)
    study["datasets"] = sorted(set(study.get("datasets", [])) | set(datasets))
    todo = [k for k in todo_args if k not in study["runs"]]
    n = len(todo_args)
    print(f"{study_name} study in {run_dir}: {n} runs ({n - len(todo)} already done), "
          f"{epochs} epochs each", flush=True)
    # time left: seconds per unit of work (epochs x data passes) measured on this invocation's runs
    spent, units_done = 0.0, 0.0

    def units(st, a):
        # a random-init evaluation is seconds; supervised steps see one view, SimCLR's two
        return 0.0 if st.kind == "random" else a.epochs * (0.6 if st.kind == "supervised" else 1.0)

    for i, key in enumerate(todo_args, 1):
        st, a = todo_args[key]
        if key not in todo:
            continue
        left = sum(units(*todo_args[k]) for k in todo[todo.index(key):])
        eta = f", about {spent / units_done * left / 60:.0f} min left" if units_done else ""
        print(f"[run {i} of {n}] {key}{eta}", flush=True)
        t0 = time.time()
        try:
            rec = run_setting(st, a, opts.keep_checkpoints)
        except KeyboardInterrupt:
            print(f"stopped during {key}: finished runs are in {path}; rerun the same command to "
                  f"continue (the interrupted run continues from its last checkpoint)")
            return 130
        rec.update(dataset=key.split("/")[0], setting=st.name, kind=st.kind, coords=st.coords,
                   flags=st.flags, transforms=st.transforms,
                   config={k: getattr(a, k) for k in trainer.RUN_KEYS},
                   seconds=time.time() - t0, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        study["runs"][key] = rec
        save_json(path, study)
        if units(st, a):
            spent, units_done = spent + rec["seconds"], units_done + units(st, a)
        res = ", ".join(f"{at}: top-1 {r['top1']:.1f}%" for at, r in rec["results"].items())
        print(f"[run {i} of {n}] {key}: {res} ({rec['seconds']:.0f} s)", flush=True)
    all_settings = study_settings(study_name, opts.supervised_ceiling)
    shown = [s for s in all_settings if any(f"{d}/{s.name}" in study["runs"] for d in study["datasets"])]
    table = markdown(study, study["datasets"], shown or settings)
    with open(os.path.join(run_dir, "study.md"), "w") as f:
        f.write(table + "\n")
    files = ["study.json", "study.md"]
    try:
        if plot(study, study["datasets"], shown or settings, os.path.join(run_dir, "study.png")):
            files.append("study.png")
    except Exception as exc:  # a broken matplotlib backend: the results are saved
        print(f"note: study.png could not be drawn ({type(exc).__name__}: {exc})")
    print("\n" + table)
    print(f"{run_dir}: {', '.join(files)}", flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts, train_flags = build_parser().parse_known_args(argv)
    for flag in ("--resume",):  # a study continues its runs itself
        if any(f == flag or f.startswith(flag + "=") for f in train_flags):
            raise SystemExit(f"error: {flag} is set by the study")
    if opts.epochs is not None and opts.epochs < 1:
        raise SystemExit(f"error: --epochs must be >= 1, got {opts.epochs}")
    names = STUDIES if opts.study == "all" else (opts.study,)
    for name in names:
        code = run_study(name, opts, train_flags)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
