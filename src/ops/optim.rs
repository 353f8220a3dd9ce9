//! Fused optimizer updates: one pass over a parameter, its gradient and its state. These are the
//! CPU twins of `kernels/optim.cu`. `scale` multiplies the gradient first (global-norm clipping
//! folds into it, so clipping costs no extra pass).

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
