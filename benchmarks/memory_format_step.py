"""Median CPU training-step time of the trainer's model, contiguous vs channels_last, side by side.

    python benchmarks/memory_format_step.py [--width 16] [--image-size 24] [--batch 128] [--threads 1]

Why simclr_ext.models.preferred_memory_format keeps channels_last on the CPU where it is safe
(docs/known-issues.md). Each format runs twice, interleaved, so drift on a shared machine shows.
"""
import argparse
import time

import harness  # noqa: F401  (first: puts an in-place build ahead of an installed simclr_ext)

import torch  # noqa: E402

from simclr_ext.models import SimCLRModel  # noqa: E402


def step_times(fmt, args, steps):
    torch.manual_seed(0)
    model = SimCLRModel("resnet18", args.image_size, "nonlinear", args.width, 128)
    model = model.to(memory_format=fmt)
    x = torch.randn(2 * args.batch, 3, args.image_size, args.image_size).contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(steps + 1):  # the first step warms oneDNN's primitive cache up: not counted
        t = time.perf_counter()
        _, z = model(x)
        z.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=24)
    p.add_argument("--batch", type=int, default=128, help="images per view (the step sees 2x)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"resnet18 width {args.width}, {args.image_size} px, batch 2 x {args.batch}, "
          f"{args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    medians = {}
    for fmt in (torch.contiguous_format, torch.channels_last) * 2:
        t = step_times(fmt, args, args.steps)
        medians.setdefault(str(fmt), []).append(t[len(t) // 2])
        print(f"  {str(fmt):24s} median step {1e3 * t[len(t) // 2]:7.1f} ms (min {1e3 * t[0]:.1f})")
    c, cl = min(medians["torch.contiguous_format"]), min(medians["torch.channels_last"])
    print(f"channels_last / contiguous step time: {cl / c:.2f}")


if __name__ == "__main__":
    main()
