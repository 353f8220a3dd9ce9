//! The CUDA launcher of `kernels/matmul.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::f32_to_bf16;
use crate::cuda::launch::{elems, launch, need, same_gpu, sync_if_asked};
use crate::cuda::{k, Gemm, Gpu, GpuBuf, GpuRange, Kernel, MatmulKernel};
use crate::{bail, Error, Result};
use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;
use std::sync::Arc;

/// `C = alpha * op(A) @ op(B) + beta * C` in fp32 on the CUDA cores; twin of `gemm_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    let (pa, pb, pc) = (a.ptr(), b.ptr(), c.ptr());
    let (ta, tb) = (trans_a as i32, trans_b as i32);
    launch!(a.gpu(), k::matmul::gemm_f32, cfg; mi, ni, ki, alpha, pa, ta, pb, tb, beta, pc);
    Ok(())
}

const GEMM_SMEM: u32 = 2 * 4 * 128 * (32 + 8) * 2;

/// `C = alpha * op(A) @ op(B) + beta * C` with bf16 operands on the tensor cores and fp32
/// accumulation; the twin of `gemm_cpu` on the operands widened to f32. The default kernel choice
/// ([`Gemm::default`]); [`gemm_bf16_with`] takes another.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<bf16>,
    trans_a: bool,
    b: &impl GpuRange<bf16>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    gemm_bf16_with(Gemm::default(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_bf16`] on a chosen kernel and options: `MmaSync` on any GPU from sm_80; `WgmmaTma` on
/// compute capability 9.0 with `k` a multiple of 8 (an error elsewhere, never a silent fallback);
/// `Auto` as documented on [`MatmulKernel`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    g: Gemm,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<bf16>,
    trans_a: bool,
    b: &impl GpuRange<bf16>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    same_gpu(a, b)?;
    same_gpu(a, c)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let gpu = a.gpu().clone();
    if wgmma_for(&gpu, g.kernel, m, n, k)? {
        // Each operand K-major (A as [m, k], B as [n, k]), or MN-major as it is stored (A stored
        // [k, m], B stored [k, n]) where its rows are 16-byte aligned.
        let (a_mn, b_mn) = (mn_major_ok(g, a, m, trans_a), mn_major_ok(g, b, n, !trans_b));
        let (pa, _a_tmp) = if a_mn { (a.ptr(), None) } else { kmajor_bf16(a, m, k, trans_a)? };
        let (pb, _b_tmp) = if b_mn { (b.ptr(), None) } else { kmajor_bf16(b, n, k, !trans_b)? };
        // The scratch operands go back to the allocator after the launch is queued: later work on
        // the same stream runs after the kernel.
        let layout = Operands { a: pa, a_mn, b: pb, b_mn };
        return launch_wgmma(&gpu, g.kernel, m, n, k, alpha, layout, beta, c);
    }
    // 16-byte copies need the operand's contiguous dimension in whole 8-element chunks.
    let a_contig = if trans_a { m } else { k };
    let b_contig = if trans_b { k } else { n };
    let vec_a = (a_contig % 8 == 0 && a.ptr() % 16 == 0) as i32;
    let vec_b = (b_contig % 8 == 0 && b.ptr() % 16 == 0) as i32;
    let kernel = match (trans_a, trans_b) {
        (false, false) => k::matmul::gemm_bf16_nn,
        (false, true) => k::matmul::gemm_bf16_nt,
        (true, false) => k::matmul::gemm_bf16_tn,
        (true, true) => k::matmul::gemm_bf16_tt,
    };
    let name = kernel.name;
    let f = gpu.function(kernel)?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, GEMM_SMEM as i32)?;
    let (splits, kchunk) = split_k(g, &gpu, m, n, k);
    // Split-K: the partial products go to a workspace, summed into C by splitk_reduce.
    let ws = if splits > 1 { Some(gpu.alloc::<f32>(splits * m * n)?) } else { None };
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(128) as u32, m.div_ceil(128) as u32, splits as u32), block_dim: (256, 1, 1), shared_mem_bytes: GEMM_SMEM };
    let (mi, ni, ki, kc) = (m as i32, n as i32, k as i32, kchunk as i32);
    let (pa, pb) = (a.ptr(), b.ptr());
    let (alpha_k, beta_k, pc) = match &ws {
        Some(w) => (1.0f32, 0.0f32, w.ptr()),
        None => (alpha, beta, c.ptr()),
    };
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mi).arg(&ni).arg(&ki).arg(&alpha_k).arg(&pa).arg(&pb).arg(&beta_k).arg(&pc).arg(&vec_a).arg(&vec_b).arg(&kc);
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(&gpu, name)?;
    if let Some(w) = &ws {
        let (pw, sp, mn, pc) = (w.ptr(), splits as i32, (m * n) as i64, c.ptr());
        launch!(gpu, k::matmul::splitk_reduce, elems(m * n); pw, sp, mn, alpha, beta, pc);
    }
    Ok(())
}

/// (splits, k per split, a multiple of the kernel's 32-deep k tile) for the mma.sync kernel: one
/// split unless the 128 x 128 output tiles would fill at most half the multiprocessors and k is
/// long (at least 512); then enough splits to fill the device, each at least 256 deep.
fn split_k(g: Gemm, gpu: &Gpu, m: usize, n: usize, k: usize) -> (usize, usize) {
    let tiles = n.div_ceil(128) * m.div_ceil(128);
    let sms = gpu.sm_count();
    if !g.split_k || k < 512 || tiles * 2 > sms {
        return (1, k);
    }
    let want = sms.div_ceil(tiles).min(k / 256).max(1);
    let kchunk = k.div_ceil(want).div_ceil(32) * 32;
    (k.div_ceil(kchunk), kchunk)
}

/// `C = alpha * op(A) @ op(B) + beta * C` for f32 operands rounded to bf16 on the device (the
/// `MatmulPrecision::Bf16` path), on the default kernel choice (see [`gemm_f32_as_bf16_with`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_as_bf16(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    gemm_f32_as_bf16_with(Gemm::default(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_f32_as_bf16`] on a chosen kernel: on a `wgmma` kernel each operand is rounded straight
/// into the layout it reads (one pass, transposing where needed), else rounded and passed to
/// `mma.sync`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_as_bf16_with(
    g: Gemm,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    same_gpu(a, b)?;
    let gpu = a.gpu().clone();
    if m > 0 && n > 0 && wgmma_for(&gpu, g.kernel, m, n, k)? {
        // Rounded as stored where the TMA kernel reads that layout (MN-major rows of a multiple of
        // 8 elements), else rounded and transposed into the K-major layout in one pass.
        let (mut ab, mut bb) = (gpu.alloc::<bf16>(m * k)?, gpu.alloc::<bf16>(n * k)?);
        let (a_mn, b_mn) = (mn_major_ok(g, &ab, m, trans_a), mn_major_ok(g, &bb, n, !trans_b));
        if trans_a && !a_mn {
            transpose_f32_to_bf16(a, k, m, &mut ab)?;
        } else {
            f32_to_bf16(&a.range(0, m * k)?, &mut ab)?;
        }
        if !trans_b && !b_mn {
            transpose_f32_to_bf16(b, k, n, &mut bb)?;
        } else {
            f32_to_bf16(&b.range(0, n * k)?, &mut bb)?;
        }
        let layout = Operands { a: ab.ptr(), a_mn, b: bb.ptr(), b_mn };
        return launch_wgmma(&gpu, g.kernel, m, n, k, alpha, layout, beta, c);
    }
    let mut ab = gpu.alloc::<bf16>(m * k)?;
    f32_to_bf16(&a.range(0, m * k)?, &mut ab)?;
    let mut bb = gpu.alloc::<bf16>(n * k)?;
    f32_to_bf16(&b.range(0, n * k)?, &mut bb)?;
    gemm_bf16_with(Gemm { kernel: MatmulKernel::MmaSync, ..g }, m, n, k, alpha, &ab, trans_a, &bb, trans_b, beta, c)
}

