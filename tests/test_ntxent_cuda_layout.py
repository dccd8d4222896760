"""Host-side models of the CUDA NT-Xent kernels (csrc/ntxent/ntxent_cuda.cu), run on the CPU.

1. Warp level: replays the kernel's shared-memory addressing (144-byte padded rows), ldmatrix /
   ldmatrix.trans and mma.sync fragment layouts (as the PTX ISA defines them) and checks the
   warp's products against a plain matmul (warp_gemm1, Gemm2, 16-bit and tf32 variants).
2. Block level: the kernels' step sequence, column splits, masks, positive capture, coefficient
   scaling and split sums in float64, against the formulas of docs/architecture.md section 2.1
   (the kernels: 2.3), including a rank's rows at a row offset inside gathered columns; the two-stage backward of
   large D (coefficient tiles stored per wave of rows, then one GEMM per wave).
3. Host level: every launch's grid stays within CUDA's limits for any D; the fp16 coefficient
   scaling keeps the coefficients normal and finite.
They guard the index math and control flow against edits; they cannot prove the PTX semantics
or the synchronization, which only a GPU run (tests/test_ntxent_cuda.py) does. Keep the
formulas here in sync with the .cu file.
"""
import numpy as np
import pytest

ROW_STRIDE = 144  # bytes: 128-byte chunk + 16-byte pad
CHUNK_BYTES = 128


def smem_tile(mat, dtype):
    """[64, CHUNK_BYTES / itemsize] matrix -> padded shared-memory byte image."""
    mem = np.zeros(64 * ROW_STRIDE, dtype=np.uint8)
    raw = np.ascontiguousarray(mat.astype(dtype)).view(np.uint8)
    for r in range(64):
        mem[r * ROW_STRIDE : r * ROW_STRIDE + CHUNK_BYTES] = raw[r]
    return mem


