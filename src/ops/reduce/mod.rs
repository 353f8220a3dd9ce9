//! Reductions. Sums accumulate in f64 on the CPU so that the reference is not the weak link when a
//! GPU tree reduction is compared with it.

pub mod cuda;
mod tape;

use crate::tensor::{Device, Tensor};
use crate::Result;

pub fn sum_cpu(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

pub fn sum_squares_cpu(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// Column sums of `x [N, D]` into `out [D]` (the bias gradient), `out = beta * out + colsum`.
pub fn sum_rows_cpu(x: &[f32], d: usize, beta: f32, out: &mut [f32]) {
    let mut acc = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = if beta == 0.0 { a as f32 } else { beta * *o + a as f32 };
    }
}

/// Sum of all elements, as a scalar tensor on the host (for a GPU input too: scalars are read there).
pub fn sum(x: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(Tensor::scalar(sum_cpu(x.f32s()?) as f32)),
        Device::Cuda(_) => Ok(Tensor::scalar(cuda::sum(x.cuda_f32()?)? as f32)),
    }
}

/// Column sums of a 2-D tensor: `[N, D] -> [D]`.
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let (_, d) = x.expect_2d("sum_rows input")?;
    match x.device() {
        Device::Cpu => {
            let mut out = vec![0f32; d];
            sum_rows_cpu(x.f32s()?, d, 0.0, &mut out);
            Tensor::from_f32(out, &[d])
        }
        Device::Cuda(_) => {
            let xb = x.cuda_f32()?;
            let mut out = xb.gpu().alloc::<f32>(d)?;
            cuda::sum_rows(xb, x.dim(0), d, 0.0, &mut out)?;
            Tensor::from_gpu_f32(out, &[d])
        }
    }
}

/// Sum of squares of all elements, in f64.
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    match x.device() {
        Device::Cpu => Ok(sum_squares_cpu(x.f32s()?)),
        Device::Cuda(_) => cuda::sum_squares(x.cuda_f32()?),
    }
}

/// The sum of squares of every element of every tensor, in f64; the GPU's tensors in one
/// reduction with one copy of the result to the host.
pub fn sum_squares_many(xs: &[&Tensor]) -> Result<f64> {
    let mut s = 0.0;
    let mut on_gpu: Vec<&dyn crate::cuda::GpuRange<f32>> = Vec::new();
    for x in xs {
        match x.device() {
            Device::Cpu => s += sum_squares_cpu(x.f32s()?),
            Device::Cuda(_) => on_gpu.push(x.cuda_f32()?),
        }
    }
    if !on_gpu.is_empty() {
        s += cuda::sum_squares_many(&on_gpu)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_rows_gives_column_sums() {
        let x = Tensor::from_f32(vec![1., 2., 3., 4., 5., 6.], &[2, 3]).unwrap();
        assert_eq!(sum_rows(&x).unwrap().f32s().unwrap(), &[5., 7., 9.]);
        assert_eq!(sum(&x).unwrap().item().unwrap(), 21.0);
        assert_eq!(sum_squares(&x).unwrap(), 91.0);
    }
}
