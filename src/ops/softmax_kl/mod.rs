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

pub mod cuda;
pub mod mix;
mod tape;

use crate::backend::Backend;
use crate::ops::math::exp_row;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// Loss parts, each already a mean over rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillLoss {
    /// `(1 - alpha) * hard + alpha * w * soft`, `w = T^2` for the divergences of distributions
    /// and 1 for [`Divergence::Mse`].
    pub total: f64,
    /// Cross-entropy to the hard labels (0 when there are none).
    pub hard: f64,
    /// The divergence between the teachers and the student (see [`Divergence`]), without the
    /// `T^2` (0 when there are no teachers).
    pub soft: f64,
}

/// What the soft term measures, between the teachers' averaged distribution
/// `p = (1/K) sum_k softmax(t_k / T)` and the student's `q_T = softmax(s / T)` (natural logs):
///
/// ```text
/// ForwardKl      KL(p || q_T)    = sum_j p_j (log p_j - log q_T_j)        dsoft/ds = (q_T - p) / T
/// ReverseKl      KL(q_T || p)    = sum_j q_j (log q_j - log p_j)          dsoft/ds = q_T (d - KL) / T,  d = log q_T - log p
/// JensenShannon  JS(p, q_T)      = KL(p || m) / 2 + KL(q_T || m) / 2, m = (p + q_T) / 2
///                                                                          dsoft/ds = q_T (h - sum q_T h) / T,  h = log(q_T / m) / 2
/// Mse            (1/2V) sum_j (s_j - zbar_j)^2, zbar = (1/K) sum_k t_k    dsoft/ds = (s - zbar) / V
/// ```
///
/// The three divergences of distributions are weighed by `T^2` (so that their gradients keep
/// their size across temperatures, Hinton et al. section 2); the logit match (Ba and Caruana 2014)
/// uses neither the temperature nor `T^2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Divergence {
    /// Hinton et al.'s soft targets: mass-covering, the default.
    #[default]
    ForwardKl,
    /// Mode-seeking: the student is charged where it puts mass the teachers do not.
    ReverseKl,
    /// Symmetric and bounded by ln 2.
    JensenShannon,
    /// Mean squared error between the logits and the teachers' mean logits.
    Mse,
}