/// Whether an operand stored MN-major (`stored_mn`: its `mn` index contiguous) can be read so by
/// the TMA kernel: MN-major loads on, a 16-byte aligned start and rows of a multiple of 8 elements.
fn mn_major_ok(g: Gemm, x: &impl GpuRange<bf16>, mn: usize, stored_mn: bool) -> bool {
    stored_mn && g.mn_major && mn.is_multiple_of(8) && x.ptr().is_multiple_of(16)
}

/// The device addresses of a `wgmma` product's operands and their layouts: A [m, k] (or, with
/// `a_mn`, [k, m]) and B [n, k] (or, with `b_mn`, [k, n]).
struct Operands {
    a: u64,
    a_mn: bool,
    b: u64,
    b_mn: bool,
}

/// Whether a bf16 product of this shape runs on `wgmma` under `kernel`.
fn wgmma_for(gpu: &Gpu, kernel: MatmulKernel, m: usize, n: usize, k: usize) -> Result<bool> {
    match kernel {
        MatmulKernel::MmaSync => Ok(false),
        MatmulKernel::Auto => Ok(gpu.has_wgmma() && k.is_multiple_of(8) && m >= 128 && n >= 128 && k >= 64),
        MatmulKernel::WgmmaTma | MatmulKernel::WgmmaTmaPersistent => {
            if !gpu.has_wgmma() {
                let cc = gpu.context().compute_capability().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|e| format!("unknown ({e:?})"));
                bail!(Device, "the wgmma matmul needs a GPU of compute capability 9.0; cuda:{} has {cc}", gpu.ordinal());
            }
            if !k.is_multiple_of(8) {
                bail!(Shape, "the wgmma matmul needs an inner dimension that is a multiple of 8, got {k}");
            }
            Ok(true)
        }
    }
}

