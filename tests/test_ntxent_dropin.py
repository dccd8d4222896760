"""NTXentLoss as a drop-in for lightly's (docs/architecture.md section 2.1): lightly's signature
and forward names, its memory bank (values, gradients, update order, state_dict), a tensor or
learnable temperature, the double-backward error; values and gradients against
simclr_ext.reference in float64."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import simclr_ext
from simclr_ext import reference


def _views(n, dim, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# lightly's constructor and forward
# ---------------------------------------------------------------------------------------------
def test_lightly_positional_order_and_keyword_config(device):
    a, b = _views(6, 8, device, seed=1)
    expected = simclr_ext.nt_xent_loss(a, b, temperature=0.2)
    cfg = {"temperature": 0.2, "memory_bank_size": 0, "gather_distributed": False}
    for crit in (simclr_ext.NTXentLoss(0.2), simclr_ext.NTXentLoss(0.2, 0),
                 simclr_ext.NTXentLoss(0.2, 0, False), simclr_ext.NTXentLoss(**cfg)):
        torch.testing.assert_close(crit(out0=a, out1=b), expected, rtol=0, atol=0)
        torch.testing.assert_close(crit(a, b), expected, rtol=0, atol=0)
    # the single (2N, D) tensor form stays
    torch.testing.assert_close(simclr_ext.NTXentLoss(0.2)(torch.cat([a, b])), expected,
                               rtol=0, atol=0)
    # lightly's second positional argument is the bank, never gather_distributed
    assert simclr_ext.NTXentLoss(0.5, 4096).memory_bank_size == (4096,)
    assert simclr_ext.NTXentLoss(0.5, (64, 8)).bank.shape == (64, 8)
    with pytest.raises(TypeError):
        simclr_ext.NTXentLoss(0.5, 0, False, "sum")  # reduction is keyword-only


@pytest.mark.parametrize("size", [0, (16, 4)])
def test_module_errors_name_out0_out1(size):
    crit = simclr_ext.NTXentLoss(0.5, size)
    a = torch.randn(4, 4)
    with pytest.raises(ValueError, match="out0 and out1 must have the same shape"):
        crit(a, a[:3])
    with pytest.raises(TypeError, match="out1 must be a torch.Tensor"):
        crit(out0=a, out1=[1.0])


def test_gather_distributed_without_torch_distributed_raises(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        simclr_ext.NTXentLoss(0.5, 0, True)
    a, b = _views(3, 4, "cpu")
    with pytest.raises(ValueError, match="gather_distributed"):
        simclr_ext.nt_xent_loss(a, b, gather_distributed=True)
    simclr_ext.NTXentLoss(0.5, 0, False)(a, b)  # off: fine


@pytest.mark.parametrize("size", [-1, (-3, 4), (8, 0), "8", 2.5, True, (1, 2, 3)])
def test_bad_memory_bank_size_raises(size):
    with pytest.raises((TypeError, ValueError), match="memory_bank_size"):
        simclr_ext.NTXentLoss(0.5, size)


# ---------------------------------------------------------------------------------------------
# Memory bank
# ---------------------------------------------------------------------------------------------
def _twin_pair(size, device, temperature=0.3, reduction="mean"):
    fused = simclr_ext.NTXentLoss(temperature, size, reduction=reduction).to(device).double()
    ref = reference.NTXentLoss(temperature, size, reduction=reduction).to(device).double()
    return fused, ref


@pytest.mark.parametrize("size", [10, (10, 5), 37, (3, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bank_values_grads_and_fifo_match_reference_fp64(device, size, reduction):
    fused, ref = _twin_pair(size, device, reduction=reduction)
    for step in range(5):  # N = 4: the 10-slot bank wraps (8 + 4 >= 10) on the third step
        a, b = _views(4, 5, device, seed=10 + step)
        if step == 0 and fused.bank.dim() == 1:  # lazy size: both start from the same noise
            fused(a, b)  # initializes (and fills) the fused bank...
            ref.bank = fused.bank.clone()  # ...and the reference starts from that state
            ref.bank_ptr.copy_(fused.bank_ptr)
            continue
        if step == 0:
            ref.bank.copy_(fused.bank)
        outs = []
        for crit in (fused, ref):
            x0, x1 = a.clone().requires_grad_(), b.clone().requires_grad_()
            loss = crit(x0, x1)
            w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(step),
                           dtype=torch.float64).to(loss)
            outs.append((loss.detach(), *torch.autograd.grad(loss, (x0, x1), w)))
        for got, want in zip(*outs):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(fused.bank, ref.bank, rtol=0, atol=0)
        assert int(fused.bank_ptr) == int(ref.bank_ptr)


def test_bank_update_order_is_lightlys(device):
    # lightly: the bank holds normalized out1, written at bank_ptr; a batch that reaches the end
    # fills the remaining slots, the rest is dropped and the pointer returns to 0; no update
    # when out0 does not require grad (evaluation).
    crit = simclr_ext.NTXentLoss(0.5, (10, 3)).to(device)
    start = crit.bank.clone()
    assert torch.allclose(start.norm(dim=1), torch.ones(10, device=device))
    a, b = _views(4, 3, device, dtype=torch.float32, seed=3)
    crit(a, b)  # out0 does not require grad: no update
    assert torch.equal(crit.bank, start) and int(crit.bank_ptr) == 0
    batches = [_views(4, 3, device, dtype=torch.float32, seed=4 + i) for i in range(3)]
    for a, b in batches:
        crit(a.requires_grad_(), b)
    u = [F.normalize(b, dim=1) for _, b in batches]
    torch.testing.assert_close(crit.bank[0:4], u[0])
    torch.testing.assert_close(crit.bank[4:8], u[1])
    torch.testing.assert_close(crit.bank[8:10], u[2][:2])  # the last two rows were dropped
    assert int(crit.bank_ptr) == 0


def test_bank_negatives_only_from_bank_not_batch(device):
    # With a bank, the other rows of the batch are not negatives: one row's loss does not
    # change when another row of the batch changes.
    crit = simclr_ext.NTXentLoss(0.4, (16, 6), reduction="none").to(device).double()
    a, b = _views(5, 6, device, seed=8)
    first = crit(a, b)
    a2, b2 = a.clone(), b.clone()
    a2[1:] = torch.randn_like(a2[1:])
    b2[1:] = torch.randn_like(b2[1:])
    torch.testing.assert_close(crit(a2, b2)[0], first[0], rtol=1e-14, atol=0)


def test_bank_gradcheck_with_learnable_temperature_fp64(device):
    crit = simclr_ext.NTXentLoss(0.3, (40, 4)).to(device).double()
    bank = crit.bank.clone()
    a, b = _views(6, 4, device, seed=5)
    tau = torch.tensor(0.35, dtype=torch.float64, device=device, requires_grad=True)

    def f(x0, x1, t):
        crit.temperature = t
        crit.bank.copy_(bank)
        crit.bank_ptr.zero_()
        return crit(x0, x1)

    assert torch.autograd.gradcheck(f, (a.requires_grad_(), b.requires_grad_(), tau))


def test_bank_state_dict_resumes(device):
    crit = simclr_ext.NTXentLoss(0.5, 12).to(device)  # lazy: D from the first batch
    for i in range(2):
        a, b = _views(5, 7, device, dtype=torch.float32, seed=20 + i)
        crit(a.requires_grad_(), b)
    sd = crit.state_dict()
    assert set(sd) >= {"bank", "bank_ptr"} and sd["bank"].shape == (12, 7)
    resumed = simclr_ext.NTXentLoss(0.5, 12).to(device)
    resumed.load_state_dict(sd)
    a, b = _views(5, 7, device, dtype=torch.float32, seed=30)
    torch.testing.assert_close(resumed(a.requires_grad_(), b), crit(a, b), rtol=0, atol=0)
    torch.testing.assert_close(resumed.bank, crit.bank, rtol=0, atol=0)


def test_bank_fp32_matches_fp64(device):
    crit64 = simclr_ext.NTXentLoss(0.1, (300, 16), reduction="none").to(device).double()
    crit32 = simclr_ext.NTXentLoss(0.1, (300, 16), reduction="none").to(device)
    crit32.bank.copy_(crit64.bank)
    a, b = _views(9, 16, device, seed=2)
    torch.testing.assert_close(crit32(a.float(), b.float()).double(), crit64(a, b),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Temperature: float, 0-d tensor, nn.Parameter
# ---------------------------------------------------------------------------------------------
def test_tensor_temperature_value_equals_float(device):
    a, b = _views(7, 5, device, dtype=torch.float32, seed=4)
    want = simclr_ext.nt_xent_loss(a, b, 0.25)
    for t in (torch.tensor(0.25), torch.tensor(0.25, device=device),
              nn.Parameter(torch.tensor(0.25, device=device))):
        torch.testing.assert_close(simclr_ext.NTXentLoss(t)(a, b).detach(), want, rtol=1e-7,
                                   atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_temperature_gradcheck_fp64(device, reduction):
    z = torch.randn(10, 4, dtype=torch.float64, device=device, requires_grad=True)
    tau = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z_, t: simclr_ext.nt_xent_loss(z_, temperature=t, reduction=reduction), (z, tau))


@pytest.mark.parametrize("tau0", [0.5, 0.07])
def test_parameter_temperature_grad_matches_reference_fp64(device, tau0):
    a, b = _views(33, 16, device, seed=6)
    grads = []
    for cls in (simclr_ext.NTXentLoss, reference.NTXentLoss):
        t = nn.Parameter(torch.tensor(tau0, dtype=torch.float64, device=device))
        crit = cls(t)
        x0, x1 = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = crit(x0, x1)
        loss.backward()
        grads.append((loss.detach(), x0.grad, x1.grad, t.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_tensor_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        simclr_ext.NTXentLoss(torch.tensor(temperature))
    with pytest.raises(TypeError, match="temperature"):
        simclr_ext.NTXentLoss(torch.tensor([0.5, 0.5]))


# ---------------------------------------------------------------------------------------------
# Double backward: a clear error naming the reference path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float", "tensor", "bank"])
def test_double_backward_names_reference(device, kind):
    a, b = _views(4, 6, device, seed=9)
    a.requires_grad_()
    if kind == "bank":
        crit = simclr_ext.NTXentLoss(0.5, (8, 6)).to(device).double()
    elif kind == "tensor":
        crit = simclr_ext.NTXentLoss(torch.tensor(0.5, dtype=torch.float64, device=device,
                                                  requires_grad=True))
    else:
        crit = simclr_ext.NTXentLoss(0.5)
    (g,) = torch.autograd.grad(crit(a, b), a, create_graph=True)
    with pytest.raises(RuntimeError, match=r"simclr_ext\.reference"):
        g.pow(2).sum().backward()
    # the reference twin does support it
    (g,) = torch.autograd.grad(reference.NTXentLoss(0.5)(a, b), a, create_graph=True)
    g.pow(2).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


# ---------------------------------------------------------------------------------------------
# Learnable temperature with gathered negatives (gloo ranks, DDP)
# ---------------------------------------------------------------------------------------------
class _TauModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)).double()
        self.tau = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x0, x1):
        return self.net(x0), self.net(x1)


def _tau_data(rank, n=3):
    g = torch.Generator().manual_seed(200 + rank)
    return (torch.randn(n, 6, generator=g, dtype=torch.float64),
            torch.randn(n, 6, generator=g, dtype=torch.float64))


def _tau_worker(rank, world_size):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_TauModel())
    x0, x1 = _tau_data(rank)
    crit = simclr_ext.NTXentLoss(model.module.tau, 0, True)
    loss = crit(*model(x0, x1))
    loss.backward()
    return model.module.tau.grad.clone(), [p.grad.clone() for p in model.module.net.parameters()]


@pytest.mark.slow
def test_gathered_learnable_temperature_matches_single_process(distributed):
    results = distributed(_tau_worker, 2)
    data = [_tau_data(r) for r in range(2)]
    model = _TauModel()
    x0 = torch.cat([d[0] for d in data])
    x1 = torch.cat([d[1] for d in data])
    reference.nt_xent_loss(model.net(x0), model.net(x1), model.tau).backward()
    for tau_grad, net_grads in results:
        torch.testing.assert_close(tau_grad, model.tau.grad, rtol=1e-9, atol=1e-13)
        for got, want in zip(net_grads, model.net.parameters()):
            torch.testing.assert_close(got, want.grad, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Low-loss numerics: each row's loss is computed relative to its positive logit
# ---------------------------------------------------------------------------------------------
def _near_identical(n, dim, noise, device, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    b = a + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return torch.cat([a, b]).float().to(device)  # fp32 inputs, exact in fp64 too


@pytest.mark.parametrize("n,noise", [(7, 1e-4), (7, 1e-3), (64, 3e-4), (300, 1e-4)])
def test_fp32_low_loss_matches_fp64_at_tau_007(device, n, noise):
    # Nearly identical views at tau = 0.07: loss ~1e-5 or less. Subtracting the positive logit
    # from the log-sum-exp (both ~14) would leave ~1e-6 absolute error in fp32; relative to the
    # positive the fp32 loss and gradient follow fp64 to the precision of the fp32 u itself.
    z = _near_identical(n, 128, noise, device, seed=n)
    out = {}
    for dtype in (torch.float32, torch.float64):
        x = z.to(dtype).detach().requires_grad_()
        rows = simclr_ext.nt_xent_loss(x, temperature=0.07, reduction="none")
        rows.mean().backward()
        out[dtype] = rows.detach().double(), x.grad.double()
    (l32, g32), (l64, g64) = out[torch.float32], out[torch.float64]
    assert l64.max() < 3e-3  # the regime this is about
    rel_loss = ((l32 - l64).abs() / l64.abs()).max().item()
    rel_grad = ((g32 - g64).norm() / g64.norm()).item()
    assert rel_loss < 1e-5, f"fp32 row-loss relative error {rel_loss:.2e}"
    assert rel_grad < 5e-5, f"fp32 gradient relative error {rel_grad:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.5, 0.07, 0.01])
def test_single_pair_loss_and_gradient_exactly_zero(device, dtype, tau):
    # N = 1: the positive is the only candidate, so the loss is 0 exactly, as is its gradient.
    z = torch.randn(2, 16, dtype=dtype, device=device, requires_grad=True)
    loss = simclr_ext.nt_xent_loss(z, temperature=tau, reduction="none")
    assert torch.equal(loss.detach(), torch.zeros_like(loss))
    loss.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z.grad))
