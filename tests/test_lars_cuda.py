"""LARS on CUDA with a tensor of more than 512 chunks of 32768 elements: its norms are reduced
once per tensor by a third launch instead of by every update block (docs/architecture.md, 3.2).
The reduction is the same code either way, so the bits do not depend on the path."""
import pytest
import torch

from simclr_ext.optim import LARS
from simclr_ext.reference import LARS as RefLARS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BIG = 17_000_000  # 519 chunks: above kReduceOnceChunks (512)


def params_with_grads(shapes, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.randn(s, device="cuda", generator=g).requires_grad_(True)
        p.grad = torch.randn(s, device="cuda", generator=g)
        ps.append(p)
    return ps


def clone(ps):
    out = []
    for p in ps:
        q = p.detach().clone().requires_grad_(True)
        q.grad = p.grad.clone()
        out.append(q)
    return out


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def test_small_tensors_get_the_same_bits_with_and_without_the_per_tensor_reduction():
    small = params_with_grads([(64, 3, 3, 3), (70000,), (5, 7)], seed=1)
    (big,) = params_with_grads([(BIG,)], seed=2)
    alone, together = clone(small), clone(small)
    opt_alone = LARS(alone, lr=0.3, weight_decay=1e-4, momentum=0.9)
    opt_together = LARS(together + [big], lr=0.3, weight_decay=1e-4, momentum=0.9)
    for _ in range(2):
        opt_alone.step()
        opt_together.step()
    for a, t in zip(alone, together):
        assert torch.equal(a, t)
        assert torch.equal(opt_alone.state[a]["momentum_buffer"],
                           opt_together.state[t]["momentum_buffer"])


def test_large_tensor_matches_reference():
    ps = params_with_grads([(BIG,), (300, 7)], seed=3)
    rs = clone(ps)
    opt = LARS(ps, lr=0.3, weight_decay=1e-4, momentum=0.9)
    ref = RefLARS(rs, lr=0.3, weight_decay=1e-4, momentum=0.9)
    for _ in range(2):
        opt.step()
        ref.step()
    for p, r in zip(ps, rs):
        assert rel_err(p, r) <= 1e-6, (p.shape, rel_err(p, r))


def test_large_tensor_adds_exactly_one_launch():
    from torch.profiler import ProfilerActivity, profile

    ps = params_with_grads([(BIG,), (300, 7)], seed=4)
    opt = LARS(ps, lr=0.3)
    opt.step()  # momentum buffers created outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("multi_tensor_apply_kernel" in n for n in names) == 2
    assert sum("tensor_sums_kernel" in n for n in names) == 1
