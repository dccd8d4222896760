"""Fused NT-Xent (docs/architecture.md section 2): values and gradients vs simclr_ext.reference,
both CPU schedules, numerics, bad inputs, torch.compile / autocast / opcheck, gathered negatives
over gloo ranks, and the O(N) memory bound measured as a subprocess's peak RSS."""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import simclr_ext
from simclr_ext import reference
from simclr_ext._extension import _C

ROOT = Path(__file__).resolve().parent.parent


def _rand(n_rows, dim, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_rows, dim, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _loss_and_grad(fn, z, reduction, weight_seed=1):
    z = z.detach().clone().requires_grad_(True)
    loss = fn(z, reduction)
    g = torch.Generator().manual_seed(weight_seed)
    upstream = torch.rand(loss.shape, generator=g, dtype=torch.float64).to(loss)
    (grad,) = torch.autograd.grad(loss, z, upstream)
    return loss.detach(), grad


def _fused(z, reduction="mean", tau=0.5):
    return simclr_ext.nt_xent_loss(z, temperature=tau, reduction=reduction)


def _ref(z, reduction="mean", tau=0.5):
    return reference.nt_xent_loss(z, temperature=tau, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# Values and gradients vs the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,dim", [(1, 3), (1, 128), (2, 1), (37, 3), (300, 128), (131, 2048),
                                   (700, 16)])
@pytest.mark.parametrize("tau", [0.5, 0.07])
def test_forward_backward_match_reference_fp64(device, n, dim, tau):
    z = _rand(2 * n, dim, device, seed=n * 7 + dim)
    for reduction in ("mean", "sum", "none"):
        lf, gf = _loss_and_grad(lambda t, r: _fused(t, r, tau), z, reduction)
        lr, gr = _loss_and_grad(lambda t, r: _ref(t, r, tau), z, reduction)
        assert lf.dtype == torch.float64 and gf.dtype == torch.float64
        torch.testing.assert_close(lf, lr, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-12)


def test_single_pair_has_zero_loss(device):
    # N = 1: each row's only candidate is its positive, so the loss is exactly 0.
    z = _rand(2, 5, device, dtype=torch.float32)
    loss = _fused(z, "none")
    torch.testing.assert_close(loss, torch.zeros(2, device=device), atol=1e-6, rtol=0)


def test_both_input_forms_and_module_agree(device):
    z_i, z_j = _rand(9, 6, device, seed=1), _rand(9, 6, device, seed=2)
    z = torch.cat([z_i, z_j])
    expected = _ref(z)
    for value in (simclr_ext.nt_xent_loss(z_i, z_j), simclr_ext.nt_xent_loss(z),
                  simclr_ext.NTXentLoss()(z_i, z_j), simclr_ext.NTXentLoss()(z),
                  simclr_ext.NTXentLoss(temperature=0.5, gather_distributed=True)(z_i, z_j)):
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    none = simclr_ext.NTXentLoss(reduction="none")(z_i, z_j)
    assert none.shape == (18,)
    torch.testing.assert_close(none, _ref(z, "none"), rtol=1e-10, atol=0)


def test_noncontiguous_inputs(device):
    base = _rand(40, 12, device, seed=3)
    z_i, z_j = base[:20, ::2], base[20:, 1::2]  # strided views
    assert not z_i.is_contiguous()
    torch.testing.assert_close(simclr_ext.nt_xent_loss(z_i, z_j),
                               _ref(torch.cat([z_i, z_j])), rtol=1e-10, atol=0)


def test_fp32_matches_reference_1e5(device):
    z64 = _rand(2 * 517, 128, device, seed=5)
    for reduction in ("mean", "none"):
        lr, gr = _loss_and_grad(_ref, z64, reduction)
        lf, gf = _loss_and_grad(_fused, z64.float(), reduction)
        assert lf.dtype == torch.float32 and gf.dtype == torch.float32
        torch.testing.assert_close(lf.double(), lr, rtol=1e-5, atol=0)
        # gradient entries are ~1e-4 for "mean": relative to the gradient's scale
        scale = gr.abs().max()
        assert (gf.double() - gr).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_error_at_most_twice_reference_error(device, dtype):
    z64 = _rand(2 * 256, 128, device, seed=11)
    lr, gr = _loss_and_grad(_ref, z64, "none")  # the truth: fp64
    zh = z64.to(dtype)
    lf, gf = _loss_and_grad(_fused, zh, "none")
    lh, gh = _loss_and_grad(_ref, zh, "none")
    assert lf.dtype == torch.float32, "half inputs give an fp32 loss"
    assert gf.dtype == dtype, "gradients come back in the input dtype"

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(lf, lr) <= 2 * err(lh, lr)
    assert err(gf, gr) <= 2 * err(gh, gr)


