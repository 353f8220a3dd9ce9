//! Inverted dropout: keep an element with probability `1 - p` and scale it by `1 / (1 - p)`.
//! The mask comes from the counter-based `hash_uniform(seed, index)`, so it is a pure function of
//! the seed and the element's index: the GPU kernel draws the same mask without sharing state,
//! and backward recomputes it instead of storing it.

pub mod cuda;
mod tape;

use crate::rng::hash_uniform;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// The multiplier of element `i`: 0 or `1 / (1 - p)`.
pub fn mask_value(p: f32, seed: u64, i: usize) -> f32 {
    if hash_uniform(seed, i as u64) < p {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

/// CPU twin: `y[i] = x[i] * mask(i)`. Backward is the same call on `dy`.
pub fn dropout_cpu(x: &[f32], p: f32, seed: u64, y: &mut [f32]) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        *o = v * mask_value(p, seed, i);
    }
}

pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!(Invalid, "dropout probability must be in [0, 1), got {p}");
    }
    match x.device() {
        Device::Cpu => {
            let xv = x.f32s()?;
            let mut y = vec![0f32; xv.len()];
            dropout_cpu(xv, p, seed, &mut y);
            Tensor::from_f32(y, x.shape())
        }
        Device::Cuda(_) => {
            let xb = x.cuda_f32()?;
            let mut y = xb.gpu().alloc::<f32>(xb.len())?;
            cuda::dropout(xb, p, seed, &mut y)?;
            Tensor::from_gpu_f32(y, x.shape())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_expected_fraction_and_preserves_mean() {
        let x = Tensor::full(&[100_000], 1.0);
        let y = dropout(&x, 0.3, 42).unwrap();
        let yv = y.f32s().unwrap();
        let kept = yv.iter().filter(|&&v| v != 0.0).count() as f64 / yv.len() as f64;
        let mean = yv.iter().map(|&v| v as f64).sum::<f64>() / yv.len() as f64;
        assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert_eq!(dropout(&x, 0.3, 42).unwrap(), y, "same seed, same mask");
        assert_ne!(dropout(&x, 0.3, 43).unwrap(), y, "other seed, other mask");
    }

    #[test]
    fn probability_one_is_rejected() {
        assert!(dropout(&Tensor::zeros(&[3]), 1.0, 0).is_err());
    }
}
