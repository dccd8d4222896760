"""simclr_ext.LARS (fused multi-tensor kernels) against simclr_ext.reference.LARS
(docs/architecture.md, section 3)."""
import copy

import pytest
import torch
from torch import nn

import simclr_ext
from simclr_ext import LARS, simclr_param_groups
from simclr_ext.reference import LARS as RefLARS
from simclr_ext.reference import ForeachLARS


def small_cnn(dtype, device):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).to(device=device, dtype=dtype)


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def random_params(device, dtype=torch.float32, shapes=((64, 3, 3, 3), (64,), (70000,), (5, 7),
                                                      (1,), ())):
    """Fresh parameters with fresh grads; 70000 elements crosses the CPU/CUDA chunk size."""
    ps = [torch.randn(s, device=device, dtype=dtype, requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


def clone_params(ps):
    out = []
    for p in ps:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def regroup(groups, params):
    """The same group settings over another list of parameters (in order)."""
    it = iter(params)
    return [dict(g, params=[next(it) for _ in g["params"]]) for g in groups]


def assert_close_to_reference(ps, rs, opt, ref, tol):
    for p, r in zip(ps, rs):
        if p.numel() == 0:
            continue
        assert rel_err(p, r) <= tol, (p.shape, rel_err(p, r))
        if "momentum_buffer" in ref.state[r]:
            assert rel_err(opt.state[p]["momentum_buffer"], ref.state[r]["momentum_buffer"]) <= tol


# ---------------------------------------------------------------------------------------------
# Training against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_50_steps_small_cnn_match_reference(device, dtype, tol):
    model = small_cnn(dtype, device)
    ref_model = copy.deepcopy(model)
    opt = LARS(simclr_param_groups(model, 1e-4), lr=0.6, momentum=0.9, eta=0.001)
    ref = RefLARS(simclr_param_groups(ref_model, 1e-4), lr=0.6, momentum=0.9, eta=0.001)
    start = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(1)
    # Both models must see the same gradients: deterministic cuDNN, no TF32 (CUDA only).
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        for _ in range(50):
            x = torch.randn(8, 3, 8, 8, generator=gen, dtype=dtype).to(device)
            y = torch.randint(0, 10, (8,), generator=gen).to(device)
            train_step(model, opt, x, y)
            train_step(ref_model, ref, x, y)
    for (name, p), r, p0 in zip(model.named_parameters(), ref_model.parameters(), start):
        assert not torch.equal(p, p0), f"{name} did not move"
        assert rel_err(p, r) <= tol, (name, rel_err(p, r))
        assert rel_err(p - p0, r - p0) <= 1e3 * tol, (name, "update differs")
        assert opt.state[p]["momentum_buffer"].dtype == dtype
        buf, ref_buf = opt.state[p]["momentum_buffer"], ref.state[r]["momentum_buffer"]
        assert rel_err(buf, ref_buf) <= 1e3 * tol, (name, "momentum buffer differs")


@pytest.mark.sanitize
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("adaptation", [False, True])
def test_update_rule_matches_reference_fp64(device, nesterov, momentum, adaptation):
    ps = random_params(device, torch.float64)
    rs = clone_params(ps)
    kw = dict(lr=0.3, momentum=momentum, weight_decay=1e-3, eta=0.02, nesterov=nesterov,
              lars_adaptation=adaptation)
    opt, ref = LARS(ps, **kw), RefLARS(rs, **kw)
    for _ in range(3):
        opt.step()
        ref.step()
        for p, r in zip(ps, rs):
            p.grad.normal_()
            r.grad.copy_(p.grad)
    assert_close_to_reference(ps, rs, opt, ref, 1e-13)


def test_first_step_follows_formula_not_sgd_buffer_init(device):
    # v starts at 0 (SimCLR): v1 = lr * trust * g', w1 = w0 - v1, then v2 = m v1 + lr trust g2'.
    w0 = torch.randn(10, 4, dtype=torch.float64, device=device)
    p = w0.clone().requires_grad_(True)
    g1 = torch.randn_like(w0)
    p.grad = g1.clone()
    lr, m, wd, eta = 0.5, 0.9, 0.01, 0.1
    opt = LARS([p], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    opt.step()
    gd = g1 + wd * w0
    v1 = lr * eta * w0.norm() / gd.norm() * gd
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], v1, rtol=1e-14, atol=0)
    torch.testing.assert_close(p.detach(), w0 - v1, rtol=1e-14, atol=1e-15)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_unaligned_views_match_reference(device, dtype):
    # Leaf views at odd element offsets: the CUDA kernels take their scalar (unpacked) path for
    # these; sizes straddle the packing width and the chunk size.
    ps, rs = [], []
    for n, offset in ((37, 1), (32771, 3), (4, 2)):
        base = torch.randn(n + offset, device=device, dtype=dtype)
        p = base[offset:].requires_grad_(True)
        p.grad = torch.randn(n, device=device, dtype=dtype)
        ps.append(p)
    for p in ps:
        r = p.detach().clone().requires_grad_(True)
        r.grad = p.grad.clone()
        rs.append(r)
    kw = dict(lr=0.3, momentum=0.9, weight_decay=1e-3, eta=0.02)
    opt, ref = LARS(ps, **kw), RefLARS(rs, **kw)
    for _ in range(2):
        opt.step()
        ref.step()
    tol = {torch.float64: 1e-14, torch.float32: 1e-6}.get(dtype, 1e-2)
    for p, r in zip(ps, rs):
        torch.testing.assert_close(p.float(), r.float(), rtol=tol, atol=tol)


def test_several_groups_with_own_settings(device):
    ps = random_params(device, torch.float64)
    rs = clone_params(ps)
    groups = [
        {"params": ps[:2], "lr": 0.1, "weight_decay": 1e-2, "eta": 0.01},
        {"params": ps[2:4], "momentum": 0.5, "nesterov": True, "lars_adaptation": False},
        {"params": ps[4:], "lr": 2.0, "momentum": 0.0, "weight_decay": 0.0},
    ]
    opt = LARS(groups, lr=0.7, momentum=0.9, weight_decay=1e-4, eta=0.001)
    ref = RefLARS(regroup(groups, rs), lr=0.7, momentum=0.9, weight_decay=1e-4, eta=0.001)
    for _ in range(4):
        opt.step()
        ref.step()
    assert_close_to_reference(ps, rs, opt, ref, 1e-13)
    assert opt.param_groups[1]["lars_adaptation"] is False and opt.param_groups[0]["lr"] == 0.1


def test_mixed_dtypes_in_one_optimizer(device):
    torch.manual_seed(3)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    ps = [p for dt in dtypes for p in random_params(device, dt, shapes=((33, 17), (40000,), (9,)))]
    rs = clone_params(ps)
    kw = dict(lr=0.4, momentum=0.9, weight_decay=1e-3, eta=0.01)
    opt, ref = LARS(ps, **kw), RefLARS(rs, **kw)
    for _ in range(3):
        opt.step()
        ref.step()
    for p, r in zip(ps, rs):
        buf = opt.state[p]["momentum_buffer"]
        assert buf.dtype == (torch.float64 if p.dtype == torch.float64 else torch.float32)
        assert p.dtype == r.dtype
        # both compute in fp32 (fp64) and round w to its dtype each step: at most an ulp apart
        ulp = {torch.float32: 2e-7, torch.bfloat16: 8e-3, torch.float16: 1e-3,
               torch.float64: 1e-15}[p.dtype]
        torch.testing.assert_close(p.float(), r.float(), rtol=ulp, atol=ulp)
        torch.testing.assert_close(buf.float(), ref.state[r]["momentum_buffer"].float(),
                                   rtol=1e-4, atol=1e-6)


def test_channels_last_parameter(device):
    w = torch.randn(8, 4, 3, 3, device=device).to(memory_format=torch.channels_last)
    p = w.clone().requires_grad_(True)
    p.grad = torch.randn_like(w)  # channels_last like p
    r = w.clone().requires_grad_(True)
    r.grad = p.grad.clone()
    opt, ref = LARS([p], lr=0.2, weight_decay=1e-3), RefLARS([r], lr=0.2, weight_decay=1e-3)
    opt.step()
    ref.step()
    assert opt.state[p]["momentum_buffer"].stride() == p.stride()
    torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
    # a contiguous grad for a channels_last parameter is re-laid out, not rejected
    p.grad = p.grad.contiguous()
    r.grad = p.grad.clone()
    opt.step()
    ref.step()
    torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# SimCLR's exclusion and the degenerate norms
# ---------------------------------------------------------------------------------------------
def test_param_groups_have_one_public_name():
    # simclr_param_groups is the one name for SimCLR's grouping (no optimizer-class aliases)
    assert simclr_ext.simclr_param_groups is simclr_ext.optim.simclr_param_groups
    assert "simclr_param_groups" in simclr_ext.__all__
    for cls in (simclr_ext.LARS, RefLARS, ForeachLARS):
        assert not hasattr(cls, "exclude_bias_and_norm"), cls


def test_exclusion_bias_update_is_plain_momentum_sgd(device):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)).double().to(device)
    groups = simclr_param_groups(model, weight_decay=0.1)
    assert [p.ndim for p in groups[0]["params"]] == [2]
    assert all(p.ndim == 1 for p in groups[1]["params"]) and len(groups[1]["params"]) == 3
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_adaptation"] is False
    assert groups == simclr_param_groups(model.named_parameters(), 0.1)
    lr, m = 0.5, 0.9
    opt = LARS(groups, lr=lr, momentum=m, eta=0.001)
    bias = model[0].bias
    v = torch.zeros_like(bias)
    for _ in range(3):
        b0 = bias.detach().clone()
        g = torch.randn_like(bias)
        bias.grad = g.clone()
        model[0].weight.grad = torch.randn_like(model[0].weight)
        opt.step()
        v = m * v + lr * g  # no decay, trust ratio 1
        torch.testing.assert_close(bias.detach(), b0 - v, rtol=1e-14, atol=1e-15)
    # the weight did get adaptation: its update is eta * ||w|| / ||g'|| times smaller than lr g'
    w0 = model[0].weight.detach().clone()
    opt.state[model[0].weight]["momentum_buffer"].zero_()
    gw = torch.randn_like(w0)
    model[0].weight.grad = gw.clone()
    opt.step()
    gd = gw + 0.1 * w0
    torch.testing.assert_close(model[0].weight.detach(),
                               w0 - lr * 0.001 * w0.norm() / gd.norm() * gd, rtol=1e-14, atol=0)


