"""SimCLR's learning-rate schedule: lr = base_lr x B/256 (or x sqrt(B)), linear warm-up, then
cosine decay to zero; a pure function of the global step, so resuming needs only the step."""
import math


def scaled_lr(base_lr: float, global_batch: int, scaling: str = "linear") -> float:
    """Peak learning rate: 'linear' = base_lr * B / 256 (the paper's), 'sqrt' = base_lr * sqrt(B)."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    raise ValueError(f"lr scaling must be 'linear' or 'sqrt', got {scaling!r}")


def default_warmup_epochs(epochs: int) -> float:
    """The paper warms up 10 epochs of 100+; shorter runs keep the same 10% fraction."""
    return 10.0 if epochs >= 100 else 0.1 * epochs


class WarmupCosine:
    """lr(step): linear from 0 to peak over warmup_steps, then cosine from peak to 0 at total_steps."""

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.peak_lr = peak_lr
        self.total_steps = total_steps
        self.warmup_steps = max(0, min(warmup_steps, total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