/// The device address of `x` as a K-major operand (`rows` rows of `k` contiguous elements, 16-byte
/// aligned): `x` itself where it already is one, else a scratch copy (transposed from `[k, rows]`
/// when `stored_t`), returned so that the caller keeps it alive until the launch is queued.
fn kmajor_bf16(x: &impl GpuRange<bf16>, rows: usize, k: usize, stored_t: bool) -> Result<(u64, Option<GpuBuf<bf16>>)> {
    if !stored_t && x.ptr() % 16 == 0 {
        return Ok((x.ptr(), None));
    }
    let mut t = x.gpu().alloc::<bf16>(rows * k)?;
    if stored_t {
        transpose_bf16(x, k, rows, &mut t)?;
    } else {
        crate::cuda::copy(&x.range(0, rows * k)?, &mut t)?;
    }
    Ok((t.ptr(), Some(t)))
}

const WG_STAGE_A: u32 = 128 * 64 * 2;

/// A `CUtensorMap`, passed to a kernel by value (`const __grid_constant__ TmaMap`).
#[repr(C, align(64))]
struct TmaMap(sys::CUtensorMap);

// SAFETY: plain bytes, the layout of the kernel's `TmaMap` parameter (128 bytes, 64-byte aligned).
unsafe impl DeviceRepr for TmaMap {}

/// The tensor map of a bf16 operand stored as `outer` rows of `inner` contiguous elements (at a
/// 16-byte aligned `ptr`, `inner` a multiple of 8), in boxes of `box_inner` x `box_outer`, written
/// to shared memory with the 128-byte swizzle; reads past the operand's edges fill zeros. A K-major
/// operand is `rows` x `k` in boxes of 64 k by the tile's rows; an MN-major one `k` x `rows` in
/// boxes of 64 x 64.
fn tma_map(ptr: u64, inner: usize, outer: usize, box_inner: u32, box_outer: u32) -> Result<TmaMap> {
    use sys::{CUtensorMapDataType as D, CUtensorMapFloatOOBfill as F, CUtensorMapInterleave as I, CUtensorMapL2promotion as L, CUtensorMapSwizzle as S};
    let dims: [u64; 2] = [inner as u64, outer as u64];
    let strides: [u64; 1] = [(inner * 2) as u64];
    let boxes: [u32; 2] = [box_inner, box_outer];
    let steps: [u32; 2] = [1, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array holds the rank's entries; the map is fully written on success.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            S::CU_TENSOR_MAP_SWIZZLE_128B,
            L::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| Error::Device(format!("tensor map of a {outer} x {inner} bf16 operand: {e:?}")))?;
        Ok(TmaMap(map.assume_init()))
    }
}