def ldsm_x4(mem, addr, trans=False):
    """addr[lane] -> regs[lane][4], each reg as 4 raw bytes (PTX ldmatrix .m8n8 .b16)."""
    regs = np.zeros((32, 4, 4), dtype=np.uint8)
    for i in range(4):
        rows = [addr[8 * i + rr] for rr in range(8)]
        for t in range(32):
            if not trans:  # row t/4, b16 elements 2(t%4), 2(t%4)+1
                a = rows[t // 4] + 4 * (t % 4)
                regs[t, i] = mem[a : a + 4]
            else:  # elements (row 2(t%4), col t/4) and (row 2(t%4)+1, col t/4)
                a0 = rows[2 * (t % 4)] + 2 * (t // 4)
                a1 = rows[2 * (t % 4) + 1] + 2 * (t // 4)
                regs[t, i, :2] = mem[a0 : a0 + 2]
                regs[t, i, 2:] = mem[a1 : a1 + 2]
    return regs


def halves(reg):
    return reg.view(np.float16).astype(np.float64)  # (lo, hi)


def f32(reg):
    return float(reg.view(np.float32)[0])


def mma_k16(acc, a, b):
    """m16n8k16 row.col: a[lane][4 regs], b[lane][2 regs] (raw bytes), acc[lane][4] float."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2 * t : 2 * t + 2] = halves(a[lane][0])
        A[g + 8, 2 * t : 2 * t + 2] = halves(a[lane][1])
        A[g, 2 * t + 8 : 2 * t + 10] = halves(a[lane][2])
        A[g + 8, 2 * t + 8 : 2 * t + 10] = halves(a[lane][3])
        B[2 * t : 2 * t + 2, g] = halves(b[lane][0])
        B[2 * t + 8 : 2 * t + 10, g] = halves(b[lane][1])
    Cm = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        acc[lane] += [Cm[g, 2 * t], Cm[g, 2 * t + 1], Cm[g + 8, 2 * t], Cm[g + 8, 2 * t + 1]]


def mma_k8_tf32(acc, a, b):
    """m16n8k8 .tf32 row.col: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
    b0 (t, g), b1 (t+4, g)."""
    A = np.zeros((16, 8))
    B = np.zeros((8, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = (f32(x) for x in a[lane])
        B[t, g], B[t + 4, g] = f32(b[lane][0]), f32(b[lane][1])
    Cm = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        acc[lane] += [Cm[g, 2 * t], Cm[g, 2 * t + 1], Cm[g + 8, 2 * t], Cm[g + 8, 2 * t + 1]]


def acc_to_matrix(acc, ntiles):
    """acc[lane][nt][4] (C layout) -> [16, 8 ntiles]."""
    M = np.zeros((16, 8 * ntiles))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for nt in range(ntiles):
            M[g, 8 * nt + 2 * t : 8 * nt + 2 * t + 2] = acc[lane][nt][0:2]
            M[g + 8, 8 * nt + 2 * t : 8 * nt + 2 * t + 2] = acc[lane][nt][2:4]
    return M


def warp_gemm1(a_mem, b_mem, warp, tf32):
    """Mirror of warp_gemm1: returns acc[lane][8][4]."""
    acc = np.zeros((32, 8, 4))
    a_base = [
        (warp * 16 + (l & 7) + ((l >> 3) & 1) * 8) * ROW_STRIDE + (l >> 4) * 16 for l in range(32)
    ]
    b_base = [((l & 7) + (l >> 4) * 8) * ROW_STRIDE + ((l >> 3) & 1) * 16 for l in range(32)]
    for ks in range(CHUNK_BYTES // 32):
        a = ldsm_x4(a_mem, [x + ks * 32 for x in a_base])
        for p in range(4):
            b = ldsm_x4(b_mem, [x + p * 16 * ROW_STRIDE + ks * 32 for x in b_base])
            mma = mma_k8_tf32 if tf32 else mma_k16
            sub0, sub1 = acc[:, 2 * p].copy(), acc[:, 2 * p + 1].copy()
            mma(sub0, a, b[:, 0:2])
            mma(sub1, a, b[:, 2:4])
            acc[:, 2 * p], acc[:, 2 * p + 1] = sub0, sub1
    return acc


@pytest.mark.parametrize("tf32", [False, True], ids=["fp16", "tf32"])
def test_gemm1_fragments_give_row_tile_times_col_tile(tf32):
    rng = np.random.default_rng(0)
    dtype = np.float32 if tf32 else np.float16
    k = CHUNK_BYTES // np.dtype(dtype).itemsize
    rows = rng.integers(-4, 5, size=(64, k)).astype(np.float64)  # small ints: exact in fp16
    cols = rng.integers(-4, 5, size=(64, k)).astype(np.float64)
    a_mem, b_mem = smem_tile(rows, dtype), smem_tile(cols, dtype)
    for warp in range(4):
        acc = warp_gemm1(a_mem, b_mem, warp, tf32)
        expect = rows[warp * 16 : warp * 16 + 16] @ cols.T
        np.testing.assert_array_equal(acc_to_matrix(acc, 8), expect)


def test_gemm2_fragments_16bit_give_coef_times_v():
    """Gemm2<16-bit>: coefficients from the C layout as A operand, V^T by ldmatrix.trans."""
    rng = np.random.default_rng(1)
    coef_m = rng.integers(-3, 4, size=(16, 64)).astype(np.float64)  # [rows, columns m]
    v = rng.integers(-3, 4, size=(64, 64)).astype(np.float64)  # [m, d] chunk
    v_mem = smem_tile(v, np.float16)
    # coef[2 nt + h] = pack(C[nt][2h], C[nt][2h+1]) from the accumulator layout
    coef = np.zeros((32, 16, 4), dtype=np.uint8)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for nt in range(8):
            for h in range(2):
                pair = np.array(coef_m[g + 8 * h, 8 * nt + 2 * t : 8 * nt + 2 * t + 2], np.float16)
                coef[lane, 2 * nt + h] = pair.view(np.uint8)
    grad = np.zeros((32, 8, 4))
    v_base = [((l & 7) + ((l >> 3) & 1) * 8) * ROW_STRIDE + (l >> 4) * 16 for l in range(32)]
    for kk in range(4):
        a = coef[:, 4 * kk : 4 * kk + 4]
        for q in range(4):
            b = ldsm_x4(v_mem, [x + kk * 16 * ROW_STRIDE + q * 32 for x in v_base], trans=True)
            s0, s1 = grad[:, 2 * q].copy(), grad[:, 2 * q + 1].copy()
            mma_k16(s0, a, b[:, 0:2])
            mma_k16(s1, a, b[:, 2:4])
            grad[:, 2 * q], grad[:, 2 * q + 1] = s0, s1
    np.testing.assert_array_equal(acc_to_matrix(grad, 8), coef_m @ v)


def test_gemm2_fragments_tf32_permuted_k_give_coef_times_v():
    """Gemm2<float>: k order permuted inside each k8 step; B read with the same permutation."""
    rng = np.random.default_rng(2)
    coef_m = rng.integers(-3, 4, size=(16, 64)).astype(np.float64)
    v = rng.integers(-3, 4, size=(64, 32)).astype(np.float64)  # [m, d] chunk of 32 floats
    v_words = smem_tile(v, np.float32).view(np.float32)
    stride = ROW_STRIDE // 4
    c_regs = np.zeros((32, 8, 4))  # accumulator layout of the coefficients
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for nt in range(8):
            c_regs[lane, nt] = [
                coef_m[g, 8 * nt + 2 * t],
                coef_m[g, 8 * nt + 2 * t + 1],
                coef_m[g + 8, 8 * nt + 2 * t],
                coef_m[g + 8, 8 * nt + 2 * t + 1],
            ]
    as_reg = lambda x: np.array([x], np.float32).view(np.uint8)  # noqa: E731
    grad = np.zeros((32, 4, 4))
    for kk in range(8):
        a = np.stack([[as_reg(c_regs[l, kk, i]) for i in (0, 2, 1, 3)] for l in range(32)])
        for dn in range(4):
            b = np.zeros((32, 2, 4), dtype=np.uint8)
            for lane in range(32):
                g, t = lane // 4, lane % 4
                base = (8 * kk + 2 * t) * stride + g + 8 * dn
                b[lane, 0] = as_reg(v_words[base])
                b[lane, 1] = as_reg(v_words[base + stride])
            sub = grad[:, dn].copy()
            mma_k8_tf32(sub, a, b)
            grad[:, dn] = sub
    np.testing.assert_array_equal(acc_to_matrix(grad, 4), coef_m @ v)


def test_chunk_loader_covers_every_segment_once():
    """load_chunk: 128 threads x 4 iterations map onto the 64 rows x 8 segments of a chunk."""
    seen = np.zeros((64, 8), dtype=int)
    for i in range(64 * 8 // 128):
        for tid in range(128):
            seg = tid + i * 128
            seen[seg // 8, seg % 8] += 1
    assert (seen == 1).all()


def test_ldmatrix_rows_hit_distinct_bank_groups():
    """144-byte rows: the 8 row addresses of one 8x8 matrix cover all 32 banks once."""
    banks = set()
    for r in range(8):
        word = r * ROW_STRIDE // 4
        banks.update((word + w) % 32 for w in range(4))
    assert len(banks) == 32


# --------------------------------------------------------------------------------------------
# Block-level model of tc_forward_kernel / lse_finish_kernel / tc_backward_kernel /
# normalize_backward_kernel: the same step sequence (issue(s) decomposition), column splits,
# masks, positive capture, coefficient scaling and split sums, in float64 on small sizes, against
# the formulas of docs/architecture.md section 2.1. Guards the kernel's control flow, not its
# arithmetic precision.
# --------------------------------------------------------------------------------------------
ROWS, COLS = 64, 64  # kTcRows, kTcCols
COEF_SCALE = 2.0**14  # kCoefScale


def weight_unit(w_row, w_col):  # weight_unit: max|w|, 1 when it is 0 or NaN
    wmax = max(np.abs(w_row).max(), np.abs(w_col).max())
    return wmax if wmax > 0 else 1.0


def lse_merge(run_max, run_sum, tile_max, tile_sum):  # ntxent_math.h
    if tile_sum == 0 and tile_max == -np.inf:
        return run_max, run_sum
    if tile_max > run_max:
        return tile_max, run_sum * np.exp(run_max - tile_max) + tile_sum
    return run_max, run_sum + tile_sum * np.exp(tile_max - run_max)


def positive_col(i, rows, row_offset):
    return row_offset + (i + rows // 2) % rows


def split_plan(C, row_blocks, slots):
    """column_splits + split_columns of the host code, with `slots` resident blocks."""
    col_tiles = -(-C // COLS)
    splits = min(max(1, slots // row_blocks), col_tiles)
    split_cols = -(-col_tiles // splits) * COLS
    return -(-C // split_cols), split_cols


def chunk_of(mat, row0, k0, chunk):
    """load_chunk: rows [row0, row0 + 64) x [k0, k0 + chunk), zero outside the matrix."""
    out = np.zeros((64, chunk))
    r1, k1 = min(row0 + 64, mat.shape[0]), min(k0 + chunk, mat.shape[1])
    if r1 > row0 and k1 > k0:
        out[: r1 - row0, : k1 - k0] = mat[row0:r1, k0:k1]
    return out


def model_forward(u_rows, u_cols, row_offset, tau, chunk, slots):
    R, D = u_rows.shape
    C = u_cols.shape[0]
    row_tiles = -(-R // ROWS)
    splits, split_cols = split_plan(C, row_tiles, slots)
    part = np.zeros((splits, R, 2))
    pos_logit = np.full(R, np.nan)
    nk = -(-D // chunk)
    for bx in range(row_tiles):
        for by in range(splits):
            row0 = bx * ROWS
            c_begin = by * split_cols
            c_end = min(C, c_begin + split_cols)
            ntiles = -(-(c_end - c_begin) // COLS)
            state = [(-np.inf, 0.0)] * ROWS
            step = 0
            for j in range(ntiles):
                acc = np.zeros((ROWS, COLS))
                for kc in range(nk):
                    sj, skc = step // nk, step % nk  # issue(step)
                    assert (sj, skc) == (j, kc)
                    a = chunk_of(u_rows, row0, skc * chunk, chunk)
                    b = chunk_of(u_cols, c_begin + sj * COLS, skc * chunk, chunk)
                    acc += a @ b.T
                    step += 1
                col0 = c_begin + j * COLS
                for rl in range(ROWS):
                    r = row0 + rl
                    v = acc[rl] / tau
                    cols = col0 + np.arange(COLS)
                    pos = positive_col(r, R, row_offset)
                    hit = (cols == pos) & (cols < c_end)
                    if hit.any() and r < R:
                        assert np.isnan(pos_logit[r]), "two writers of one positive"
                        pos_logit[r] = v[hit][0]
                    # self and positive masked: the sum runs over the negatives
                    v = np.where((cols >= c_end) | (cols == row_offset + r) | (cols == pos),
                                 -np.inf, v)
                    tmax = v.max()
                    ref = 0.0 if tmax == -np.inf else tmax
                    state[rl] = lse_merge(*state[rl], tmax, np.exp(v - ref).sum())
            for rl in range(ROWS):
                if row0 + rl < R:
                    part[by, row0 + rl] = state[rl]
    lse, loss = np.zeros(R), np.zeros(R)
    for r in range(R):  # lse_finish_kernel: loss_from_negatives
        m, s = -np.inf, 0.0
        for sp in range(splits):
            m, s = lse_merge(m, s, *part[sp, r])
        with np.errstate(divide="ignore"):
            x = m + np.log(s) - pos_logit[r]  # -inf without negatives (N = 1)
        loss[r] = x + np.log1p(np.exp(-x)) if x > 0 else np.log1p(np.exp(x))
        lse[r] = pos_logit[r] + loss[r]
    return loss, lse, splits


def positive_term(u_rows, u_cols, row_lse, w_row, w_col, row_offset, tau):
    """The host side of backward_impl without a row_loss: loss = lse - s_pos, q = 1 - P_pos,
    the per-row coefficient (w_i q_i + w_pos q_pos) / tau of u_pos that the normalization kernel
    subtracts (the positive is masked in the tiles)."""
    R = u_rows.shape[0]
    pos_local = (np.arange(R) + R // 2) % R
    pos = pos_local + row_offset
    loss = row_lse - (u_rows * u_cols[pos]).sum(1) / tau
    q = -np.expm1(-loss)
    return ((w_row * q + w_col[pos] * q[pos_local]) / tau)[:, None] * u_cols[pos]


def model_backward(u_rows, u_cols, norm, row_lse, col_lse, w_row, w_col, row_offset, tau,
                   chunk, grad_chunks, slots):
    R, D = u_rows.shape
    C = u_cols.shape[0]
    d_range = grad_chunks * chunk
    row_tiles, d_ranges = -(-R // ROWS), -(-D // d_range)
    splits, split_cols = split_plan(C, row_tiles * d_ranges, slots)
    unit = weight_unit(w_row, w_col)
    slices = np.full((splits, R, D), np.nan)
    nk = -(-D // chunk)
    for bx in range(row_tiles):
        for byd in range(d_ranges):
            for bz in range(splits):
                row0, d_block = bx * ROWS, byd * d_range
                nv = min(grad_chunks, -(-(D - d_block) // chunk))
                per_tile = nk + nv
                c_begin = bz * split_cols
                c_end = min(C, c_begin + split_cols)
                ntiles = -(-(c_end - c_begin) // COLS)
                grad = np.zeros((grad_chunks, ROWS, chunk))
                step = 0
                for j in range(ntiles):
                    acc = np.zeros((ROWS, COLS))
                    for kc in range(nk):
                        assert divmod(step, per_tile) == (j, kc)
                        a = chunk_of(u_rows, row0, kc * chunk, chunk)
                        b = chunk_of(u_cols, c_begin + j * COLS, kc * chunk, chunk)
                        acc += a @ b.T
                        step += 1
                    col0 = c_begin + j * COLS
                    coef = np.zeros((ROWS, COLS))
                    for rl in range(ROWS):
                        r = row0 + rl
                        for cl in range(COLS):
                            c = col0 + cl
                            if (c < c_end and r < R and c != row_offset + r
                                    and c != positive_col(r, R, row_offset)):
                                s = acc[rl, cl] / tau
                                co = w_row[r] * np.exp(s - row_lse[r]) + w_col[c] * np.exp(
                                    s - col_lse[c]
                                )
                                coef[rl, cl] = co * (COEF_SCALE / unit)
                    for v in range(nv):
                        assert divmod(step, per_tile) == (j, nk + v)
                        vt = chunk_of(u_cols, c_begin + j * COLS, d_block + v * chunk, chunk)
                        grad[v] += coef @ vt
                        step += 1
                for v in range(nv):
                    for dd in range(chunk):
                        d = d_block + v * chunk + dd
                        if d < D:
                            r1 = min(R, row0 + ROWS)
                            slices[bz, row0:r1, d] = (grad[v, : r1 - row0, dd]
                                                      * (unit / COEF_SCALE / tau))
    assert not np.isnan(slices).any(), "a gradient slice element was never written"
    grad_u = slices.sum(0) - positive_term(u_rows, u_cols, row_lse, w_row, w_col, row_offset, tau)
    dot = (u_rows * grad_u).sum(1, keepdims=True)
    return (grad_u - u_rows * dot) / norm[:, None], splits


def reference_lse(u_rows, u_cols, row_offset, tau):
    s = u_rows @ u_cols.T / tau
    R = u_rows.shape[0]
    s[np.arange(R), row_offset + np.arange(R)] = -np.inf
    m = s.max(1)
    return m + np.log(np.exp(s - m[:, None]).sum(1)), s


# (R, C, row_offset, D, slots): one process; a rank in the middle of 3 gathered ranks; ragged
# D over 2 backward D ranges; N = 1; splits forced from 1 to one per column tile.
MODEL_CASES = [
    (10, 10, 0, 5, 1),
    (130, 130, 0, 70, 1),
    (130, 130, 0, 70, 1000),
    (74, 222, 74, 140, 6),
    (74, 222, 74, 140, 100),
    (2, 2, 0, 3, 8),
    (64, 192, 128, 16, 2),
]


@pytest.mark.parametrize("R,C,row_offset,D,slots", MODEL_CASES)
@pytest.mark.parametrize("chunk,grad_chunks", [(64, 2), (32, 4)], ids=["16bit", "tf32"])
def test_block_model_matches_formulas(R, C, row_offset, D, slots, chunk, grad_chunks):
    rng = np.random.default_rng(R * 7 + C + D)
    z_cols = rng.standard_normal((C, D))
    norm_cols = np.linalg.norm(z_cols, axis=1)
    u_cols = z_cols / norm_cols[:, None]
    u_rows, norm = u_cols[row_offset : row_offset + R], norm_cols[row_offset : row_offset + R]
    tau = 0.3
    loss, lse, _ = model_forward(u_rows, u_cols, row_offset, tau, chunk, slots)
    ref_lse, s = reference_lse(u_rows, u_cols, row_offset, tau)
    pos = positive_col(np.arange(R), R, row_offset)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)
    np.testing.assert_allclose(loss, ref_lse - s[np.arange(R), pos], rtol=1e-9, atol=1e-12)

    # Backward with every column's LSE (as gathered across ranks) and uneven weights.
    col_lse, _ = reference_lse(u_cols, u_cols, 0, tau)
    w_col = rng.uniform(0.1, 1.0, C) / C
    w_row = w_col[row_offset : row_offset + R]
    grad, _ = model_backward(u_rows, u_cols, norm, col_lse[row_offset : row_offset + R], col_lse,
                             w_row, w_col, row_offset, tau, chunk, grad_chunks, slots)
    s_full = u_rows @ u_cols.T / tau
    coef = w_row[:, None] * np.exp(s_full - col_lse[row_offset : row_offset + R, None])
    coef += w_col[None, :] * np.exp(s_full - col_lse[None, :])
    coef[np.arange(R), row_offset + np.arange(R)] = 0.0
    coef[np.arange(R), pos] -= w_row + w_col[pos]
    grad_u = coef @ u_cols / tau
    ref = (grad_u - u_rows * (u_rows * grad_u).sum(1, keepdims=True)) / norm[:, None]
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Two-stage backward (large D): tc_coef_kernel / simt_coef_kernel store every coefficient of
# their tile once into the wave's workspace [rows, C], then grad_u[wave] = coef @ u_cols (the
# GEMM), scaled by max|w| / kCoefScale (16-bit coefficients) and 1/tau in the normalization.
# --------------------------------------------------------------------------------------------
def wave_rows(R, C, D, coef_bytes, acc_bytes, tile):
    """Host wave_rows: workspace within max(R D acc_bytes, 64 MiB), whole tiles, <= 65535."""
    budget = max(R * D * acc_bytes, 64 << 20)
    rows = budget // (C * coef_bytes) // tile * tile
    rows = min(rows, -(-R // tile) * tile)
    rows = min(rows, 65535 * tile)
    return max(rows, tile)


def coefficient(s, r, c, row_lse, col_lse, w_row, w_col, row_offset, R):
    """pair_coeff with the self and positive masks, as both coefficient kernels do (the
    positive's term is the normalization kernel's)."""
    if c == row_offset + r or c == positive_col(r, R, row_offset):
        return 0.0
    return w_row[r] * np.exp(s - row_lse[r]) + w_col[c] * np.exp(s - col_lse[c])


def tc_coef_stores(row0, col0, row_end, C):
    """(row, col) of each store of one tc_coef_kernel block, in the kernel's loop order: warp w,
    lane (g, t4) holds acc[nt][2h + e] = S(row0 + 16 w + g + 8 h, col0 + 8 nt + 2 t4 + e)."""
    for warp in range(4):
        for lane in range(32):
            g, t4 = lane >> 2, lane & 3
            for nt in range(8):
                for e in range(2):
                    c = col0 + nt * 8 + 2 * t4 + e
                    if c >= C:
                        continue
                    for h in range(2):
                        r = row0 + warp * 16 + g + 8 * h
                        if r < row_end:
                            yield r, c


def simt_coef_stores(row0, col0, row_end, C, tile):
    """(row, col) of each store of one simt_coef_kernel block: thread (ty, tx) owns rows
    row0 + ty + 16 i and columns col0 + tx + 16 j."""
    for ty in range(16):
        for tx in range(16):
            for i in range(tile // 16):
                r = row0 + ty + 16 * i
                if r >= row_end:
                    continue
                for j in range(tile // 16):
                    c = col0 + tx + 16 * j
                    if c < C:
                        yield r, c


def model_backward_two_stage(u_rows, u_cols, norm, row_lse, col_lse, w_row, w_col, row_offset,
                             tau, wave, kind, chunk=64):
    """kind "tc16" (16-bit workspace, scaled), "tc32" (fp32 workspace) or ("simt", TILE)."""
    R, D = u_rows.shape
    C = u_cols.shape[0]
    tile = kind[1] if kind[0] == "simt" else ROWS
    scaled = kind == "tc16"
    unit = weight_unit(w_row, w_col)
    coef_scale = COEF_SCALE / unit if scaled else 1.0
    grad_u = np.full((R, D), np.nan)
    for r0 in range(0, R, wave):
        rows = min(wave, R - r0)
        coef = np.full((wave, C), np.nan)  # the workspace, reused by every wave
        written = np.zeros((wave, C), dtype=int)
        for by in range(-(-rows // tile)):  # grid (column tiles, row tiles of the wave)
            for bx in range(-(-C // tile)):
                row0, col0 = r0 + by * tile, bx * tile
                if kind[0] == "simt":  # simt_tile_dot: all of D in steps of kSimtK, zero-filled
                    a = np.zeros((tile, D))
                    b = np.zeros((tile, D))
                    a[: max(0, min(tile, R - row0))] = u_rows[row0 : row0 + tile]
                    b[: max(0, min(tile, C - col0))] = u_cols[col0 : col0 + tile]
                    acc = a @ b.T
                    stores = simt_coef_stores(row0, col0, r0 + rows, C, tile)
                else:  # nk steps of (row chunk, column chunk), as in tc_coef_kernel's issue()
                    acc = np.zeros((ROWS, COLS))
                    for kc in range(-(-D // chunk)):
                        acc += (chunk_of(u_rows, row0, kc * chunk, chunk)
                                @ chunk_of(u_cols, col0, kc * chunk, chunk).T)
                    stores = tc_coef_stores(row0, col0, r0 + rows, C)
                for r, c in stores:
                    s = acc[r - row0, c - col0] / tau
                    coef[r - r0, c] = coef_scale * coefficient(s, r, c, row_lse, col_lse, w_row,
                                                               w_col, row_offset, R)
                    written[r - r0, c] += 1
        assert (written[:rows] == 1).all(), "a coefficient stored twice or never"
        assert (written[rows:] == 0).all(), "a store past the wave's rows"
        grad_u[r0 : r0 + rows] = coef[:rows] @ u_cols  # at::mm_out into the wave's rows
    assert not np.isnan(grad_u).any(), "a gradient row was never written"
    grad_u *= (unit / COEF_SCALE if scaled else 1.0) / tau  # normalize_backward_kernel's scale
    grad_u -= positive_term(u_rows, u_cols, row_lse, w_row, w_col, row_offset, tau)
    dot = (u_rows * grad_u).sum(1, keepdims=True)
    return (grad_u - u_rows * dot) / norm[:, None]


# (R, C, row_offset, D, wave): several waves with a ragged last one; a rank inside gathered
# columns; N = 1; one wave larger than R.
TWO_STAGE_CASES = [
    (130, 130, 0, 70, 64),
    (74, 222, 74, 40, 64),
    (2, 2, 0, 3, 64),
    (100, 100, 0, 33, 128),
]


@pytest.mark.parametrize("R,C,row_offset,D,wave", TWO_STAGE_CASES)
@pytest.mark.parametrize("kind", [("tc16",), ("tc32",), ("simt", 64), ("simt", 32)], ids=str)
def test_two_stage_backward_model_matches_formulas(R, C, row_offset, D, wave, kind):
    if kind[0] == "simt":
        wave = max(kind[1], wave // kind[1] * kind[1])  # whole SIMT tiles, as wave_rows gives
    kind = kind if kind[0] == "simt" else kind[0]
    rng = np.random.default_rng(R * 3 + C + D)
    z_cols = rng.standard_normal((C, D))
    norm_cols = np.linalg.norm(z_cols, axis=1)
    u_cols = z_cols / norm_cols[:, None]
    u_rows, norm = u_cols[row_offset : row_offset + R], norm_cols[row_offset : row_offset + R]
    tau = 0.3
    col_lse, _ = reference_lse(u_cols, u_cols, 0, tau)
    w_col = rng.uniform(0.1, 1.0, C) / C
    w_row = w_col[row_offset : row_offset + R]
    grad = model_backward_two_stage(u_rows, u_cols, norm, col_lse[row_offset : row_offset + R],
                                    col_lse, w_row, w_col, row_offset, tau, wave, kind)
    pos = positive_col(np.arange(R), R, row_offset)
    s_full = u_rows @ u_cols.T / tau
    coef = w_row[:, None] * np.exp(s_full - col_lse[row_offset : row_offset + R, None])
    coef += w_col[None, :] * np.exp(s_full - col_lse[None, :])
    coef[np.arange(R), row_offset + np.arange(R)] = 0.0
    coef[np.arange(R), pos] -= w_row + w_col[pos]
    grad_u = coef @ u_cols / tau
    ref = (grad_u - u_rows * (u_rows * grad_u).sum(1, keepdims=True)) / norm[:, None]
    np.testing.assert_allclose(grad, ref, rtol=1e-9, atol=1e-14)


def test_wave_rows_bound_the_workspace():
    """The workspace [wave, C] stays within max(R D acc_bytes, 64 MiB) unless a single tile is
    already larger, covers R in whole tiles, and never needs more than 65535 tiles in grid.y."""
    for R, C, D, cb, ab, tile in [(65536, 65536, 8192, 2, 4, 64), (16384, 16384, 128, 4, 4, 64),
                                  (2, 2, 10**6, 8, 8, 32), (1 << 30, 1 << 30, 1, 2, 4, 64),
                                  (4096, 1 << 20, 300, 2, 4, 64)]:
        wave = wave_rows(R, C, D, cb, ab, tile)
        assert wave % tile == 0 and tile <= wave <= max(tile, -(-R // tile) * tile)
        assert wave // tile <= 65535
        assert wave * C * cb <= max(R * D * ab, 64 << 20) or wave == tile


# --------------------------------------------------------------------------------------------
# Host level: the grids of every launch of one forward + backward stay within CUDA's limits
# (y and z <= 65535, x < 2^31) for any D and N (mirror of the launch code's grid arithmetic).
# --------------------------------------------------------------------------------------------
TC_FUSED_MAX_D_RANGES, SIMT_FUSED_MAX_D_RANGES = 2, 1  # kTcFusedMaxDRanges, kSimt...


def launch_grids(R, C, D, path, slots=132 * 4):
    """Grids (x, y, z) of the kernels one forward + backward launches on `path`
    ("tc16", "tf32", ("simt", TILE))."""
    grids = []
    col_tiles = -(-C // COLS)
    if path[0] == "simt":
        tile = path[1]
        grids.append((-(-R // tile), 1, 1))  # simt_forward_kernel
        if D <= tile * SIMT_FUSED_MAX_D_RANGES:
            grids.append((-(-R // tile), -(-D // tile), 1))  # simt_backward_kernel
        else:
            wave = wave_rows(R, C, D, 8 if tile == 32 else 4, 8 if tile == 32 else 4, tile)
            grids.append((-(-C // tile), -(-min(wave, R) // tile), 1))  # simt_coef_kernel
    else:
        d_range = 128
        row_tiles = -(-R // ROWS)
        splits, _ = split_plan(C, row_tiles, slots)
        grids.append((row_tiles, splits, 1))  # tc_forward_kernel
        grids.append((-(-R // 256), 1, 1))  # lse_finish_kernel
        d_ranges = -(-D // d_range)
        if d_ranges <= TC_FUSED_MAX_D_RANGES:
            splits, _ = split_plan(C, row_tiles * d_ranges, slots)
            grids.append((row_tiles, d_ranges, splits))  # tc_backward_kernel
        else:
            elt = 2 if path == "tc16" else 4
            wave = wave_rows(R, C, D, elt, 4, ROWS)
            grids.append((col_tiles, -(-min(wave, R) // ROWS), 1))  # tc_coef_kernel
    grids.append((-(-R // 8), 1, 1))  # normalize_backward_kernel (8 rows per block)
    return grids


@pytest.mark.parametrize("path", ["tc16", "tf32", ("simt", 64), ("simt", 32)], ids=str)
def test_launch_grids_within_cuda_limits_for_any_d(path):
    # The fused SIMT backward used to put D / TILE in grid.y: D = 2^22 + 2^16 needed 66560 (fp32)
    for R, C, D in [(2, 2, (1 << 22) + (1 << 16)), (4, 8, 1 << 27), (1 << 20, 1 << 20, 1 << 12),
                    (1 << 30, 1 << 30, 2), (64, 1 << 30, 300), (4096, 4096, 256)]:
        for x, y, z in launch_grids(R, C, D, path):
            assert x < 2**31 and y <= 65535 and z <= 65535, (R, C, D, (x, y, z))


# --------------------------------------------------------------------------------------------
# fp16 coefficient scaling (kCoefScale = 2^14 over max|w|): "mean" weights w = 1/2N and
# P ~ 1/2N give coefficients ~ 1/(2N)^2; divided by max|w| only (the old scaling) they are
# ~1/2N, fp16 subnormals from 2N = 2^14 on; times 2^14 they stay normal, and the largest
# possible coefficient (2 max|w|) stays below fp16's largest value.
# --------------------------------------------------------------------------------------------
FP16_MIN_NORMAL, FP16_MAX = 2.0**-14, 65504.0


@pytest.mark.parametrize("n2", [32768, 65536])
def test_fp16_coefficients_stay_normal_with_the_2_14_scale(n2):
    rng = np.random.default_rng(n2)
    tau = 0.1
    w = np.full(4096, 1.0 / n2)  # "mean": the same weight for every row
    # Realistic probabilities: logits of unit vectors in D = 128 at tau = 0.1 over 2N columns.
    s = rng.standard_normal(4096) / np.sqrt(128) / tau
    lse = np.log(n2) + 0.5 / (128 * tau * tau)  # log sum exp of 2N such logits
    p = np.exp(s - lse)
    coef = w * p + w * p[::-1]  # w_i P_im + w_m P_mi for 4096 (i, m) pairs
    unit = weight_unit(w, w)

    def fp16_error(scale):
        stored = (coef * scale).astype(np.float16).astype(np.float64) / scale
        return np.abs(stored - coef) / coef

    new = fp16_error(COEF_SCALE / unit)
    old = fp16_error(1.0 / unit)
    assert ((coef * COEF_SCALE / unit) >= FP16_MIN_NORMAL).all()
    assert new.max() <= 2.0**-11  # round to nearest in a normal fp16: half an ulp
    assert old.max() > 4 * new.max()  # the old scaling lost bits in the subnormal range
    # The extreme coefficient: the positive's -(w_i + w_m) with P ~ 0, scaled, must not overflow.
    assert 2 * unit * COEF_SCALE / unit <= FP16_MAX
    assert np.isfinite(np.float16(-2 * unit * COEF_SCALE / unit))