def test_zero_weight_or_zero_grad_gives_trust_one_no_nan(device):
    zero_w = torch.zeros(7, 3, device=device, requires_grad=True)
    zero_w.grad = torch.randn(7, 3, device=device)
    zero_g = torch.randn(4, 4, device=device, requires_grad=True)
    zero_g.grad = torch.zeros(4, 4, device=device)
    zero_bias = torch.zeros(5, device=device, requires_grad=True)  # zero-initialized bias
    zero_bias.grad = torch.randn(5, device=device)
    lr = 0.3
    opt = LARS([zero_w, zero_g, zero_bias], lr=lr, momentum=0.9, eta=1e-3)
    w0 = zero_g.detach().clone()
    opt.step()
    for p in (zero_w, zero_g, zero_bias):
        assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["momentum_buffer"]).all()
    # ||w|| = 0: trust 1, the full lr * g step (not eta * 0 / ||g|| = 0: the layer would freeze)
    torch.testing.assert_close(zero_w.detach(), -lr * zero_w.grad)
    torch.testing.assert_close(zero_bias.detach(), -lr * zero_bias.grad)
    assert zero_bias.abs().min() > 0
    torch.testing.assert_close(zero_g.detach(), w0)  # ||g'|| = 0: no step, no NaN


def test_grad_none_is_skipped_and_empty_tensors_are_fine(device):
    ps = random_params(device)
    ps[1].grad = None
    empty = torch.zeros(0, 3, device=device, requires_grad=True)
    empty.grad = torch.zeros(0, 3, device=device)
    before = ps[1].detach().clone()
    opt = LARS(ps + [empty], lr=0.1)
    opt.step()
    assert torch.equal(ps[1], before) and len(opt.state[ps[1]]) == 0
    assert not torch.equal(ps[0], ps[0].grad)  # the others were updated
    opt.step()
    assert torch.equal(ps[1], before)