impl std::str::FromStr for Divergence {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Divergence::parse(s).ok_or_else(|| format!("distillation loss must be kl, reverse-kl, js or mse, got {s:?}"))
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Divergence {
    /// The names `--distill-loss` takes, in the order of the variants.
    pub const NAMES: [(Divergence, &'static str); 4] =
        [(Divergence::ForwardKl, "kl"), (Divergence::ReverseKl, "reverse-kl"), (Divergence::JensenShannon, "js"), (Divergence::Mse, "mse")];

    /// The option value of this divergence.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(d, _)| *d == self).map_or("kl", |(_, n)| n)
    }

    /// The divergence of an option value.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// The weight of the soft term beside `alpha`: `T^2`, or 1 for the logit match.
    pub fn weight(self, temperature: f64) -> f64 {
        match self {
            Divergence::Mse => 1.0,
            _ => temperature * temperature,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillParams {
    pub temperature: f32,
    /// Weight of the soft (teacher) term; `1 - alpha` weighs the hard-label term.
    pub alpha: f32,
    /// What the soft term measures.
    pub divergence: Divergence,
}

impl Default for DistillParams {
    /// Cross-entropy alone: T = 1, alpha = 0, forward KL.
    fn default() -> Self {
        DistillParams { temperature: 1.0, alpha: 0.0, divergence: Divergence::ForwardKl }
    }
}

/// Softmax of `x * scale` into `out`; returns the log of its normaliser, `max + ln sum`, in f64
/// (so `log softmax_j = x_j * scale - lse`). Sums are in f64.
fn softmax_row(x: &[f32], scale: f32, out: &mut [f32]) -> f64 {
    let (max, sum) = exp_row(x, scale, out);
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|o| *o *= inv);
    max as f64 + sum.ln()
}

/// Scratch rows for one thread.
struct RowScratch {
    q: Vec<f32>,
    qt: Vec<f32>,
    p: Vec<f32>,
    pk: Vec<f32>,
    /// log p in f64, for the divergences that need it exactly where p underflows f32.
    lp: Vec<f64>,
}

impl RowScratch {
    fn new(cols: usize) -> Self {
        RowScratch { q: vec![0.0; cols], qt: vec![0.0; cols], p: vec![0.0; cols], pk: vec![0.0; cols], lp: Vec::new() }
    }
}

/// The soft term of a row for the divergences other than forward KL: adds its gradient, weighed
/// (`alpha T` for the divergences of distributions, whose `T^2` meets the `1/T` of `q_T`'s
/// derivative; `alpha` for the logit match), to `g` and returns its value. `qt` holds
/// `softmax(s / T)` and `lse_t` its log normaliser. `log p` is a log-sum-exp over the teachers per
/// element, in f64, so a probability that underflows f32 still has its logarithm.
#[allow(clippy::needless_range_loop)] // j indexes s, qt, lp and g together
fn other_soft(s: &[f32], teachers: &[&[f32]], p: DistillParams, qt: &[f32], lse_t: f64, g: &mut [f32], w: &mut RowScratch) -> f64 {
    let (t, a) = (p.temperature as f64, p.alpha as f64);
    let (cols, nk) = (s.len(), teachers.len());
    if p.divergence == Divergence::Mse {
        let c = a / cols as f64;
        let mut soft = 0.0;
        for j in 0..cols {
            let zbar = teachers.iter().map(|tk| tk[j] as f64).sum::<f64>() / nk as f64;
            let d = s[j] as f64 - zbar;
            soft += d * d;
            g[j] += (c * d) as f32;
        }
        return soft / (2.0 * cols as f64);
    }
    // log p_j = log (1/K) sum_k exp(t_kj / T - lse_k)
    let inv_t = 1.0 / p.temperature;
    let lse_k: Vec<f64> = teachers.iter().map(|tk| softmax_row(tk, inv_t, &mut w.pk)).collect();
    w.lp.clear();
    if nk == 1 {
        // One teacher: its log-softmax, the value the log-sum-exp below gives for one term
        // (m + ln 1 - ln 1) without its two transcendental calls per element.
        w.lp.extend(teachers[0].iter().map(|&v| (v * inv_t) as f64 - lse_k[0]));
    } else {
        w.lp.extend((0..cols).map(|j| {
            let l = |k: usize| (teachers[k][j] * inv_t) as f64 - lse_k[k];
            let m = (0..nk).map(l).fold(f64::NEG_INFINITY, f64::max);
            m + (0..nk).map(|k| (l(k) - m).exp()).sum::<f64>().ln() - (nk as f64).ln()
        }));
    }
    let lq = |j: usize| (s[j] * inv_t) as f64 - lse_t;
    let c = a * t;
    match p.divergence {
        Divergence::ReverseKl => {
            let kl: f64 = (0..cols).map(|j| qt[j] as f64 * (lq(j) - w.lp[j])).sum();
            for j in 0..cols {
                g[j] += (c * qt[j] as f64 * (lq(j) - w.lp[j] - kl)) as f32;
            }
            kl
        }
        Divergence::JensenShannon => {
            let (mut js, mut sq) = (0.0, 0.0);
            for j in 0..cols {
                // log m_j = log((p_j + q_j) / 2), from the two logarithms.
                let (x, y) = (w.lp[j], lq(j));
                let m = x.max(y) + (-(x - y).abs()).exp().ln_1p() - std::f64::consts::LN_2;
                let q = qt[j] as f64;
                let hq = 0.5 * (lq(j) - m);
                js += w.lp[j].exp() * 0.5 * (w.lp[j] - m) + q * hq;
                sq += q * hq;
                // log p_j is used up: the slot keeps h_j for the gradient pass (one log per element).
                w.lp[j] = hq;
            }
            for j in 0..cols {
                g[j] += (c * qt[j] as f64 * (w.lp[j] - sq)) as f32;
            }
            js
        }
        Divergence::ForwardKl | Divergence::Mse => unreachable!("handled by the caller and above"),
    }
}

/// One row: writes `g` times `scale` (the caller's 1/N) and returns (hard CE, soft KL). One
/// exponential per element per distribution (student at 1, student at T when T != 1, each
/// teacher); a logarithm per element only when several teachers are averaged.
#[allow(clippy::too_many_arguments)]
fn row_loss(s: &[f32], teachers: &[&[f32]], y: Option<i32>, p: DistillParams, scale: f32, g: &mut [f32], w: &mut RowScratch) -> (f64, f64) {
    let (t, a) = (p.temperature as f64, p.alpha as f64);
    let inv_t = 1.0 / p.temperature;
    let (mut hard, mut soft) = (0.0, 0.0);
    let use_hard = y.is_some() && a != 1.0;
    let use_soft = a != 0.0 && !teachers.is_empty();
    if use_hard && !use_soft {
        // Cross-entropy alone (every baseline step): exponentials straight into g, one scaling
        // pass that normalises and weighs them; three passes over the row in all.
        let y = y.unwrap_or(0) as usize;
        let (max, sum) = exp_row(s, 1.0, g);
        let c = (1.0 - a) as f32 * scale;
        let k = c * (1.0 / sum) as f32;
        g.iter_mut().for_each(|v| *v *= k);
        g[y] -= c;
        return (max as f64 + sum.ln() - s[y] as f64, 0.0);
    }
    g.iter_mut().for_each(|v| *v = 0.0);
    let mut lse_hard = None;
    if use_hard {
        let y = y.unwrap_or(0) as usize;
        let lse = softmax_row(s, 1.0, &mut w.q);
        lse_hard = Some(lse);
        hard = lse - s[y] as f64;
        let c = (1.0 - a) as f32;
        for (gv, &q) in g.iter_mut().zip(&w.q) {
            *gv = c * q;
        }
        g[y] -= c;
    }
    if use_soft && p.divergence == Divergence::Mse {
        soft = other_soft(s, teachers, p, &[], 0.0, g, w);
    } else if use_soft {
        let lse_t = match lse_hard {
            Some(lse) if p.temperature == 1.0 => {
                w.qt.copy_from_slice(&w.q);
                lse
            }
            _ => softmax_row(s, inv_t, &mut w.qt),
        };
        if p.divergence != Divergence::ForwardKl {
            let qt = std::mem::take(&mut w.qt);
            soft = other_soft(s, teachers, p, &qt, lse_t, g, w);
            w.qt = qt;
            g.iter_mut().for_each(|v| *v *= scale);
            return (hard, soft);
        }
        // p = mean over teachers of softmax(t_k / T)
        let inv_k = 1.0 / teachers.len() as f32;
        let mut lse_teacher = 0.0;
        for (k, tk) in teachers.iter().enumerate() {
            if k == 0 {
                lse_teacher = softmax_row(tk, inv_t, &mut w.p);
            } else {
                softmax_row(tk, inv_t, &mut w.pk);
                w.p.iter_mut().zip(&w.pk).for_each(|(a, b)| *a += b);
            }
        }
        if teachers.len() > 1 {
            w.p.iter_mut().for_each(|v| *v *= inv_k);
        }
        // KL(p || q_T) = sum_j p_j (log p_j - log q_T_j), log q_T_j = s_j / T - lse_t
        for (j, (&pj, &sj)) in w.p.iter().zip(s).enumerate() {
            if pj > 0.0 {
                let log_p = if teachers.len() == 1 { (teachers[0][j] * inv_t) as f64 - lse_teacher } else { (pj as f64).ln() };
                soft += pj as f64 * (log_p - ((sj * inv_t) as f64 - lse_t));
            }
        }
        let c = (a * t) as f32;
        for ((gv, &q), &pj) in g.iter_mut().zip(&w.qt).zip(&w.p) {
            *gv += c * (q - pj);
        }
    }
    g.iter_mut().for_each(|v| *v *= scale);
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
    softmax_kl_cpu_on(crate::backend::machine_cores(), student, teachers, targets, rows, cols, p, grad)
}

/// [`softmax_kl_cpu`] on at most `threads` threads (the same result for any count).
#[allow(clippy::too_many_arguments)]
pub fn softmax_kl_cpu_on(
    threads: usize,
    student: &[f32],
    teachers: &[&[f32]],
    targets: Option<&[i32]>,
    rows: usize,
    cols: usize,
    p: DistillParams,
    grad: &mut [f32],
) -> DistillLoss {
    let inv_n = 1.0 / rows.max(1) as f32;
    // Each block of rows returns its rows' (hard, soft) parts; summed below in row order.
    let parts: Vec<(f64, f64)> = crate::par::blocks(&mut grad[..rows * cols], cols, threads, 16, |first, gchunk| {
        let mut w = RowScratch::new(cols);
        let mut trows: Vec<&[f32]> = Vec::with_capacity(teachers.len());
        let mut parts = Vec::with_capacity(gchunk.len() / cols.max(1));
        for (i, g) in gchunk.chunks_mut(cols.max(1)).enumerate() {
            let r = first + i;
            trows.clear();
            trows.extend(teachers.iter().map(|t| &t[r * cols..(r + 1) * cols]));
            parts.push(row_loss(&student[r * cols..(r + 1) * cols], &trows, targets.map(|y| y[r]), p, inv_n, g, &mut w));
        }
        parts
    })
    .into_iter()
    .flatten()
    .collect();
    let n = rows.max(1) as f64;
    let hard = parts.iter().map(|x| x.0).sum::<f64>() / n;
    let soft = parts.iter().map(|x| x.1).sum::<f64>() / n;
    let a = p.alpha as f64;
    DistillLoss { total: (1.0 - a) * hard + a * p.divergence.weight(p.temperature as f64) * soft, hard, soft }
}

/// Mean softmax cross-entropy of `logits [rows, cols]` against `targets` (labels in `[0, cols)`),
/// without the gradient: the CPU twin for evaluation, two passes over each row (its maximum, then
/// the sum of exponentials) and nothing written. Summed in row order whatever the thread count.
pub fn xent_value_cpu(threads: usize, logits: &[f32], targets: &[i32], rows: usize, cols: usize) -> f64 {
    let mut parts = vec![0f64; rows];
    crate::par::blocks(&mut parts, 1, threads, 16, |first, chunk| {
        let mut e = vec![0f32; cols];
        for (i, out) in chunk.iter_mut().enumerate() {
            let r = first + i;
            let row = &logits[r * cols..(r + 1) * cols];
            let (max, sum) = exp_row(row, 1.0, &mut e);
            *out = max as f64 + sum.ln() - row[targets[r] as usize] as f64;
        }
    });
    parts.iter().sum::<f64>() / rows.max(1) as f64
}

/// Tensor entry: checks shapes, labels and parameters; returns the loss parts and the gradient.
pub fn softmax_kl(be: &Backend, student: &Tensor, teachers: &[Tensor], targets: Option<&Tensor>, p: DistillParams) -> Result<(DistillLoss, Tensor)> {
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
        if let Some((r, &bad)) = y.host_i32s()?.iter().enumerate().find(|(_, &c)| c < 0 || c as usize >= v) {
            bail!(Invalid, "label {bad} in row {r} is outside the {v} classes");
        }
    }
    let mut all: Vec<(&str, &Tensor)> = vec![("student", student)];
    all.extend(teachers.iter().map(|t| ("teacher", t)));
    match super::same_device(&all)? {
        Device::Cpu => {
            let tv: Vec<&[f32]> = teachers.iter().map(|t| t.f32s()).collect::<Result<_>>()?;
            let yv = targets.map(|y| y.i32s()).transpose()?;
            // Written in full below, so a reused buffer's stale values never show.
            let mut grad = crate::tensor::recycle::take(n * v);
            let loss = softmax_kl_cpu_on(be.cpu_threads(), student.f32s()?, &tv, yv, n, v, p, &mut grad);
            Ok((loss, Tensor::from_f32(grad, &[n, v])?))
        }
        Device::Cuda(_) => {
            if let Some(y) = targets {
                if y.device() != student.device() {
                    bail!(Device, "student logits are on {} but labels are on {}", student.device(), y.device());
                }
            }
            let sb = student.cuda_f32()?;
            let tv: Vec<&crate::cuda::GpuBuf<f32>> = teachers.iter().map(|t| t.cuda_f32()).collect::<Result<_>>()?;
            let yb = targets.map(|y| y.cuda_i32()).transpose()?;
            let mut grad = sb.gpu().alloc::<f32>(n * v)?;
            let loss = cuda::softmax_kl(sb, &tv, yb, n, v, p, &mut grad)?;
            Ok((loss, Tensor::from_gpu_f32(grad, &[n, v])?))
        }
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[test]
    fn rows_of_no_classes_are_no_loss_and_no_panic() {
        for threads in [1, 2, 4] {
            let l = softmax_kl_cpu_on(threads, &[], &[&[]], None, 40, 0, DistillParams { alpha: 1.0, ..Default::default() }, &mut []);
            assert_eq!((l.total, l.hard, l.soft), (0.0, 0.0, 0.0));
        }
        assert_eq!(xent_value_cpu(2, &[], &[], 0, 0), 0.0);
    }
}