/// The tensor map of one operand of the TMA kernel: `rows` (M or N) by `k`, K-major in boxes of
/// `tile_rows` x 64 k, or MN-major in boxes of 64 x 64.
fn operand_map(ptr: u64, mn_major: bool, rows: usize, k: usize, tile_rows: u32) -> Result<TmaMap> {
    if mn_major {
        tma_map(ptr, rows, k, 64, 64)
    } else {
        tma_map(ptr, k, rows, 64, tile_rows)
    }
}

/// Launches the TMA `wgmma` kernel on `ops` (the variant of the operands' layouts): one block per
/// 128 x 256 output tile, or with `WgmmaTmaPersistent` one per multiprocessor looping over them.
#[allow(clippy::too_many_arguments)]
fn launch_wgmma(
    gpu: &Arc<Gpu>,
    choice: MatmulKernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    ops: Operands,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    let (mi, ni, ki, pc) = (m as i32, n as i32, k as i32, c.ptr());
    // 4 stages of a 128 x 64 and a 256 x 64 tile, 1 KiB for alignment, 8 mbarriers.
    let smem = 4 * (WG_STAGE_A + 256 * 64 * 2) + 1024 + 64;
    use k::matmul_sm90a as km;
    let persistent = choice == MatmulKernel::WgmmaTmaPersistent;
    let kernel = match (persistent, ops.a_mn, ops.b_mn) {
        (false, false, false) => km::gemm_wgmma_tma,
        (false, false, true) => km::gemm_wgmma_tma_nn,
        (false, true, true) => km::gemm_wgmma_tma_tn,
        (false, true, false) => km::gemm_wgmma_tma_tt,
        (true, false, false) => km::gemm_wgmma_tma_persistent,
        (true, false, true) => km::gemm_wgmma_tma_persistent_nn,
        (true, true, true) => km::gemm_wgmma_tma_persistent_tn,
        (true, true, false) => km::gemm_wgmma_tma_persistent_tt,
    };
    let name = kernel.name;
    let f = gpu.function(kernel)?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
    let tiles = n.div_ceil(256) * m.div_ceil(128);
    let grid = if persistent { (tiles.min(gpu.sm_count()) as u32, 1, 1) } else { (n.div_ceil(256) as u32, m.div_ceil(128) as u32, 1) };
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (384, 1, 1), shared_mem_bytes: smem };
    let mut l = gpu.stream().launch_builder(&f);
    let maps = (operand_map(ops.a, ops.a_mn, m, k, 128)?, operand_map(ops.b, ops.b_mn, n, k, 256)?);
    l.arg(&maps.0).arg(&maps.1).arg(&mi).arg(&ni).arg(&ki).arg(&alpha).arg(&beta).arg(&pc);
    // SAFETY: the operands hold m x k and n x k elements and C m x n (checked by the callers).
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(gpu, name)
}

/// `out[c, r] = x[r, c]` for `x` of `[r, c]` bf16 (sm_90 module; used to lay operands out for
/// the `wgmma` kernel).
pub fn transpose_bf16(x: &impl GpuRange<bf16>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    transpose(k::matmul_sm90a::transpose_bf16, x, r, c, out)
}

/// `out[c, r] = bf16(x[r, c])` for `x` of `[r, c]` f32, rounded to nearest even.
pub fn transpose_f32_to_bf16(x: &impl GpuRange<f32>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    transpose(k::matmul_sm90a::transpose_f32_to_bf16, x, r, c, out)
}

/// Launches one of the two transposes (32 x 32 tiles, 256 threads a block).
fn transpose<T: Copy>(kernel: Kernel, x: &impl GpuRange<T>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    need("x", x, r * c)?;
    need("out", out, r * c)?;
    let gpu = x.gpu();
    let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, r.div_ceil(32) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (ri, ci, px, po) = (r as i32, c as i32, x.ptr(), out.ptr());
    let (name, f) = (kernel.name, gpu.function(kernel)?);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&ri).arg(&ci).arg(&px).arg(&po);
    // SAFETY: both ranges hold r x c elements (checked above).
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(gpu, name)
}
