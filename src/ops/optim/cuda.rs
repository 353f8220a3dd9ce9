//! The CUDA launcher of `kernels/optim.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{k, GpuBuf, GpuRange};
use crate::Result;

/// The rows a row-sparse gradient covers, or None for a dense one; returns (rows ptr, elements).
fn sparse_args(w: &impl GpuRange<f32>, grad: &impl GpuRange<f32>, rows: Option<&GpuBuf<i32>>, dim: usize) -> Result<(u64, i64)> {
    match rows {
        None => {
            need("grad", grad, w.len())?;
            Ok((0, w.len() as i64))
        }
        Some(r) => {
            need("grad", grad, r.len() * dim)?;
            Ok((r.ptr(), (r.len() * dim) as i64))
        }
    }
}

/// Twin of `sgd_cpu`; with `rows`, a lazy row-sparse update (grad holds rows.len() x dim values).
#[allow(clippy::too_many_arguments)]
pub fn sgd(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    vel: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    scale: f32,
) -> Result<()> {
    need("velocity", vel, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let (pw, pg, pv, d) = (w.ptr(), grad.ptr(), vel.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::sgd_update, elems(n as usize); pw, pg, pv, pr, n, d, lr, momentum, weight_decay, scale);
    Ok(())
}

/// Twin of `adagrad_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn adagrad(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    accum: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    eps: f32,
    scale: f32,
) -> Result<()> {
    need("accumulator", accum, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let (pw, pg, pa, d) = (w.ptr(), grad.ptr(), accum.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::adagrad_update, elems(n as usize); pw, pg, pa, pr, n, d, lr, eps, scale);
    Ok(())
}

/// Twin of `adam_cpu` (bias corrections computed on the host exactly as there).
#[allow(clippy::too_many_arguments)]
pub fn adam(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    m: &mut impl GpuRange<f32>,
    v: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
    scale: f32,
) -> Result<()> {
    need("m", m, w.len())?;
    need("v", v, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    let (pw, pg, pm, pv, d) = (w.ptr(), grad.ptr(), m.ptr(), v.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::adam_update, elems(n as usize); pw, pg, pm, pv, pr, n, d, lr, beta1, beta2, eps, weight_decay, bc1, bc2, scale);
    Ok(())
}

/// `t[rows[r], :] = 0`: clears the rows of a `[*, dim]` table that a row-sparse gradient touched.
pub fn zero_rows(t: &mut impl GpuRange<f32>, rows: &impl GpuRange<i32>, dim: usize) -> Result<()> {
    if rows.is_empty() || dim == 0 {
        return Ok(());
    }
    let (pt, pr, nr, d) = (t.ptr(), rows.ptr(), rows.len() as i64, dim as i32);
    launch!(t.gpu(), k::elementwise::zero_rows, elems(rows.len() * dim); pt, pr, nr, d);
    Ok(())
}
