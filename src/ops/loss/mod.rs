//! Task losses. Softmax cross-entropy is the fused distillation loss with no teacher (alpha = 0),
//! so one kernel serves both. Binary cross-entropy takes soft targets in [0, 1]; because it is
//! linear in the target, `(1 - w) * BCE(x, y) + w * BCE(x, p_teacher)` is `BCE(x, (1 - w) y + w p)`,
//! which is how Criteo codistillation uses it.

pub mod cuda;
mod tape;

use super::softmax_kl::{softmax_kl, DistillParams, Divergence};
use crate::backend::Backend;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// Mean softmax cross-entropy of `logits [N, V]` against labels `[N]`, without its gradient (for
/// evaluation: on the CPU half the passes and no `[N, V]` buffer; the GPU kernel writes its
/// gradient anyway, which is dropped). The same checks and errors as [`softmax_xent`].
pub fn softmax_xent_value(be: &Backend, logits: &Tensor, targets: &Tensor) -> Result<f64> {
    if logits.device() != Device::Cpu {
        return Ok(softmax_xent(be, logits, targets)?.0);
    }
    let (n, v) = logits.expect_2d("student logits")?;
    targets.expect_shape("labels", &[n])?;
    if targets.device() != Device::Cpu {
        bail!(Device, "student logits are on {} but labels are on {}", logits.device(), targets.device());
    }
    let y = targets.i32s()?;
    if let Some((r, &bad)) = y.iter().enumerate().find(|(_, &c)| c < 0 || c as usize >= v) {
        bail!(Invalid, "label {bad} in row {r} is outside the {v} classes");
    }
    Ok(super::softmax_kl::xent_value_cpu(be.cpu_threads(), logits.f32s()?, y, n, v))
}

/// Mean softmax cross-entropy of `logits [N, V]` against labels `[N]`, and its gradient.
pub fn softmax_xent(be: &Backend, logits: &Tensor, targets: &Tensor) -> Result<(f64, Tensor)> {
    let (loss, grad) = softmax_kl(be, logits, &[], Some(targets), DistillParams { temperature: 1.0, alpha: 0.0, ..Default::default() })?;
    Ok((loss.total, grad))
}

/// CPU twin: mean of `max(x, 0) - x y + log(1 + exp(-|x|))`, gradient `(sigmoid(x) - y) / N`.
pub fn bce_with_logits_cpu(x: &[f32], y: &[f32], grad: &mut [f32]) -> f64 {
    let n = x.len().max(1) as f64;
    let mut sum = 0f64;
    for i in 0..x.len() {
        let (xi, yi) = (x[i] as f64, y[i] as f64);
        sum += xi.max(0.0) - xi * yi + (-xi.abs()).exp().ln_1p();
        grad[i] = ((crate::ops::math::sigmoid(x[i]) as f64 - yi) / n) as f32;
    }
    sum / n
}

/// Mean binary cross-entropy of logits against soft targets of the same shape, and its gradient.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<(f64, Tensor)> {
    targets.expect_shape("bce targets", logits.shape())?;
    match super::same_device(&[("logits", logits), ("targets", targets)])? {
        Device::Cpu => {
            let y = targets.f32s()?;
            if let Some((i, bad)) = y.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
                bail!(Invalid, "bce target {bad} at position {i} is not a probability in [0, 1]");
            }
            let mut grad = vec![0f32; y.len()];
            let loss = bce_with_logits_cpu(logits.f32s()?, y, &mut grad);
            Ok((loss, Tensor::from_f32(grad, logits.shape())?))
        }
        Device::Cuda(_) => {
            // Targets are checked on the host: a batch's worth of floats, copied once.
            let y = targets.to_vec_f32()?;
            if let Some((i, bad)) = y.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
                bail!(Invalid, "bce target {bad} at position {i} is not a probability in [0, 1]");
            }
            let xb = logits.cuda_f32()?;
            let mut grad = xb.gpu().alloc::<f32>(xb.len())?;
            let loss = cuda::bce_logits(xb, targets.cuda_f32()?, &mut grad)?;
            Ok((loss, Tensor::from_gpu_f32(grad, logits.shape())?))
        }
    }
}

