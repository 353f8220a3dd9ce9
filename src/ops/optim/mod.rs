//! Fused optimizer updates: one pass over a parameter, its gradient and its state. These are the
//! CPU twins of `kernels/optim.cu`. `scale` multiplies the gradient first (global-norm clipping
//! folds into it, so clipping costs no extra pass). [`update`] is the tensor-level entry the
//! optimizers call: dense or row-sparse, on the parameter's device.

pub mod cuda;

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// An update rule with its hyper-parameters at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// [`sgd_cpu`]; state: the velocity.
    Sgd { lr: f32, momentum: f32, weight_decay: f32 },
    /// [`adagrad_cpu`]; state: the accumulator.
    Adagrad { lr: f32, eps: f32 },
    /// [`adam_cpu`] at step `step` (1 for the first); state: the first and second moments.
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64 },
}

impl Rule {
    /// How many state tensors of the parameter's shape the rule keeps.
    pub fn slots(self) -> usize {
        match self {
            Rule::Adam { .. } => 2,
            _ => 1,
        }
    }
}

/// The touched rows of a row-sparse gradient gathered into `rows [ids.len(), width]`, with the row
/// ids as an i32 tensor on the gradient's device (the GPU kernels read the gradient compacted).
pub struct Compact {
    pub ids: Tensor,
    pub rows: Tensor,
}

/// The rows `rows` of a gradient `[R, D]`, gathered (see [`Compact`]).
pub fn compact_rows(grad: &Tensor, rows: &[u32]) -> Result<Compact> {
    grad.expect_2d("row-sparse gradient")?;
    let ids = Tensor::from_i32(rows.iter().map(|&r| r as i32).collect(), &[rows.len()])?.to_device(grad.device())?;
    let rows = super::embedding::gather(grad, &ids)?;
    Ok(Compact { ids, rows })
}

