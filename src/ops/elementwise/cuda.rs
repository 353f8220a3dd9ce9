//! The CUDA launcher of `kernels/elementwise.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use super::{Binary, Unary};
use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{k, GpuRange};
use crate::{bail, Result};

fn unary_code(op: Unary) -> (i32, f32) {
    match op {
        Unary::Relu => (0, 0.0),
        Unary::Sigmoid => (1, 0.0),
        Unary::Tanh => (2, 0.0),
        Unary::Exp => (3, 0.0),
        Unary::Log => (4, 0.0),
        Unary::Scale(s) => (5, s),
    }
}

pub fn unary(op: Unary, x: &impl GpuRange<f32>, y: &mut impl GpuRange<f32>) -> Result<()> {
    need("y", y, x.len())?;
    let ((code, s), px, py, n) = (unary_code(op), x.ptr(), y.ptr(), x.len() as i64);
    launch!(x.gpu(), k::elementwise::unary_fwd, elems(x.len()); code, s, px, py, n);
    Ok(())
}

pub fn unary_backward(op: Unary, x: &impl GpuRange<f32>, y: &impl GpuRange<f32>, dy: &impl GpuRange<f32>, dx: &mut impl GpuRange<f32>) -> Result<()> {
    let n = x.len();
    need("y", y, n)?;
    need("dy", dy, n)?;
    need("dx", dx, n)?;
    let ((code, s), px, py, pdy, pdx, n64) = (unary_code(op), x.ptr(), y.ptr(), dy.ptr(), dx.ptr(), n as i64);
    launch!(x.gpu(), k::elementwise::unary_bwd, elems(n); code, s, px, py, pdy, pdx, n64);
    Ok(())
}

pub fn binary(op: Binary, a: &impl GpuRange<f32>, b: &impl GpuRange<f32>, out: &mut impl GpuRange<f32>) -> Result<()> {
    let n = a.len();
    need("b", b, n)?;
    need("out", out, n)?;
    let code: i32 = match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
    };
    let (pa, pb, po, n64) = (a.ptr(), b.ptr(), out.ptr(), n as i64);
    launch!(a.gpu(), k::elementwise::binary_fwd, elems(n); code, pa, pb, po, n64);
    Ok(())
}

pub fn add_row_bias(x: &impl GpuRange<f32>, bias: &impl GpuRange<f32>, out: &mut impl GpuRange<f32>) -> Result<()> {
    let (n, d) = (x.len(), bias.len());
    if d == 0 || n % d != 0 {
        bail!(Shape, "{n} elements are not rows of a {d}-wide bias");
    }
    need("out", out, n)?;
    let (px, pb, po, n64, d32) = (x.ptr(), bias.ptr(), out.ptr(), n as i64, d as i32);
    launch!(x.gpu(), k::elementwise::add_row_bias, elems(n); px, pb, po, n64, d32);
    Ok(())
}

/// `a += alpha * b`.
pub fn axpy(alpha: f32, b: &impl GpuRange<f32>, a: &mut impl GpuRange<f32>) -> Result<()> {
    need("b", b, a.len())?;
    let (pb, pa, n) = (b.ptr(), a.ptr(), a.len() as i64);
    launch!(a.gpu(), k::elementwise::axpy, elems(a.len()); alpha, pb, pa, n);
    Ok(())
}