def test_gradcheck_fp64(device):
    for n, dim, tau, reduction in [(3, 5, 0.5, "mean"), (4, 3, 0.1, "none"), (1, 4, 0.3, "sum")]:
        z = _rand(2 * n, dim, device, seed=n).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda t: simclr_ext.nt_xent_loss(t, temperature=tau, reduction=reduction), (z,))
        z_i = _rand(n, dim, device, seed=20).requires_grad_(True)
        z_j = _rand(n, dim, device, seed=21).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda a, b: simclr_ext.nt_xent_loss(a, b, temperature=tau), (z_i, z_j))


def test_cpu_results_are_bitwise_reproducible():
    # Fixed thread count -> fixed tile-to-accumulator assignment -> identical bits every run
    # (both schedules: tau = 0.5 symmetric, tau = 0.01 general).
    z = _rand(2 * 700, 64, "cpu", dtype=torch.float32, seed=60)
    for tau in (0.5, 0.01):
        first = _loss_and_grad(lambda t, r: _fused(t, r, tau), z, "mean")
        for _ in range(3):
            again = _loss_and_grad(lambda t, r: _fused(t, r, tau), z, "mean")
            assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


# The kernel's general schedule (rows against gathered columns at an offset), called directly:
# the distributed path's building block, checked against the materialized formula.
@pytest.mark.parametrize("tau", [0.5, 0.01])
def test_rows_against_gathered_columns_fp64(device, tau):
    rows, before, after, dim = 2 * 150, 78, 300, 24
    u_all = torch.nn.functional.normalize(_rand(before + rows + after, dim, device, seed=8), dim=1)
    z_rows = _rand(rows, dim, device, seed=9) * 3  # norm != 1: exercises the normalize backward
    u_rows, norm = _C.ntxent_normalize(z_rows)
    u_cols = torch.cat([u_all[:before], u_rows, u_all[before + rows:]])
    row_loss, row_lse = _C.ntxent_forward(u_rows, u_cols, before, tau, symmetric=False)

    logits, pos = reference._ntxent_logits(u_rows, u_cols, before, tau)
    torch.testing.assert_close(row_lse, torch.logsumexp(logits, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(row_loss, torch.nn.functional.cross_entropy(
        logits, pos, reduction="none"), rtol=1e-12, atol=1e-12)

    # Backward: gradient of sum_k w_k loss_k over ALL columns' rows w.r.t. this block's z.
    n_cols = u_cols.shape[0]
    col_weight = torch.rand(n_cols, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    col_weight = col_weight.to(device)
    col_z = torch.cat([u_all[:before], z_rows, u_all[before + rows:]]).requires_grad_(True)
    u_full = torch.nn.functional.normalize(col_z, dim=1)
    # Every column is a row of some rank; its positive is within its own block of `rows` rows.
    full_logits = u_full @ u_full.t() / tau
    full_logits = full_logits.masked_fill(torch.eye(n_cols, dtype=torch.bool, device=device),
                                          float("-inf"))
    idx = torch.arange(n_cols, device=device)
    in_block = (idx >= before) & (idx < before + rows)
    # Columns outside this block: paired among themselves (before and rows are even).
    pos_full = torch.where(in_block, before + (idx - before + rows // 2) % rows, idx ^ 1)
    lse_full = torch.logsumexp(full_logits, 1)
    loss_full = lse_full - full_logits.gather(1, pos_full[:, None])[:, 0]
    (grad_ref,) = torch.autograd.grad((loss_full * col_weight).sum(), col_z)
    # Rows of other blocks only touch this block through their lse (their positives are
    # elsewhere), which is what the kernel's col_lse / col_weight carry.
    grad = _C.ntxent_backward(u_rows, u_cols, norm, row_lse, lse_full.detach(),
                              col_weight[before:before + rows].contiguous(), col_weight,
                              before, tau, symmetric=False)
    torch.testing.assert_close(grad, grad_ref[before:before + rows], rtol=1e-9, atol=1e-12)


# The single-process caller flags `symmetric` (its rows are their own columns): the CPU kernel
# then computes each upper-triangle tile once for both of its sides. Both schedules are exact, so
# the flag changes the work, never the result: both checked against the reference in float64.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("tau", [0.5, 0.01])
def test_symmetric_flag_and_general_schedule_both_match_reference(device, dtype, tol, tau):
    # 600 rows: three 256-row tiles, the last one partial. D = 4 and close positives keep the
    # loss unsaturated at tau = 0.01 (see test_small_temperature_no_overflow).
    z = _rand(2 * 300, 4, device, seed=70)
    z[300:] = z[:300] + 0.1 * _rand(300, 4, device, seed=71)
    z = z * 3  # norm != 1: exercises the normalize backward
    u, norm = _C.ntxent_normalize(z.to(dtype))
    g = torch.Generator().manual_seed(72)
    w = torch.rand(z.shape[0], generator=g, dtype=torch.float64).to(device)

    z_ref = z.clone().requires_grad_(True)
    loss_ref = reference.nt_xent_loss(z_ref, None, tau, "none")
    (grad_ref,) = torch.autograd.grad((loss_ref * w).sum(), z_ref)
    w = w.to(norm.dtype)
    for symmetric in (True, False):
        row_loss, row_lse = _C.ntxent_forward(u, u, 0, tau, symmetric=symmetric)
        grad = _C.ntxent_backward(u, u, norm, row_lse, row_lse, w, w, 0, tau,
                                  symmetric=symmetric)
        torch.testing.assert_close(row_loss.double(), loss_ref.detach(), rtol=tol, atol=tol,
                                   msg=f"symmetric={symmetric} loss")
        assert (grad.double() - grad_ref).abs().max() <= tol * grad_ref.abs().max(), symmetric


def test_symmetric_flag_requires_rows_as_columns(device):
    u, norm = _C.ntxent_normalize(_rand(8, 4, device))
    with pytest.raises(RuntimeError, match="symmetric=True means the rows are their own columns"):
        _C.ntxent_forward(u, u.clone(), 0, 0.5, symmetric=True)
    row_loss, row_lse = _C.ntxent_forward(u, u, 0, 0.5, symmetric=True)
    w = torch.ones_like(row_lse)
    with pytest.raises(RuntimeError, match="pass col_lse = row_lse"):
        _C.ntxent_backward(u, u, norm, row_lse, row_lse.clone(), w, w, 0, 0.5, symmetric=True)


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_tiny_and_huge_norms(device, scale):
    z = _rand(2 * 64, 32, device, seed=12) * scale
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        lf, gf = _loss_and_grad(_fused, z.to(dtype), "mean")
        lr, gr = _loss_and_grad(_ref, z, "mean")
        assert torch.isfinite(lf) and torch.isfinite(gf).all()
        torch.testing.assert_close(lf.double(), lr, rtol=tol, atol=0)
        assert (gf.double() - gr).abs().max() <= tol * gr.abs().max()


def test_small_temperature_no_overflow(device):
    # tau = 0.01: logits up to 100, exp(100) overflows fp32; the online LSE must not. In D = 4
    # many negatives are close to each row, so the loss is far from saturated (a saturated loss
    # has gradients below fp64 resolution, in the reference too).
    z = _rand(2 * 300, 4, device, seed=13)
    z[300:] = z[:300] + 0.1 * _rand(300, 4, device, seed=14)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        lf, gf = _loss_and_grad(lambda t, r: _fused(t, r, 0.01), z.to(dtype), "none")
        lr, gr = _loss_and_grad(lambda t, r: _ref(t, r, 0.01), z, "none")
        assert torch.isfinite(lf).all() and torch.isfinite(gf).all()
        torch.testing.assert_close(lf.double(), lr, rtol=tol, atol=tol)
        assert (gf.double() - gr).abs().max() <= tol * gr.abs().max()


def test_nan_in_nan_out(device):
    z = _rand(2 * 20, 8, device, dtype=torch.float32)
    z[3, 2] = float("nan")
    assert torch.isnan(_fused(z))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(device):
    z = _rand(8, 4, device, dtype=torch.float32)
    cases = [
        (ValueError, "same shape", lambda: simclr_ext.nt_xent_loss(z, z[:, :3])),
        (ValueError, "same shape", lambda: simclr_ext.nt_xent_loss(z, z[:5])),
        (ValueError, "D > 0", lambda: simclr_ext.nt_xent_loss(z[:, :0], z[:, :0])),
        (ValueError, "N = 0", lambda: simclr_ext.nt_xent_loss(z[:0], z[:0])),
        (ValueError, "2N >= 2 rows", lambda: simclr_ext.nt_xent_loss(z[:0])),
        (ValueError, "2N >= 2 rows", lambda: simclr_ext.nt_xent_loss(z[:7])),
        (TypeError, "floating", lambda: simclr_ext.nt_xent_loss(z.long(), z.long())),
        (TypeError, "floating", lambda: simclr_ext.nt_xent_loss(z.int())),
        (ValueError, "temperature", lambda: simclr_ext.nt_xent_loss(z, z, temperature=0.0)),
        (ValueError, "temperature", lambda: simclr_ext.nt_xent_loss(z, z, temperature=-1)),
        (ValueError, "temperature", lambda: simclr_ext.NTXentLoss(temperature=0)),
        (TypeError, "temperature", lambda: simclr_ext.NTXentLoss(temperature="0.5")),
        (ValueError, "reduction", lambda: simclr_ext.nt_xent_loss(z, z, reduction="avg")),
        (ValueError, "2-d", lambda: simclr_ext.nt_xent_loss(z[0], z[0])),
        (TypeError, "z_i must be a torch.Tensor", lambda: simclr_ext.nt_xent_loss([1.0], z)),
    ]
    other = "meta" if device == "cpu" else "cpu"
    cases.append((ValueError, "same device",
                  lambda: simclr_ext.nt_xent_loss(z, torch.empty(8, 4, device=other))))
    for exc, msg, call in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_cuda_tensor_without_cuda_build_is_a_clear_error():
    if simclr_ext.build_info()["with_cuda"] or not torch.cuda.is_available():
        pytest.skip("only meaningful for a CPU-only build on a machine with a GPU")
    with pytest.raises(RuntimeError, match="built without CUDA support"):
        simclr_ext.nt_xent_loss(torch.randn(4, 3, device="cuda"))


# ---------------------------------------------------------------------------------------------
# torch.library / compile / autocast
# ---------------------------------------------------------------------------------------------
def test_opcheck(device):
    z = _rand(2 * 13, 7, device, dtype=torch.float32, seed=30).requires_grad_(True)
    torch.library.opcheck(simclr_ext.ops.ntxent_forward, (z, 0.5))
    row_loss, row_lse = simclr_ext.ops.ntxent_forward(z.detach(), 0.5)
    torch.library.opcheck(simclr_ext.ops.ntxent_backward,
                          (z.detach(), row_lse, torch.rand_like(row_loss), 0.5))


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    model = nn.Linear(6, 5).to(device=device, dtype=torch.float64)
    crit = simclr_ext.NTXentLoss(temperature=0.2)

    def step(x_i, x_j):
        return crit(model(x_i), model(x_j))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x_i, x_j = _rand(10, 6, device, seed=40), _rand(10, 6, device, seed=41)
    eager = step(x_i, x_j)
    (g_eager,) = torch.autograd.grad(eager, model.weight)
    out = compiled(x_i, x_j)
    (g_comp,) = torch.autograd.grad(out, model.weight)
    torch.testing.assert_close(out, eager, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-10, atol=0)


def test_autocast(device):
    half = torch.bfloat16 if device == "cpu" else torch.float16
    model = nn.Linear(32, 16).to(device)
    x_i, x_j = _rand(64, 32, device, torch.float32, 50), _rand(64, 32, device, torch.float32, 51)
    crit = simclr_ext.NTXentLoss(temperature=0.5)
    ref_loss = reference.nt_xent_loss(model(x_i).double(), model(x_j).double(), 0.5)
    (g_ref,) = torch.autograd.grad(ref_loss, model.weight)
    with torch.autocast(device_type=device, dtype=half):
        z_i, z_j = model(x_i), model(x_j)
        assert z_i.dtype == half
        loss = crit(z_i, z_j)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss, model.weight)
    assert g.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-2, atol=0)
    assert (g.double() - g_ref).abs().max() <= 0.05 * g_ref.abs().max()


# ---------------------------------------------------------------------------------------------
# Gathered negatives across gloo ranks
# ---------------------------------------------------------------------------------------------
def _make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8)).double()


def _rank_data(rank, n):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(n, 12, generator=g, dtype=torch.float64),
            torch.randn(n, 12, generator=g, dtype=torch.float64))


def _ddp_worker(rank, world_size, sizes, impls):
    from torch.nn.parallel import DistributedDataParallel as DDP

    x_i, x_j = _rank_data(rank, sizes[rank])
    out = {}
    for impl in impls:
        for reduction in ("mean", "sum"):
            model = DDP(_make_model(0))
            crit_cls = simclr_ext.NTXentLoss if impl == "fused" else reference.NTXentLoss
            crit = crit_cls(temperature=0.3, gather_distributed=True, reduction=reduction)
            loss = crit(model(x_i), model(x_j))
            loss.backward()
            out[impl, reduction] = (loss.detach(),
                                    [p.grad.clone() for p in model.module.parameters()])
        if impl == "fused":  # "none": this rank's rows
            model = _make_model(0)
            rows = simclr_ext.nt_xent_loss(model(x_i), model(x_j), 0.3, "none",
                                           gather_distributed=True)
            out[impl, "none"] = rows.detach()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(4, 4), (2, 6, 3)])
def test_gathered_negatives_equal_single_process(distributed, sizes):
    world = len(sizes)
    impls = ("fused", "reference") if len(set(sizes)) == 1 else ("fused",)
    results = distributed(_ddp_worker, world, list(sizes), impls)

    data = [_rank_data(r, n) for r, n in enumerate(sizes)]
    x_i = torch.cat([d[0] for d in data])
    x_j = torch.cat([d[1] for d in data])
    for reduction in ("mean", "sum"):
        model = _make_model(0)
        loss = reference.nt_xent_loss(model(x_i), model(x_j), 0.3, reduction)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        for impl in impls:
            for rank, res in enumerate(results):
                got_loss, got_grads = res[impl, reduction]
                torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-10, atol=0,
                                           msg=f"{impl} {reduction} loss on rank {rank}")
                for g_got, g_ref in zip(got_grads, grads):
                    torch.testing.assert_close(g_got, g_ref, rtol=1e-8, atol=1e-12,
                                               msg=f"{impl} {reduction} grads on rank {rank}")
    # "none": each rank's [view 1; view 2] rows of the global loss.
    model = _make_model(0)
    rows = reference.nt_xent_loss(model(x_i), model(x_j), 0.3, "none").detach()
    n_total, start = sum(sizes), 0
    for rank, n in enumerate(sizes):
        expected = torch.cat([rows[start:start + n], rows[n_total + start:n_total + start + n]])
        torch.testing.assert_close(results[rank]["fused", "none"], expected, rtol=1e-10, atol=0)
        start += n


# ---------------------------------------------------------------------------------------------
# Memory: O(N D), never the 2N x 2N matrix
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_peak_memory_16384_rows_under_128_mib():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from harness import cpu_peak_mib
    finally:
        sys.path.pop(0)
    # The materialized fp32 matrix alone would be 1 GiB (and the reference peaks at ~3 GiB).
    peak = cpu_peak_mib("bench_ntxent:setup", impl="fused", n2=16384, dim=128, dtype="float32",
                        device="cpu")
    assert peak <= 128, f"fused NT-Xent forward + backward grew peak RSS by {peak:.1f} MiB"
