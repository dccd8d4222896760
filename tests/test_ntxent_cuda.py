"""GPU-only NT-Xent tests beyond the shared cpu/cuda tests of tests/test_ntxent.py.

All skip without a CUDA device. benchmarks/gpu_check.sh runs them; the `sanitize` cases are the
small ones it also runs under compute-sanitizer memcheck and racecheck. The references are
computed on the GPU in float64, in row chunks, so no (2N)^2 matrix exists at once.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import simclr_ext
from simclr_ext import reference

from conftest import tf32_matmul  # tests/conftest.py

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def chunked_reference(z_i, z_j, temperature, sample_rows, chunk=2048):
    """float64 NT-Xent on the GPU without the full matrix.

    Returns (row_loss [2N], grad_z [len(sample_rows), D]) for loss = mean_k loss_k: the first
    pass computes every row's LSE over row chunks, the second the exact gradient of the sampled
    rows (docs/architecture.md, 2.1: dL/du_k = 1/(2N tau) [sum_{m != k} (P_km + P_mk) u_m - 2 u_pos(k)]).
    """
    z = torch.cat([z_i, z_j]).double()
    n2 = z.shape[0]
    n = n2 // 2
    norm = z.norm(dim=1)
    u = z / norm.clamp_min(1e-12).unsqueeze(1)
    pos = (torch.arange(n2, device=z.device) + n) % n2
    lse = torch.empty(n2, dtype=torch.float64, device=z.device)
    s_pos = (u * u[pos]).sum(1) / temperature
    for r0 in range(0, n2, chunk):
        rows = torch.arange(r0, min(r0 + chunk, n2), device=z.device)
        s = u[rows] @ u.T / temperature
        s[torch.arange(len(rows), device=z.device), rows] = -math.inf  # self excluded exactly
        lse[rows] = torch.logsumexp(s, dim=1)
        del s
    row_loss = lse - s_pos

    k = sample_rows.to(z.device)
    s_k = u[k] @ u.T / temperature  # [K, 2N]
    self_mask = torch.zeros_like(s_k, dtype=torch.bool)
    self_mask[torch.arange(len(k), device=z.device), k] = True
    p_km = torch.exp(s_k - lse[k].unsqueeze(1)).masked_fill(self_mask, 0.0)
    p_mk = torch.exp(s_k - lse.unsqueeze(0)).masked_fill(self_mask, 0.0)  # s symmetric
    grad_u = ((p_km + p_mk) @ u - 2.0 * u[pos[k]]) / (n2 * temperature)
    u_k = u[k]
    dot = (u_k * grad_u).sum(1, keepdim=True)
    grad_z = (grad_u - u_k * dot) / norm[k].clamp_min(1e-12).unsqueeze(1)
    return row_loss, grad_z


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def fwd_bwd(z_i, z_j, temperature=0.5, reduction="mean"):
    z_i = z_i.detach().clone().requires_grad_(True)
    z_j = z_j.detach().clone().requires_grad_(True)
    loss = simclr_ext.nt_xent_loss(z_i, z_j, temperature=temperature, reduction=reduction)
    (loss if loss.dim() == 0 else loss.sum()).backward()
    return loss.detach(), z_i.grad, z_j.grad


def ref_fwd_bwd(z_i, z_j, temperature=0.5, reduction="mean"):
    z_i = z_i.detach().double().clone().requires_grad_(True)
    z_j = z_j.detach().double().clone().requires_grad_(True)
    loss = reference.nt_xent_loss(z_i, z_j, temperature=temperature, reduction=reduction)
    (loss if loss.dim() == 0 else loss.sum()).backward()
    return loss.detach(), z_i.grad, z_j.grad


# --------------------------------------------------------------------------------------------
# 2N = 65536, D = 128, bf16: completes, matches the chunked reference, stays within 1 GiB
# --------------------------------------------------------------------------------------------
def test_large_batch_bf16_matches_chunked_reference():
    torch.manual_seed(0)
    n, d, tau = 32768, 128, 0.5
    dev = torch.device("cuda")
    z_i = torch.randn(n, d, device=dev).to(torch.bfloat16).requires_grad_(True)
    z_j = (z_i.detach().float() + 0.5 * torch.randn(n, d, device=dev)).to(torch.bfloat16)
    z_j.requires_grad_(True)

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    row_loss = simclr_ext.nt_xent_loss(z_i, z_j, temperature=tau, reduction="none")
    loss = row_loss.mean()
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # The materialized matrix alone would be 16 GiB in fp32; the fused op needs O(N D).
    assert extra < 1 << 30, f"fused forward + backward used {extra / 2**20:.0f} MiB extra"
    assert torch.isfinite(row_loss).all()
    assert torch.isfinite(z_i.grad.float()).all() and torch.isfinite(z_j.grad.float()).all()

    gen = torch.Generator(device="cpu").manual_seed(1)
    sample = torch.cat(
        [
            torch.tensor([0, 1, n - 1, n, n + 1, 2 * n - 1]),  # both views, tile edges
            torch.randint(0, 2 * n, (250,), generator=gen),
        ]
    ).unique()
    ref_loss, ref_grad = chunked_reference(z_i.detach(), z_j.detach(), tau, sample)

    # bf16 inputs: logits carry ~2^-8 relative rounding of u, so per-row losses agree to a few
    # 1e-3 absolute (loss ~ log(2N) ~ 11) and the mean much better.
    assert (row_loss.double() - ref_loss).abs().max().item() < 5e-2
    assert abs(loss.item() - ref_loss.mean().item()) < 5e-3
    grad = torch.cat([z_i.grad, z_j.grad]).double()[sample.to(dev)]
    per_row = (grad - ref_grad).norm(dim=1) / ref_grad.norm(dim=1)
    assert per_row.max().item() < 5e-2, f"worst sampled gradient row: {per_row.max().item():.3g}"
    assert rel_err(grad, ref_grad) < 2e-2


# --------------------------------------------------------------------------------------------
# fp32: TF32 tensor cores only when allowed
# --------------------------------------------------------------------------------------------
def test_fp32_exact_without_tf32_and_tf32_only_when_allowed():
    torch.manual_seed(2)
    n, d = 1000, 256  # 2N not a multiple of the 64-row tile
    z_i = torch.randn(n, d, device="cuda")
    z_j = torch.randn(n, d, device="cuda")
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j)
    ref_g = torch.cat([ref_gi, ref_gj])

    with tf32_matmul(False):
        loss_ieee, gi, gj = fwd_bwd(z_i, z_j)
    g_ieee = torch.cat([gi, gj])
    # Exact fp32 path: fp32 rounding only. TF32 (10-bit mantissa) would miss this by ~100x.
    assert rel_err(loss_ieee, ref_loss) < 1e-5
    assert rel_err(g_ieee, ref_g) < 1e-5

    with tf32_matmul(True):
        loss_tf32, gi, gj = fwd_bwd(z_i, z_j)
    g_tf32 = torch.cat([gi, gj])
    # TF32 path: tensor-core accuracy (~1e-3 relative), and a different result than exact fp32.
    assert rel_err(loss_tf32, ref_loss) < 2e-3
    assert rel_err(g_tf32, ref_g) < 2e-2
    assert not torch.equal(g_tf32, g_ieee), "allow_tf32=True did not switch to the TF32 path"

    with tf32_matmul(False):  # switching back restores the exact path
        _, gi, gj = fwd_bwd(z_i, z_j)
    assert torch.equal(torch.cat([gi, gj]), g_ieee)

    # torch.set_float32_matmul_precision("high") is the other documented switch to TF32.
    old_precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        _, gi, gj = fwd_bwd(z_i, z_j)
    finally:
        torch.set_float32_matmul_precision(old_precision)
    assert torch.equal(torch.cat([gi, gj]), g_tf32)


# --------------------------------------------------------------------------------------------
# fp16 with "mean": weights 1/2N must not underflow the fp16 coefficients
# --------------------------------------------------------------------------------------------
def test_fp16_mean_gradient_does_not_underflow():
    """With reduction="mean" the weights are 1/2N, so w P ~ 1/(2N)^2 ~ 1.5e-8 at 2N = 8192: below
    fp16's smallest subnormal (6e-8). The kernel divides the coefficients by max |w| before they
    become fp16 operands, so "mean" must give exactly the "sum" gradient / 2N (up to the fp16
    rounding of the outputs); flushed coefficients would drop every negative's contribution."""
    torch.manual_seed(3)
    n, d = 4096, 64
    z_i = torch.randn(n, d, device="cuda").half()
    z_j = (z_i.float() + 0.5 * torch.randn(n, d, device="cuda")).half()
    _, gi_mean, gj_mean = fwd_bwd(z_i, z_j, temperature=0.5, reduction="mean")
    _, gi_sum, gj_sum = fwd_bwd(z_i, z_j, temperature=0.5, reduction="sum")
    g_mean = torch.cat([gi_mean, gj_mean]).float() * (2 * n)
    g_sum = torch.cat([gi_sum, gj_sum]).float()
    assert rel_err(g_mean, g_sum) < 1e-2
    # and both agree with the float64 reference to fp16 accuracy
    _, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j, temperature=0.5, reduction="sum")
    assert rel_err(g_sum, torch.cat([ref_gi, ref_gj])) < 1e-2