def test_step_bumps_version_counters(device):
    ps = random_params(device)
    opt = LARS(ps, lr=0.1)
    before = [p._version for p in ps]
    opt.step()
    assert all(p._version > v for p, v in zip(ps, before) if p.numel() > 0)
    buf = opt.state[ps[0]]["momentum_buffer"]
    v0 = buf._version
    opt.step()
    assert buf._version > v0


def test_fused_step_is_deterministic(device):
    ps = random_params(device)
    qs = clone_params(ps)
    opt, opt2 = LARS(ps, lr=0.5, weight_decay=1e-4), LARS(qs, lr=0.5, weight_decay=1e-4)
    for _ in range(2):
        opt.step()
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_foreach_reference_matches_reference(device):
    ps = random_params(device, torch.float64)
    rs = clone_params(ps)
    kw = dict(lr=0.3, momentum=0.9, weight_decay=1e-3, eta=0.02, nesterov=True)
    fe, ref = ForeachLARS(ps, **kw), RefLARS(rs, **kw)
    for _ in range(3):
        fe.step()
        ref.step()
    assert_close_to_reference(ps, rs, fe, ref, 1e-13)


# ---------------------------------------------------------------------------------------------
# Optimizer plumbing: state_dict, lr_scheduler, GradScaler, bad arguments
# ---------------------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_bit_identically(device):
    torch.manual_seed(5)
    ps = random_params(device, torch.float32) + random_params(device, torch.float16, ((6, 5), (8,)))
    groups = [{"params": ps[:4]}, {"params": ps[4:], "weight_decay": 0.0, "lars_adaptation": False}]
    opt = LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-4, nesterov=True)

    def new_grads(params, seed):
        gen = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device=device, dtype=p.dtype)

    for k in range(3):
        new_grads(ps, k)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in ps]
    for k in range(3, 6):
        new_grads(ps, k)
        opt.step()

    qs = [w.clone().requires_grad_(True) for w in saved_params]
    opt2 = LARS(regroup(groups, qs), lr=0.5, momentum=0.9, weight_decay=1e-4, nesterov=True)
    opt2.load_state_dict(saved)
    for q in qs:
        assert opt2.state[q]["momentum_buffer"].dtype == torch.float32  # fp16 params: fp32 state
    for k in range(3, 6):
        new_grads(qs, k)
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_lr_scheduler_drives_the_step(device):
    ps = random_params(device, torch.float64)
    rs = clone_params(ps)
    opt, ref = LARS(ps, lr=1.0, weight_decay=1e-3), RefLARS(rs, lr=1.0, weight_decay=1e-3)
    lam = lambda epoch: 0.5 ** epoch  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lam)
    for _ in range(4):
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 ** 4)
    assert_close_to_reference(ps, rs, opt, ref, 1e-13)


