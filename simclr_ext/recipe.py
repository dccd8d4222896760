"""The one place where the trainer picks its three ops: the fused simclr_ext kernels or their
plain-PyTorch references (`--impl reference`, for end-to-end comparison)."""
IMPLS = ("fused", "reference")


def build_ops(impl: str):
    """-> (NTXentLoss class, LARS class, ColorDistortion class) for impl in IMPLS."""
    if impl == "fused":
        import simclr_ext as m
    elif impl == "reference":
        import simclr_ext.reference as m
    else:
        raise ValueError(f"unknown --impl {impl!r}; expected one of {IMPLS}")
    return m.NTXentLoss, m.LARS, m.ColorDistortion


def simclr_step(model, criterion, optimizer, views, scaler=None, amp_dtype=None):
    """One SimCLR step on augmented views [2B, 3, S, S] laid out [all first views; all second
    views]: z = g(f(x)) (under autocast when amp_dtype is given), NT-Xent in fp32, backward
    (DDP averages the gradients), optimizer step. Returns the loss (a 0-d tensor)."""
    import torch

    with torch.autocast(views.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        _, z = model(views)
    loss = criterion(z.float())  # z [2B, D] is laid out [view 1; view 2], as the loss takes it
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss
