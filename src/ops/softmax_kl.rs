//! The fused distillation loss of Hinton et al. (2015), as codistillation uses it.
//!
//! For each row r of student logits `s [N, V]`, with K teachers' logits `t_k [N, V]`, a hard label
//! `y_r`, temperature T and weight alpha:
//!
//! ```text
//! p      = (1/K) sum_k softmax(t_k / T)          teachers averaged as probabilities
//! q_T    = softmax(s / T),  q = softmax(s)
//! loss_r = (1 - alpha) * CE(y_r, q) + alpha * T^2 * KL(p || q_T)
//! dloss_r / ds = (1 - alpha) * (q - onehot(y_r)) + alpha * T * (q_T - p)
//! ```
//!
//! The loss is the mean over rows and the gradient carries the 1/N. The T^2 keeps the soft term's
//! gradient magnitude independent of T (Hinton et al., section 2). Every softmax is taken after
//! subtracting the row maximum, and log p is a log-sum-exp over teachers, so rows of +-1e4 neither
//! overflow nor produce NaN. The call writes the loss and the gradient; no probability matrix
//! outlives it (the GPU kernel holds one row at a time, with online max and sum).

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// Loss parts, each already a mean over rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillLoss {
    /// `(1 - alpha) * hard + alpha * T^2 * soft`.
    pub total: f64,
    /// Cross-entropy to the hard labels (0 when there are none).
    pub hard: f64,
    /// KL(teachers || student at temperature T), without the T^2 (0 when there are no teachers).
    pub soft: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillParams {
    pub temperature: f32,
    /// Weight of the soft (teacher) term; `1 - alpha` weighs the hard-label term.
    pub alpha: f32,
}

fn log_softmax_row(x: &[f32], scale: f32, out: &mut [f64]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale)) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 * scale as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v as f64 * scale as f64 - lse;
    }
}

/// Scratch rows for one thread.
struct RowScratch {
    lq: Vec<f64>,
    lqt: Vec<f64>,
    lp: Vec<f64>,
    lt: Vec<f64>,
}

/// One row: writes `g` (without the 1/N) and returns (hard CE, soft KL).
fn row_loss(s: &[f32], teachers: &[&[f32]], y: Option<i32>, p: DistillParams, g: &mut [f32], w: &mut RowScratch) -> (f64, f64) {
    let (t, a) = (p.temperature as f64, p.alpha as f64);
    let inv_t = 1.0 / p.temperature;
    let (mut hard, mut soft) = (0.0, 0.0);
    g.iter_mut().for_each(|v| *v = 0.0);
    if let Some(y) = y.filter(|_| a != 1.0) {
        let y = y as usize;
        log_softmax_row(s, 1.0, &mut w.lq);
        hard = -w.lq[y];
        for (j, gv) in g.iter_mut().enumerate() {
            let onehot = if j == y { 1.0 } else { 0.0 };
            *gv += ((1.0 - a) * (w.lq[j].exp() - onehot)) as f32;
        }
    }
    if a != 0.0 && !teachers.is_empty() {
        log_softmax_row(s, inv_t, &mut w.lqt);
        // log p_j = logsumexp_k(log softmax(t_k / T)_j) - log K, elementwise over j
        w.lp.iter_mut().for_each(|v| *v = f64::NEG_INFINITY);
        for tk in teachers {
            log_softmax_row(tk, inv_t, &mut w.lt);
            for (l, &x) in w.lp.iter_mut().zip(&w.lt) {
                let m = l.max(x);
                *l = if m == f64::NEG_INFINITY { m } else { m + ((*l - m).exp() + (x - m).exp()).ln() };
            }
        }
        let log_k = (teachers.len() as f64).ln();
        for (j, gv) in g.iter_mut().enumerate() {
            let lpj = w.lp[j] - log_k;
            let pj = lpj.exp();
            if pj > 0.0 {
                soft += pj * (lpj - w.lqt[j]);
            }
            *gv += (a * t * (w.lqt[j].exp() - pj)) as f32;
        }
    }
    (hard, soft)
}

/// CPU twin. `teachers` holds K slices shaped like `student`; `targets` holds N labels in
/// `[0, V)`. Writes `grad [N, V]` (fully: a poisoned buffer is overwritten). Rows are split over
/// threads; per-row results are summed in row order, so the result does not depend on the split.
pub fn softmax_kl_cpu(
    student: &[f32],
    teachers: &[&[f32]],
    targets: Option<&[i32]>,
    rows: usize,
    cols: usize,
    p: DistillParams,
    grad: &mut [f32],
) -> DistillLoss {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let per = rows.div_ceil(threads).max(16);
    let mut parts: Vec<(f64, f64)> = vec![(0.0, 0.0); rows];
    let inv_n = 1.0 / rows.max(1) as f32;
    std::thread::scope(|sc| {
        for (ci, (gchunk, pchunk)) in grad[..rows * cols].chunks_mut(per * cols).zip(parts.chunks_mut(per)).enumerate() {
            sc.spawn(move || {
                let mut w = RowScratch { lq: vec![0.0; cols], lqt: vec![0.0; cols], lp: vec![0.0; cols], lt: vec![0.0; cols] };
                let mut trows: Vec<&[f32]> = Vec::with_capacity(teachers.len());
                for (i, (g, out)) in gchunk.chunks_mut(cols).zip(pchunk.iter_mut()).enumerate() {
                    let r = ci * per + i;
                    trows.clear();
                    trows.extend(teachers.iter().map(|t| &t[r * cols..(r + 1) * cols]));
                    *out = row_loss(&student[r * cols..(r + 1) * cols], &trows, targets.map(|y| y[r]), p, g, &mut w);
                    g.iter_mut().for_each(|v| *v *= inv_n);
                }
            });
        }
    });
    let n = rows.max(1) as f64;
    let hard = parts.iter().map(|x| x.0).sum::<f64>() / n;
    let soft = parts.iter().map(|x| x.1).sum::<f64>() / n;
    let (t, a) = (p.temperature as f64, p.alpha as f64);
    DistillLoss { total: (1.0 - a) * hard + a * t * t * soft, hard, soft }
}

/// Tensor entry: checks shapes, labels and parameters; returns the loss parts and the gradient.
pub fn softmax_kl(
    student: &Tensor,
    teachers: &[Tensor],
    targets: Option<&Tensor>,
    p: DistillParams,
) -> Result<(DistillLoss, Tensor)> {
    let (n, v) = student.expect_2d("student logits")?;
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        bail!(Invalid, "distillation temperature must be positive and finite, got {}", p.temperature);
    }
    if !(0.0..=1.0).contains(&p.alpha) {
        bail!(Invalid, "distillation alpha must be in [0, 1], got {}", p.alpha);
    }
    if p.alpha > 0.0 && teachers.is_empty() {
        bail!(Invalid, "alpha = {} weighs a teacher term but no teacher logits were given", p.alpha);
    }
    if p.alpha < 1.0 && targets.is_none() {
        bail!(Invalid, "alpha = {} weighs a hard-label term but no labels were given", p.alpha);
    }
    for (i, t) in teachers.iter().enumerate() {
        t.expect_shape(&format!("teacher {i} logits"), &[n, v])?;
    }
    if let Some(y) = targets {
        y.expect_shape("labels", &[n])?;
        if let Some((r, &bad)) = y.i32s()?.iter().enumerate().find(|(_, &c)| c < 0 || c as usize >= v) {
            bail!(Invalid, "label {bad} in row {r} is outside the {v} classes");
        }
    }
    let mut all: Vec<(&str, &Tensor)> = vec![("student", student)];
    all.extend(teachers.iter().map(|t| ("teacher", t)));
    match super::same_device(&all)? {
        Device::Cpu => {
            let tv: Vec<&[f32]> = teachers.iter().map(|t| t.f32s()).collect::<Result<_>>()?;
            let yv = targets.map(|y| y.i32s()).transpose()?;
            let mut grad = vec![0f32; n * v];
            let loss = softmax_kl_cpu(student.f32s()?, &tv, yv, n, v, p, &mut grad);
            Ok((loss, Tensor::from_f32(grad, &[n, v])?))
        }
        d => bail!(Device, "softmax-KL has no kernel for {d} in this build"),
    }
}