def test_grad_scaler_unscales_and_skips_inf_steps(device):
    torch.manual_seed(6)
    model = small_cnn(torch.float32, device)
    ref_model = copy.deepcopy(model)
    opt = LARS(simclr_param_groups(model, 1e-4), lr=0.6)
    ref = RefLARS(simclr_param_groups(ref_model, 1e-4), lr=0.6)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    x = torch.randn(8, 3, 12, 12, device=device)
    y = torch.randint(0, 10, (8,), device=device)

    for skip in (False, True, False):
        opt.zero_grad()
        ref.zero_grad()
        before = [p.detach().clone() for p in model.parameters()]
        bufs_before = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()
                       if "momentum_buffer" in opt.state[p]]
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            nn.functional.cross_entropy(ref_model(x), y).backward()
        if skip:
            next(model.parameters()).grad[0].view(-1)[0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if skip:
            for p, b in zip(model.parameters(), before):
                assert torch.equal(p, b)
            bufs = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
            assert all(torch.equal(a, b) for a, b in zip(bufs, bufs_before))
            assert scaler.get_scale() == 2.0 ** 9
        else:
            ref.step()
            for p, r in zip(model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, eta=0.0), "eta"),
        (dict(lr=0.1, eta=-1e-3), "eta"),
        (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        LARS([p], **kwargs)
    with pytest.raises(ValueError, match=match):  # the same check for a group's own setting
        LARS([{"params": [p], **kwargs}], lr=0.1)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [torch.randn(2, requires_grad=True)], **kwargs})
    assert len(opt.param_groups) == 1


