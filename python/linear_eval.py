"""Linear evaluation of a saved SimCLR checkpoint (the paper's protocol: frozen encoder, features
of un-augmented images, a linear classifier, top-1 / top-5 on the held-out split).

    python python/linear_eval.py runs/20260101-120000            # run directory or .pt file
    python python/linear_eval.py runs/x --random-baseline         # also a random-init encoder
    python python/linear_eval.py runs/x --features g              # on z = g(h) instead of h
"""
import argparse
import json
import sys

import _bootstrap  # noqa: F401  (python/_bootstrap.py: the installed simclr_ext, else this tree's in-place build)

from simclr_ext.checkpoint import CheckpointError
from simclr_ext.data import DataError
from simclr_ext.evaluate import (FEATURES, add_pretrained_arguments, feature_network, format_table,
                                 linear_eval, open_pretrained, random_init_model)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pretrained_arguments(p)
    p.add_argument("--eval-epochs", type=int, default=100)
    p.add_argument("--random-baseline", action="store_true", help="also evaluate a random-init encoder")
    p.add_argument("--features", default="h", choices=FEATURES,
                   help="h: the encoder's output (the paper's protocol); g: the projection head's "
                        "output z = g(h)")
    args = p.parse_args(argv)
    if args.eval_epochs < 1:
        p.error(f"--eval-epochs must be >= 1, got {args.eval_epochs}")
    try:
        run = open_pretrained(args)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    encoders = {"SimCLR": feature_network(run.model, args.features)}
    if args.random_baseline:
        rnd = random_init_model(run.cfg, args.seed).to(run.device)
        encoders["random init"] = feature_network(rnd, args.features)
    results = {name: linear_eval(enc, run.train_source, run.test_source, run.cfg["image_size"],
                                 run.device, run.train_source.num_classes, epochs=args.eval_epochs,
                                 seed=args.seed)
               for name, enc in encoders.items()}
    print(f"linear evaluation of {run.ckpt['path']} (epoch {run.ckpt['epoch']}, step "
          f"{run.ckpt['global_step']}) on {run.cfg['dataset']}, features "
          f"{'h' if args.features == 'h' else 'z = g(h)'}:")
    print(format_table(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