/// The code of a divergence in the kernels (`binary_div`, `softmax_div`).
fn kind(div: Divergence) -> i32 {
    match div {
        Divergence::ForwardKl => 0,
        Divergence::ReverseKl => 1,
        Divergence::JensenShannon => 2,
        Divergence::Mse => 3,
    }
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// CPU twin of a click model's distillation term: the mean over elements of the divergence
/// between the teachers' prediction and the student's click probability `q = sigmoid(x)`, and its
/// gradient (times 1/N). For the divergences of distributions `t` is the teachers' mean
/// probability, clamped to `[1e-7, 1 - 1e-7]` so that its logarithms are finite:
///
/// ```text
/// ForwardKl      p ln(p/q) + (1-p) ln((1-p)/(1-q))             d/dx = q - p
/// ReverseKl      q ln(q/p) + (1-q) ln((1-q)/(1-p))             d/dx = q (1-q) (x - logit p)
/// JensenShannon  (KL(p || m) + KL(q || m)) / 2, m = (p+q)/2    d/dx = q (1-q) (ln(q/m) - ln((1-q)/(1-m))) / 2
/// Mse            (x - t)^2 / 2, t the teachers' mean logit      d/dx = x - t
/// ```
pub fn binary_divergence_cpu(x: &[f32], t: &[f32], div: Divergence, grad: &mut [f32]) -> f64 {
    let n = x.len().max(1) as f64;
    let mut sum = 0.0;
    for i in 0..x.len() {
        let xi = x[i] as f64;
        let (l, g) = if div == Divergence::Mse {
            let d = xi - t[i] as f64;
            (0.5 * d * d, d)
        } else {
            let p = (t[i] as f64).clamp(1e-7, 1.0 - 1e-7);
            let (q, lq, l1q) = (1.0 / (1.0 + (-xi).exp()), -softplus(-xi), -softplus(xi));
            let (lp, l1p) = (p.ln(), (-p).ln_1p());
            match div {
                Divergence::ForwardKl => (p * (lp - lq) + (1.0 - p) * (l1p - l1q), q - p),
                Divergence::ReverseKl => (q * (lq - lp) + (1.0 - q) * (l1q - l1p), q * (1.0 - q) * (xi - (lp - l1p))),
                _ => {
                    let m = 0.5 * (p + q);
                    let (lm, l1m) = (m.ln(), (-m).ln_1p());
                    let l = 0.5 * (p * (lp - lm) + (1.0 - p) * (l1p - l1m)) + 0.5 * (q * (lq - lm) + (1.0 - q) * (l1q - l1m));
                    (l, q * (1.0 - q) * 0.5 * ((lq - lm) - (l1q - l1m)))
                }
            }
        };
        sum += l;
        grad[i] = (g / n) as f32;
    }
    sum / n
}

/// A click model's distillation term (see [`binary_divergence_cpu`]) and its gradient; `teacher`
/// has the logits' shape (probabilities for the divergences of distributions, each in [0, 1];
/// logits for `Mse`).
pub fn binary_divergence(logits: &Tensor, teacher: &Tensor, div: Divergence) -> Result<(f64, Tensor)> {
    teacher.expect_shape("teacher predictions", logits.shape())?;
    let tv = teacher.to_vec_f32()?;
    if div != Divergence::Mse {
        if let Some((i, bad)) = tv.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
            bail!(Invalid, "teacher probability {bad} at position {i} is not in [0, 1]");
        }
    } else if let Some((i, bad)) = tv.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!(Invalid, "teacher logit {bad} at position {i} is not finite");
    }
    match super::same_device(&[("logits", logits), ("teacher", teacher)])? {
        Device::Cpu => {
            let mut grad = vec![0f32; tv.len()];
            let loss = binary_divergence_cpu(logits.f32s()?, &tv, div, &mut grad);
            Ok((loss, Tensor::from_f32(grad, logits.shape())?))
        }
        Device::Cuda(_) => {
            let xb = logits.cuda_f32()?;
            let mut grad = xb.gpu().alloc::<f32>(xb.len())?;
            let loss = cuda::binary_divergence(xb, teacher.cuda_f32()?, kind(div), &mut grad)?;
            Ok((loss, Tensor::from_gpu_f32(grad, logits.shape())?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_matches_direct_formula_and_survives_extremes() {
        let x = Tensor::from_f32(vec![0.3, -2.0, 80.0, -80.0], &[4]).unwrap();
        let y = Tensor::from_f32(vec![1.0, 0.25, 1.0, 0.0], &[4]).unwrap();
        let (loss, g) = bce_with_logits(&x, &y).unwrap();
        let direct = |x: f64, y: f64| {
            let p = 1.0 / (1.0 + (-x).exp());
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        };
        let expect = (direct(0.3, 1.0) + direct(-2.0, 0.25)) / 4.0; // the extremes contribute ~0
        assert!((loss - expect).abs() < 1e-7, "{loss} vs {expect}"); // inputs are f32-rounded
        assert!(g.f32s().unwrap().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bce_rejects_targets_outside_unit_interval() {
        let e = bce_with_logits(&Tensor::zeros(&[2]), &Tensor::from_f32(vec![0.5, 1.5], &[2]).unwrap());
        assert!(e.unwrap_err().to_string().contains("1.5"));
    }

    /// The value-only cross-entropy (evaluation) against the loss of the gradient path, at odd
    /// sizes, rows of +-1e4 and one row; the same label errors.
    #[test]
    fn xent_value_matches_the_gradient_path() {
        let mut rng = crate::Rng::new(9);
        for &(n, v) in &[(1, 1), (3, 7), (37, 1001), (130, 14)] {
            let mut x = rng.normal_vec(n * v, 3.0);
            x[0] = 1e4;
            if x.len() > 2 {
                x[2] = -1e4;
            }
            let y: Vec<i32> = (0..n).map(|_| rng.below(v) as i32).collect();
            let (x, y) = (Tensor::from_f32(x, &[n, v]).unwrap(), Tensor::from_i32(y, &[n]).unwrap());
            let (want, _) = softmax_xent(&crate::Backend::default(), &x, &y).unwrap();
            let got = softmax_xent_value(&crate::Backend::default(), &x, &y).unwrap();
            assert!(got.is_finite() && (got - want).abs() <= 1e-6 * want.abs().max(1.0), "{n}x{v}: {got} against {want}");
        }
        let e = softmax_xent_value(&crate::Backend::default(), &Tensor::zeros(&[2, 3]), &Tensor::from_i32(vec![0, 3], &[2]).unwrap());
        assert!(e.unwrap_err().to_string().contains("label 3 in row 1"));
    }

    #[test]
    fn xent_of_uniform_logits_is_log_v() {
        let (loss, _) = softmax_xent(&crate::Backend::default(), &Tensor::zeros(&[3, 10]), &Tensor::from_i32(vec![0, 5, 9], &[3]).unwrap()).unwrap();
        assert!((loss - 10f64.ln()).abs() < 1e-9);
    }
}