def test_sparse_grad_and_bad_tensors_raise(device):
    emb = nn.Embedding(10, 4, sparse=True).to(device)
    emb(torch.tensor([1, 2], device=device)).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        LARS(emb.parameters(), lr=0.1).step()
    with pytest.raises(TypeError, match="float"):
        LARS([torch.zeros(3, dtype=torch.int64)], lr=0.1)
    # the op's own checks name the argument
    p = torch.randn(4, device=device)
    with pytest.raises(RuntimeError, match=r"grads\[0\]"):
        torch.ops.simclr_ext.lars_step(
            [p], [torch.randn(4, device=device, dtype=torch.float64)],
            [torch.zeros(4, device=device)], [0.1], [0.0], [0.9], [1e-3], [True], [False])
    with pytest.raises(RuntimeError, match=r"momentum_buffers\[0\]"):
        torch.ops.simclr_ext.lars_step(
            [p], [torch.randn(4, device=device)],
            [torch.zeros(4, device=device, dtype=torch.float16)],
            [0.1], [0.0], [0.9], [1e-3], [True], [False])
    with pytest.raises(RuntimeError, match="same length"):
        torch.ops.simclr_ext.lars_step([p], [], [], [0.1], [0.0], [0.9], [1e-3], [True], [False])


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile; CUDA: launches and host syncs
# ---------------------------------------------------------------------------------------------
def op_args(device, dtype=torch.float32):
    ps = [torch.randn(s, device=device, dtype=dtype) for s in ((5, 3), (40000,), (4,))]
    gs = [torch.randn_like(p) for p in ps]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    vs = [torch.randn(p.shape, device=device, dtype=acc) for p in ps]
    n = len(ps)
    return (ps, gs, vs, [0.1] * n, [1e-4] * n, [0.9] * n, [1e-3] * n, [True, True, False],
            [False, True, False])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    torch.library.opcheck(torch.ops.simclr_ext.lars_step.default, op_args(device, dtype))