# --------------------------------------------------------------------------------------------
# Run-to-run identity: no races (a moving result on the same input is one)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_repeated_runs_are_bitwise_identical(dtype):
    torch.manual_seed(4)
    z_i = torch.randn(777, 200, device="cuda", dtype=dtype)
    z_j = torch.randn(777, 200, device="cuda", dtype=dtype)
    first = fwd_bwd(z_i, z_j, reduction="none")
    for _ in range(3):
        again = fwd_bwd(z_i, z_j, reduction="none")
        for a, b in zip(first, again):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Small cases, also run under compute-sanitizer memcheck / racecheck by gpu_check.sh
# --------------------------------------------------------------------------------------------
# (N, D): N = 1 (one candidate per row); a single partial tile; D not a multiple of 8 (the
# element-wise load path); D spanning two 128-wide backward D ranges with a ragged end; rows and
# columns past one 64-tile with D < one chunk.
SMALL_CASES = [(1, 5), (5, 3), (37, 70), (33, 136), (70, 300), (100, 24)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


PATHS = [  # (dtype, allow_tf32): every kernel path
    pytest.param(torch.float64, False, id="fp64-simt"),
    pytest.param(torch.float32, False, id="fp32-simt"),
    pytest.param(torch.float32, True, id="fp32-tf32"),
    pytest.param(torch.bfloat16, False, id="bf16"),
    pytest.param(torch.float16, False, id="fp16"),
]


@pytest.mark.sanitize
@pytest.mark.parametrize("n,d", SMALL_CASES)
@pytest.mark.parametrize("dtype,tf32", PATHS)
def test_small_cases_match_reference(n, d, dtype, tf32):
    torch.manual_seed(n * 1000 + d)
    z_i = torch.randn(n, d, device="cuda").to(dtype)
    z_j = torch.randn(n, d, device="cuda").to(dtype)
    with tf32_matmul(tf32):
        loss, gi, gj = fwd_bwd(z_i, z_j, temperature=0.3, reduction="none")
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j, temperature=0.3, reduction="none")
    tol = 2e-2 if tf32 else TOL[dtype]
    if n == 1:  # each row's only candidate is its positive: loss 0, gradient 0
        assert loss.abs().max().item() < 1e-6
        assert torch.cat([gi, gj]).abs().max().item() < 1e-6
        return
    assert rel_err(loss, ref_loss) < tol
    assert rel_err(torch.cat([gi, gj]), torch.cat([ref_gi, ref_gj])) < max(tol, 1e-9) * 3


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_small_nan_input_gives_nan_loss(dtype):
    z_i = torch.randn(9, 16, device="cuda").to(dtype)
    z_j = torch.randn(9, 16, device="cuda").to(dtype)
    z_i[3, 5] = float("nan")
    loss, gi, gj = fwd_bwd(z_i, z_j, reduction="none")
    assert torch.isnan(loss[3]) and torch.isnan(loss).sum() >= 1
    # Row 3 appears as a column of every other row: the whole loss vector is NaN, as in the
    # reference; nothing is silently dropped.
    ref_loss, _, _ = ref_fwd_bwd(z_i, z_j, reduction="none")
    assert torch.equal(torch.isnan(loss), torch.isnan(ref_loss))
    assert torch.isnan(torch.cat([gi, gj])).any()


