//! Elementwise ops on f32: unary activations with their derivatives, binary ops on equal shapes,
//! and the row-broadcast bias add. One opcode enum per arity, so that the GPU has one kernel per
//! arity that switches on the opcode.

pub mod cuda;
mod tape;

use crate::ops::math::sigmoid;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    /// Natural log; the input must be positive.
    Log,
    Scale(f32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
}

impl Unary {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Relu => x.max(0.0),
            Unary::Sigmoid => sigmoid(x),
            Unary::Tanh => x.tanh(),
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Scale(s) => s * x,
        }
    }

    /// d f(x) / dx, given the input `x` and the output `y = f(x)` (whichever is cheaper).
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            Unary::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Unary::Sigmoid => y * (1.0 - y),
            // (1 - y)(1 + y), not 1 - y * y: near |y| = 1 the product y * y rounds before the
            // difference cancels (up to 1e-5 of the result lost; the GPU's fused multiply-add does
            // not), while 1 - y is exact there and each factor rounds once.
            Unary::Tanh => (1.0 - y) * (1.0 + y),
            Unary::Exp => y,
            Unary::Log => 1.0 / x,
            Unary::Scale(s) => s,
        }
    }
}

impl Binary {
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
        }
    }
}

pub fn unary_cpu(op: Unary, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = op.apply(v);
    }
}

/// `dx = dy * f'(x)`.
pub fn unary_backward_cpu(op: Unary, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for i in 0..dx.len() {
        dx[i] = dy[i] * op.derivative(x[i], y[i]);
    }
}

pub fn binary_cpu(op: Binary, a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = op.apply(x, y);
    }
}

/// `out[r, c] = x[r, c] + bias[c]`.
pub fn add_row_bias_cpu(x: &[f32], bias: &[f32], out: &mut [f32]) {
    let d = bias.len();
    for (orow, xrow) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        for ((o, &v), &b) in orow.iter_mut().zip(xrow).zip(bias) {
            *o = v + b;
        }
    }
}

pub fn unary(op: Unary, x: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => {
            let xv = x.f32s()?;
            let mut y = vec![0f32; xv.len()];
            unary_cpu(op, xv, &mut y);
            Tensor::from_f32(y, x.shape())
        }
        Device::Cuda(_) => {
            let xb = x.cuda_f32()?;
            let mut y = xb.gpu().alloc::<f32>(xb.len())?;
            cuda::unary(op, xb, &mut y)?;
            Tensor::from_gpu_f32(y, x.shape())
        }
    }
}

pub fn unary_backward(op: Unary, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    dy.expect_shape("unary output gradient", x.shape())?;
    match super::same_device(&[("x", x), ("y", y), ("dy", dy)])? {
        Device::Cpu => {
            let mut dx = vec![0f32; x.numel()];
            unary_backward_cpu(op, x.f32s()?, y.f32s()?, dy.f32s()?, &mut dx);
            Tensor::from_f32(dx, x.shape())
        }
        Device::Cuda(_) => {
            let xb = x.cuda_f32()?;
            let mut dx = xb.gpu().alloc::<f32>(xb.len())?;
            cuda::unary_backward(op, xb, y.cuda_f32()?, dy.cuda_f32()?, &mut dx)?;
            Tensor::from_gpu_f32(dx, x.shape())
        }
    }
}

pub fn binary(op: Binary, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!(Shape, "{op:?} needs equal shapes, got {:?} and {:?}", a.shape(), b.shape());
    }
    match super::same_device(&[("lhs", a), ("rhs", b)])? {
        Device::Cpu => {
            let mut out = vec![0f32; a.numel()];
            binary_cpu(op, a.f32s()?, b.f32s()?, &mut out);
            Tensor::from_f32(out, a.shape())
        }
        Device::Cuda(_) => {
            let ab = a.cuda_f32()?;
            let mut out = ab.gpu().alloc::<f32>(ab.len())?;
            cuda::binary(op, ab, b.cuda_f32()?, &mut out)?;
            Tensor::from_gpu_f32(out, a.shape())
        }
    }
}

/// `x [N, D] + bias [D]` broadcast over rows.
pub fn add_row_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, d) = x.expect_2d("bias input")?;
    bias.expect_shape("bias", &[d])?;
    match super::same_device(&[("x", x), ("bias", bias)])? {
        Device::Cpu => {
            let mut out = vec![0f32; n * d];
            add_row_bias_cpu(x.f32s()?, bias.f32s()?, &mut out);
            Tensor::from_f32(out, x.shape())
        }
        Device::Cuda(_) => {
            let xb = x.cuda_f32()?;
            let mut out = xb.gpu().alloc::<f32>(xb.len())?;
            if d > 0 {
                cuda::add_row_bias(xb, bias.cuda_f32()?, &mut out)?;
            }
            Tensor::from_gpu_f32(out, x.shape())
        }
    }
}

/// `a += alpha * b` in place (gradient accumulation).
pub fn axpy(alpha: f32, b: &Tensor, a: &mut Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!(Shape, "accumulate needs equal shapes, got {:?} and {:?}", a.shape(), b.shape());
    }
    match super::same_device(&[("a", a), ("b", b)])? {
        Device::Cpu => {
            for (x, &y) in a.f32s_mut()?.iter_mut().zip(b.f32s()?) {
                *x += alpha * y;
            }
            Ok(())
        }
        Device::Cuda(_) => cuda::axpy(alpha, b.cuda_f32()?, a.cuda_f32_mut()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_rejects_unequal_shapes() {
        let e = binary(Binary::Add, &Tensor::zeros(&[2, 3]), &Tensor::zeros(&[3, 2])).unwrap_err();
        assert!(e.to_string().contains("[2, 3]"));
    }

    #[test]
    fn bias_broadcasts_over_rows() {
        let x = Tensor::from_f32(vec![1., 2., 3., 4., 5., 6.], &[2, 3]).unwrap();
        let b = Tensor::from_f32(vec![10., 20., 30.], &[3]).unwrap();
        assert_eq!(add_row_bias(&x, &b).unwrap().f32s().unwrap(), &[11., 22., 33., 14., 25., 36.]);
    }
}