@pytest.mark.slow
def test_compiled_call_matches_eager(device):
    args = op_args(device)
    eager = copy.deepcopy(args)
    torch.ops.simclr_ext.lars_step(*eager)

    @torch.compile(fullgraph=True)
    def step(ps, gs, vs):
        torch.ops.simclr_ext.lars_step(ps, gs, vs, *args[3:])

    step(args[0], args[1], args[2])
    for a, b in zip(args[0] + args[2], eager[0] + eager[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_optimizer_step_matches_reference(device):
    ps = random_params(device, shapes=((5, 3), (40000,), (4,)))
    rs = clone_params(ps)
    opt = LARS(ps, lr=0.1, weight_decay=1e-3, nesterov=True)
    ref = RefLARS(rs, lr=0.1, weight_decay=1e-3, nesterov=True)

    @torch.compile(fullgraph=True)
    def step():
        opt.step()

    for _ in range(3):
        step()
        ref.step()
    assert_close_to_reference(ps, rs, opt, ref, 1e-6)


def _cuda_activity(opt):
    """(kernel launches, host-to-device copies) of one opt.step() after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    opt.step()  # buffers created outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = sum(1 for n in names if "multi_tensor_apply_kernel" in n)
    copies = sum(1 for n in names if "memcpy" in n.lower())
    return kernels, copies


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_launch_count_independent_of_tensor_count():
    few = [torch.randn(100, 10, device="cuda", requires_grad=True) for _ in range(5)]
    many = [torch.randn(100, 10, device="cuda", requires_grad=True) for _ in range(500)]
    for p in few + many:
        p.grad = torch.randn_like(p)
    # per (device, dtype) bucket: one plan upload, the norm pass and the update, whatever the count
    assert _cuda_activity(LARS(few, lr=0.1)) == (2, 1)
    assert _cuda_activity(LARS(many, lr=0.1)) == (2, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_makes_no_host_sync():
    ps = random_params("cuda") + random_params("cuda", torch.bfloat16)
    opt = LARS(simclr_param_groups([(str(i), p) for i, p in enumerate(ps)], 1e-4), lr=0.3)
    opt.step()  # buffer allocation outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------------------------
# Tensor lr (torch.optim's convention): a scheduled, compiled step compiles once
# ---------------------------------------------------------------------------------------------
def _compiled_scheduled_steps(device, lr, steps=20):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    ps = random_params(device, shapes=((5, 3), (7,)))
    opt = LARS(ps, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    opt.step()  # eager warm-up: creates the momentum buffers (a new state is a new graph)
    counter = CompileCounter()
    step = torch.compile(opt.step, backend=counter)
    lrs = []
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn_like(p)
        lrs.append(float(opt.param_groups[0]["lr"]))
        step()
        sched.step()
    return counter.frame_count, lrs, ps, opt


@pytest.mark.slow
def test_tensor_lr_compiled_step_with_scheduler_compiles_once(device):
    with torch._dynamo.config.patch(recompile_limit=64, cache_size_limit=64):
        frames_tensor, lrs, ps, _ = _compiled_scheduled_steps(device, torch.tensor(0.1))
        frames_float, lrs_float, _, _ = _compiled_scheduled_steps(device, 0.1)
    assert len(set(lrs)) == 20  # the schedule really changed the lr every step
    torch.testing.assert_close(lrs, lrs_float, rtol=1e-6, atol=0)
    assert frames_tensor == 1, f"tensor lr: {frames_tensor} compiles over 20 scheduled steps"
    # the contrast that makes the check meaningful: a float lr is a constant of the graph
    assert frames_float > 1


def test_tensor_lr_steps_match_float_lr(device):
    ps = random_params(device)
    qs = clone_params(ps)
    a = LARS(ps, lr=torch.tensor(0.2, dtype=torch.float64), weight_decay=1e-4)  # exactly 0.2
    b = LARS(qs, lr=0.2, weight_decay=1e-4)
    sa = torch.optim.lr_scheduler.StepLR(a, step_size=2, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(b, step_size=2, gamma=0.5)
    lr_tensor = a.param_groups[0]["lr"]
    for i in range(5):
        for p, q in zip(ps, qs):
            q.grad = torch.randn_like(p)
            p.grad = q.grad.clone()
        a.step()
        b.step()
        sa.step()
        sb.step()
    assert a.param_groups[0]["lr"] is lr_tensor  # updated in place by the scheduler
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bad_tensor_lr_raises():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="lr"):
        LARS(p, lr=torch.tensor(-0.1))
    with pytest.raises(TypeError, match="lr"):
        LARS(p, lr=torch.tensor([0.1, 0.2]))