@pytest.mark.sanitize
def test_small_non_contiguous_views():
    torch.manual_seed(5)
    base = torch.randn(2, 40, 33, device="cuda", dtype=torch.bfloat16)
    z_i, z_j = base[0, :, 1:], base[1, :, 1:]  # D = 32, non-contiguous, odd offset
    loss, gi, gj = fwd_bwd(z_i, z_j)
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j)
    assert rel_err(loss, ref_loss) < 3e-2
    assert rel_err(torch.cat([gi, gj]), torch.cat([ref_gi, ref_gj])) < 1e-1


def test_extreme_temperature_bf16_stays_finite():
    torch.manual_seed(6)
    z_i = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)
    z_j = torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)
    loss, gi, gj = fwd_bwd(z_i, z_j, temperature=0.01)
    assert torch.isfinite(loss) and torch.isfinite(gi.float()).all()
    assert torch.isfinite(gj.float()).all()
    ref_loss, _, _ = ref_fwd_bwd(z_i, z_j, temperature=0.01)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 3e-2


def test_current_stream_and_device_guard():
    """Work is enqueued on the caller's stream (no host sync needed to be correct on it)."""
    torch.manual_seed(7)
    z_i = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    z_j = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    expect = fwd_bwd(z_i, z_j)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = fwd_bwd(z_i, z_j)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(expect, got):
        assert torch.equal(a, b)
    if torch.cuda.device_count() > 1:  # inputs on cuda:1 while cuda:0 is current
        with torch.cuda.device(0):
            got1 = fwd_bwd(z_i.to("cuda:1"), z_j.to("cuda:1"))
        for a, b in zip(expect, got1):
            assert b.device == torch.device("cuda:1")
            # another card model may pick other column splits: equal up to fp32 reassociation
            torch.testing.assert_close(a.float(), b.to(a.device).float(), rtol=1e-2, atol=1e-5)


