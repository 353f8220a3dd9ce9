//! The CUDA launcher of `kernels/reduce.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{k, GpuRange};
use crate::{bail, Result};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

const SUM_BLOCKS: usize = 264;

fn sum_impl(x: &impl GpuRange<f32>, squares: i32) -> Result<f64> {
    let gpu = x.gpu().clone();
    let parts = gpu.alloc::<f64>(SUM_BLOCKS)?;
    let out = gpu.alloc::<f64>(1)?;
    let cfg = LaunchConfig { grid_dim: (SUM_BLOCKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (px, n, pp, po, nb) = (x.ptr(), x.len() as i64, parts.ptr(), out.ptr(), SUM_BLOCKS as i32);
    launch!(gpu, k::reduce::sum_partials, cfg; px, n, squares, pp);
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    launch!(gpu, k::reduce::sum_finish, one; pp, nb, po);
    Ok(out.download()?[0])
}

/// Twin of `sum_cpu` (accumulates in f64; deterministic).
pub fn sum(x: &impl GpuRange<f32>) -> Result<f64> {
    sum_impl(x, 0)
}

/// Twin of `sum_squares_cpu`.
pub fn sum_squares(x: &impl GpuRange<f32>) -> Result<f64> {
    sum_impl(x, 1)
}

/// The sum of `sum_squares` over several buffers on one GPU (a global gradient norm), with one
/// copy back to the host instead of one per buffer: every buffer's block partials go to one array,
/// which one block sums in a fixed order (deterministic; f64 throughout).
pub fn sum_squares_many(xs: &[&dyn GpuRange<f32>]) -> Result<f64> {
    let Some(first) = xs.first() else { return Ok(0.0) };
    let gpu = first.gpu().clone();
    let parts = gpu.alloc::<f64>(SUM_BLOCKS * xs.len())?;
    let out = gpu.alloc::<f64>(1)?;
    let cfg = LaunchConfig { grid_dim: (SUM_BLOCKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    for (i, x) in xs.iter().enumerate() {
        if !Arc::ptr_eq(x.gpu(), &gpu) {
            bail!(Invalid, "sum_squares_many: buffers on different GPUs");
        }
        let (px, n, pp, sq) = (x.ptr(), x.len() as i64, parts.ptr_at(i * SUM_BLOCKS), 1i32);
        launch!(gpu, k::reduce::sum_partials, cfg; px, n, sq, pp);
    }
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (pp, nb, po) = (parts.ptr(), (SUM_BLOCKS * xs.len()) as i32, out.ptr());
    launch!(gpu, k::reduce::sum_finish, one; pp, nb, po);
    Ok(out.download()?[0])
}

/// Twin of `sum_rows_cpu`: column sums of `x [rows, d]` into `out [d]`, `out = beta*out + sum`.
pub fn sum_rows(x: &impl GpuRange<f32>, rows: usize, d: usize, beta: f32, out: &mut impl GpuRange<f32>) -> Result<()> {
    need("x", x, rows * d)?;
    need("out", out, d)?;
    if d == 0 {
        return Ok(());
    }
    let gpu = x.gpu().clone();
    let chunk_rows = rows.div_ceil(64).max(16);
    let chunks = rows.div_ceil(chunk_rows).max(1);
    let parts = gpu.alloc::<f64>(chunks * d)?;
    let cfg = LaunchConfig { grid_dim: (d.div_ceil(128) as u32, chunks as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    let (px, r, d32, cr, pp, po, nc) = (x.ptr(), rows as i64, d as i32, chunk_rows as i64, parts.ptr(), out.ptr(), chunks as i32);
    launch!(gpu, k::reduce::sum_rows_partials, cfg; px, r, d32, cr, pp);
    launch!(gpu, k::reduce::sum_rows_finish, elems(d); pp, nc, d32, beta, po);
    Ok(())
}
