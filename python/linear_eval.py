"""Linear evaluation of a saved SimCLR checkpoint (the paper's protocol: frozen encoder, features
of un-augmented images, a linear classifier, top-1 / top-5 on the held-out split).

    python python/linear_eval.py runs/20260101-120000            # run directory or .pt file
    python python/linear_eval.py runs/x --random-baseline         # also a random-init encoder
"""
import argparse
import json
import os
import sys

import torch

import _bootstrap  # noqa: F401  (python/_bootstrap.py: the installed simclr_ext, else this tree's in-place build)

from simclr_ext import checkpoint as ckpt_lib
from simclr_ext.data import DATASETS, DataError
from simclr_ext.evaluate import format_table, linear_eval, load_pretrained
from simclr_ext.models import build_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="run directory (uses its checkpoint_last.pt) or checkpoint file")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: the pretraining data set")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--eval-epochs", type=int, default=100)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--random-baseline", action="store_true", help="also evaluate a random-init encoder")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.eval_epochs < 1:
        p.error(f"--eval-epochs must be >= 1, got {args.eval_epochs}")
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    try:
        ck, cfg, model, train_src, test_src = load_pretrained(args.checkpoint, args.dataset,
                                                              args.data_dir)
    except (ckpt_lib.CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = {"SimCLR": linear_eval(model.encoder.to(dev), train_src, test_src, cfg["image_size"], dev,
                                     train_src.num_classes, epochs=args.eval_epochs, seed=args.seed)}
    if args.random_baseline:
        torch.manual_seed(args.seed + 12345)
        rnd = build_model(cfg).to(dev)
        results["random init"] = linear_eval(rnd.encoder, train_src, test_src, cfg["image_size"], dev,
                                             train_src.num_classes, epochs=args.eval_epochs, seed=args.seed)
    print(f"linear evaluation of {ck['path']} (epoch {ck['epoch']}, step {ck['global_step']}) on "
          f"{cfg['dataset']}:")
    print(format_table(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