def test_f_normalize_semantics_on_tiny_rows():
    """Rows below eps = 1e-12 follow F.normalize (u = z / eps), like the CPU kernel."""
    torch.manual_seed(8)
    z_i = torch.randn(20, 8, device="cuda", dtype=torch.float64)
    z_j = torch.randn(20, 8, device="cuda", dtype=torch.float64)
    z_i[4] *= 1e-14
    loss, gi, gj = fwd_bwd(z_i, z_j)
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j)
    assert rel_err(loss, ref_loss) < 1e-10
    assert rel_err(torch.cat([gi, gj]), torch.cat([ref_gi, ref_gj])) < 1e-8
    assert F.normalize(z_i, dim=1)[4].norm().item() < 1.0  # the case really is below eps


# --------------------------------------------------------------------------------------------
# Large D: the two-stage backward (every similarity tile computed once, coefficients through a
# workspace, one GEMM per wave of rows) on every path, next to the fused one at its limit
# --------------------------------------------------------------------------------------------
LARGE_D = [  # (dtype, tf32, n, d)
    pytest.param(torch.bfloat16, False, 300, 256, id="bf16-fused-limit"),
    pytest.param(torch.bfloat16, False, 300, 1024, id="bf16-two-stage"),
    pytest.param(torch.float16, False, 257, 300, id="fp16-two-stage-unaligned-rows"),
    pytest.param(torch.float32, True, 200, 520, id="tf32-two-stage"),
    pytest.param(torch.float32, False, 300, 130, id="fp32-two-stage"),
    pytest.param(torch.float64, False, 100, 70, id="fp64-two-stage"),
]


@pytest.mark.parametrize("dtype,tf32,n,d", LARGE_D)
def test_large_d_backward_matches_reference(dtype, tf32, n, d):
    torch.manual_seed(n + d)
    z_i = torch.randn(n, d, device="cuda").to(dtype)
    z_j = (z_i.double() + 0.5 * torch.randn(n, d, device="cuda", dtype=torch.float64)).to(dtype)
    with tf32_matmul(tf32):
        loss, gi, gj = fwd_bwd(z_i, z_j, temperature=0.2, reduction="none")
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j, temperature=0.2, reduction="none")
    tol = 2e-2 if tf32 else TOL[dtype]
    assert rel_err(loss, ref_loss) < tol
    assert rel_err(torch.cat([gi, gj]), torch.cat([ref_gi, ref_gj])) < max(tol, 1e-9) * 3