/// The gradient [`update`] applies.
pub enum Grad<'a> {
    /// Every element.
    Dense(&'a Tensor),
    /// Only these rows of a full-size `[R, D]` gradient (lazy for momentum and Adam: the other
    /// rows' state waits).
    Rows(&'a Tensor, &'a [u32]),
    /// Rows already gathered by [`compact_rows`] (the same update as `Rows`).
    Compact(&'a Compact),
}

/// One fused update of `w` and its `state` (`rule.slots()` tensors of `w`'s shape) from `grad`
/// times `scale`, on `w`'s device.
pub fn update(rule: Rule, w: &mut Tensor, grad: Grad<'_>, state: &mut [Tensor], scale: f32) -> Result<()> {
    if state.len() != rule.slots() {
        bail!(Invalid, "{rule:?} keeps {} state tensors, got {}", rule.slots(), state.len());
    }
    for s in state.iter() {
        if s.shape() != w.shape() || s.device() != w.device() {
            bail!(Shape, "optimizer state {:?} on {} for a parameter {:?} on {}", s.shape(), s.device(), w.shape(), w.device());
        }
    }
    let width = if w.rank() == 2 { w.dim(1) } else { w.numel() };
    if w.device() != Device::Cpu {
        let local;
        let (rows, g) = match grad {
            Grad::Dense(g) => (None, g.cuda_f32()?),
            Grad::Compact(c) => (Some(c.ids.cuda_i32()?), c.rows.cuda_f32()?),
            Grad::Rows(g, rows) => {
                local = compact_rows(g, rows)?;
                (Some(local.ids.cuda_i32()?), local.rows.cuda_f32()?)
            }
        };
        let wb = w.cuda_f32_mut()?;
        let (s0, rest) = state.split_at_mut(1);
        let s0 = s0[0].cuda_f32_mut()?;
        return match rule {
            Rule::Sgd { lr, momentum, weight_decay } => cuda::sgd(wb, g, s0, rows, width, lr, momentum, weight_decay, scale),
            Rule::Adagrad { lr, eps } => cuda::adagrad(wb, g, s0, rows, width, lr, eps, scale),
            Rule::Adam { lr, beta1, beta2, eps, weight_decay, step } => {
                cuda::adam(wb, g, s0, rest[0].cuda_f32_mut()?, rows, width, lr, beta1, beta2, eps, weight_decay, step, scale)
            }
        };
    }
    let numel = w.numel();
    let compacted;
    // (parameter range, gradient range) pairs.
    type Ranges = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;
    let (grad, ranges): (&[f32], Ranges) = match grad {
        Grad::Dense(g) => (g.f32s()?, vec![(0..numel, 0..numel)]),
        Grad::Rows(g, rows) => (g.f32s()?, rows.iter().map(|&r| r as usize * width..(r as usize + 1) * width).map(|r| (r.clone(), r)).collect()),
        Grad::Compact(c) => {
            compacted = c.ids.host_i32s()?;
            let r = compacted.iter().enumerate().map(|(i, &r)| (r as usize * width..(r as usize + 1) * width, i * width..(i + 1) * width));
            (c.rows.f32s()?, r.collect())
        }
    };
    let wv = w.f32s_mut()?;
    let (s0, rest) = state.split_at_mut(1);
    let s0 = s0[0].f32s_mut()?;
    let mut s1 = match rest.first_mut() {
        Some(t) => Some(t.f32s_mut()?),
        None => None,
    };
    for (r, gr) in ranges {
        if r.end > wv.len() || gr.end > grad.len() {
            bail!(Shape, "row-sparse gradient rows {r:?} past a parameter of {} elements", wv.len());
        }
        let (w, g, a) = (&mut wv[r.clone()], &grad[gr], &mut s0[r.clone()]);
        match rule {
            Rule::Sgd { lr, momentum, weight_decay } => sgd_cpu(w, g, a, lr, momentum, weight_decay, scale),
            Rule::Adagrad { lr, eps } => adagrad_cpu(w, g, a, lr, eps, scale),
            Rule::Adam { lr, beta1, beta2, eps, weight_decay, step } => {
                let v = &mut s1.as_mut().expect("adam keeps two moments")[r];
                adam_cpu(w, g, a, v, lr, beta1, beta2, eps, weight_decay, step, scale)
            }
        }
    }
    Ok(())
}

/// `t[rows[r], :] = 0` for the rows of a `[*, D]` tensor that a row-sparse gradient touched.
pub fn zero_rows(t: &mut Tensor, rows: &[u32]) -> Result<()> {
    let width = if t.rank() == 2 { t.dim(1) } else { t.numel() };
    if rows.iter().any(|&r| (r as usize + 1) * width > t.numel()) {
        bail!(Shape, "zero_rows: a row id past a tensor of shape {:?}", t.shape());
    }
    match t.device() {
        Device::Cpu => {
            let v = t.f32s_mut()?;
            for &r in rows {
                v[r as usize * width..(r as usize + 1) * width].fill(0.0);
            }
            Ok(())
        }
        Device::Cuda(_) => {
            let g = t.cuda_f32_mut()?;
            let ids: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let ids = g.gpu().upload(&ids)?;
            cuda::zero_rows(g, &ids, width)
        }
    }
}

/// SGD with momentum and L2 weight decay (PyTorch's convention):
/// `g = scale*grad + wd*w;  v = mu*v + g;  w -= lr*v`. With `mu = 0`, plain SGD.
pub fn sgd_cpu(w: &mut [f32], grad: &[f32], vel: &mut [f32], lr: f32, momentum: f32, weight_decay: f32, scale: f32) {
    for i in 0..w.len() {
        let g = scale * grad[i] + weight_decay * w[i];
        vel[i] = momentum * vel[i] + g;
        w[i] -= lr * vel[i];
    }
}

/// Adagrad (Duchi et al. 2011): `a += g^2;  w -= lr * g / (sqrt(a) + eps)`.
pub fn adagrad_cpu(w: &mut [f32], grad: &[f32], accum: &mut [f32], lr: f32, eps: f32, scale: f32) {
    for i in 0..w.len() {
        let g = scale * grad[i];
        accum[i] += g * g;
        w[i] -= lr * g / (accum[i].sqrt() + eps);
    }
}

/// Adam with bias correction and decoupled weight decay (AdamW, Loshchilov and Hutter); `step`
/// counts from 1.
#[allow(clippy::too_many_arguments)]
pub fn adam_cpu(
    w: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
    scale: f32,
) {
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    for i in 0..w.len() {
        let g = scale * grad[i];
        m[i] = beta1 * m[i] + (1.0 - beta1) * g;
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        w[i] -= lr * (mhat / (vhat.sqrt() + eps) + weight_decay * w[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adam_step_moves_by_lr_times_sign() {
        // After one step with bias correction, m_hat / sqrt(v_hat) = sign(g).
        let mut w = vec![1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adam_cpu(&mut w, &[0.3, -5.0], &mut m, &mut v, 0.1, 0.9, 0.999, 1e-12, 0.0, 1, 1.0);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let (mut w, mut v) = (vec![0.0], vec![0.0]);
        sgd_cpu(&mut w, &[1.0], &mut v, 0.1, 0.9, 0.0, 1.0);
        sgd_cpu(&mut w, &[1.0], &mut v, 0.1, 0.9, 0.0, 1.0);
        assert!((v[0] - 1.9).abs() < 1e-6 && (w[0] + 0.29).abs() < 1e-6, "{w:?} {v:?}");
    }

    /// Three steps of Adagrad and Adam with an eps large enough to matter, against their exact
    /// updates in f64: the denominators are sqrt(accumulated) + eps, not minus (a sign that a tiny
    /// eps hides).
    #[test]
    fn adagrad_and_adam_with_a_large_eps_match_their_exact_updates() {
        let grads = [[0.5f64, -2.0, 0.1], [0.3, 1.0, -0.4], [-0.2, 0.6, 0.9]];
        let (lr, eps) = (0.1f64, 0.5f64);
        let (mut w, mut a) = ([1.0f32, -1.0, 0.5], [0.0f32; 3]);
        let (mut wr, mut ar) = ([1.0f64, -1.0, 0.5], [0.0f64; 3]);
        for g in &grads {
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            adagrad_cpu(&mut w, &g32, &mut a, lr as f32, eps as f32, 1.0);
            for i in 0..3 {
                ar[i] += g[i] * g[i];
                wr[i] -= lr * g[i] / (ar[i].sqrt() + eps);
            }
        }
        assert!(w.iter().zip(&wr).all(|(x, y)| (*x as f64 - y).abs() < 1e-6), "adagrad {w:?} vs {wr:?}");
        let (b1, b2) = (0.9f64, 0.999f64);
        let (mut w, mut m, mut v) = ([1.0f32, -1.0, 0.5], [0.0f32; 3], [0.0f32; 3]);
        let (mut wr, mut mr, mut vr) = ([1.0f64, -1.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        for (t, g) in grads.iter().enumerate() {
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            adam_cpu(&mut w, &g32, &mut m, &mut v, lr as f32, b1 as f32, b2 as f32, eps as f32, 0.0, t as u64 + 1, 1.0);
            for i in 0..3 {
                mr[i] = b1 * mr[i] + (1.0 - b1) * g[i];
                vr[i] = b2 * vr[i] + (1.0 - b2) * g[i] * g[i];
                let (mh, vh) = (mr[i] / (1.0 - b1.powi(t as i32 + 1)), vr[i] / (1.0 - b2.powi(t as i32 + 1)));
                wr[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        assert!(w.iter().zip(&wr).all(|(x, y)| (*x as f64 - y).abs() < 1e-6), "adam {w:?} vs {wr:?}");
    }

    #[test]
    fn adagrad_first_step_is_lr_times_sign() {
        let (mut w, mut a) = (vec![0.0, 0.0], vec![0.0, 0.0]);
        adagrad_cpu(&mut w, &[4.0, -0.5], &mut a, 0.5, 0.0, 1.0);
        assert!((w[0] + 0.5).abs() < 1e-6 && (w[1] - 0.5).abs() < 1e-6, "{w:?}");
    }
}