def test_two_stage_backward_over_several_waves_bf16():
    """2N = 8192, D = 512, bf16: the coefficient workspace (64 MiB budget) holds 4096 rows, so
    the rows are done in two waves; sampled rows of both waves match the chunked reference."""
    torch.manual_seed(9)
    n, d, tau = 4096, 512, 0.5
    z_i = torch.randn(n, d, device="cuda").to(torch.bfloat16).requires_grad_(True)
    z_j = (z_i.detach().float() + 0.5 * torch.randn(n, d, device="cuda")).to(torch.bfloat16)
    z_j.requires_grad_(True)
    row_loss = simclr_ext.nt_xent_loss(z_i, z_j, temperature=tau, reduction="none")
    row_loss.mean().backward()
    gen = torch.Generator(device="cpu").manual_seed(2)
    sample = torch.cat([torch.tensor([0, 4095, 4096, 8191]),
                        torch.randint(0, 2 * n, (200,), generator=gen)]).unique()
    ref_loss, ref_grad = chunked_reference(z_i.detach(), z_j.detach(), tau, sample)
    assert (row_loss.double() - ref_loss).abs().max().item() < 5e-2
    grad = torch.cat([z_i.grad, z_j.grad]).double()[sample.to("cuda")]
    per_row = (grad - ref_grad).norm(dim=1) / ref_grad.norm(dim=1)
    assert per_row.max().item() < 5e-2, f"worst sampled gradient row: {per_row.max().item():.3g}"


def test_d_beyond_the_grid_y_limit_of_the_old_fused_backward():
    """fp32 exact, D = 2^22 + 2^16: the fused SIMT backward would have needed 66560 blocks in
    grid.y (CUDA allows 65535); the two-stage backward has no D in its grid."""
    torch.manual_seed(10)
    d = (1 << 22) + (1 << 16)
    z_i = torch.randn(2, d, device="cuda")
    z_j = z_i + 0.3 * torch.randn(2, d, device="cuda")
    with tf32_matmul(False):
        loss, gi, gj = fwd_bwd(z_i, z_j, reduction="none")
    ref_loss, ref_gi, ref_gj = ref_fwd_bwd(z_i, z_j, reduction="none")
    # fp32 dot products of 4M terms, each summed by one thread: ~sqrt(4M) x 2^-24 ~ 1e-4
    assert rel_err(loss, ref_loss) < 1e-3
    assert rel_err(torch.cat([gi, gj]), torch.cat([ref_gi, ref_gj])) < 1e-3


def test_fp16_mean_gradient_at_65536_rows_matches_reference():
    """2N = 65536, fp16, "mean": the coefficients (~1/(2N)^2) are scaled by 2^14 / max|w| into
    fp16's normal range. A regression guard at the size where the old 1 / max|w| scaling put
    them among fp16 subnormals (the per-coefficient effect is checked on the CPU in
    tests/test_ntxent_cuda_layout.py)."""
    torch.manual_seed(11)
    n, d, tau = 32768, 128, 0.5
    z_i = torch.randn(n, d, device="cuda").half().requires_grad_(True)
    z_j = (z_i.detach().float() + 0.5 * torch.randn(n, d, device="cuda")).half()
    z_j.requires_grad_(True)
    simclr_ext.nt_xent_loss(z_i, z_j, temperature=tau).backward()
    gen = torch.Generator(device="cpu").manual_seed(3)
    sample = torch.randint(0, 2 * n, (200,), generator=gen).unique()
    _, ref_grad = chunked_reference(z_i.detach(), z_j.detach(), tau, sample)
    grad = torch.cat([z_i.grad, z_j.grad]).double()[sample.to("cuda")]
    per_row = (grad - ref_grad).norm(dim=1) / ref_grad.norm(dim=1)
    # fp16 inputs, coefficients and outputs (2^-11 each); flushed coefficients would be O(1) off
    assert per_row.max().item() < 2e-2, f"worst sampled gradient row: {per_row.max().item():.3g}"


# --------------------------------------------------------------------------------------------
# TF32 is decided by the forward; the backward takes the same path whatever the setting then
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [256, 520], ids=["fused", "two-stage"])
def test_backward_takes_the_forwards_tf32_path(d):
    torch.manual_seed(12)
    z = torch.randn(600, d, device="cuda")

    def grad(forward_tf32, backward_tf32):
        x = z.clone().requires_grad_(True)
        with tf32_matmul(forward_tf32):
            loss = simclr_ext.nt_xent_loss(x)
        with tf32_matmul(backward_tf32):
            loss.backward()
        return x.grad

    g_tf32, g_ieee = grad(True, True), grad(False, False)
    assert not torch.equal(g_tf32, g_ieee)
    assert torch.equal(grad(False, True), g_ieee)
    if d == 256:  # fused: the whole backward is our kernel, so the bits are the forward's path
        assert torch.equal(grad(True, False), g_tf32)
    else:  # two-stage: the coefficients take the TF32 path, cuBLAS's GEMM follows the setting
        assert rel_err(grad(True, False), g_tf32) < 2e-2
