//! Teachers weighted (`--teacher-weights`, `--teacher-confidence`): several teachers' outputs
//! folded into one whose distribution is their weighted mixture, so that every distillation loss
//! (each takes one averaged teacher distribution) weighs them without a kernel of its own.
//!
//! ```text
//! w_rk  = c_k * conf_rk / sum_k c_k * conf_rk      c_k the given weights (normalised), conf_rk = 1 without confidence
//! softmax:  z'_rj = T log sum_k w_rk softmax(z_rk / T)_j   so softmax(z'_r / T) = sum_k w_rk softmax(z_rk / T)
//! binary:   z'_r  = logit(sum_k w_rk sigmoid(z_rk))        (a click model's logit)
//! logits:   z'_r  = sum_k w_rk z_rk                          (the logit match, Divergence::Mse)
//! conf_rk = the teacher's probability of its own top class on row r (at temperature 1): its
//!           confidence, as in confidence-aware multi-teacher distillation (Zhang et al. 2022).
//! ```
//!
//! The rows are independent. On the GPU a kernel computes them (`kernels/softmax_kl.cu`,
//! `teacher_mix` and `teacher_mix_binary`, fp32; up to 8 teachers, more are folded on the host).

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// What the teachers' outputs are and how they are folded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TeacherMix {
    /// Rows of class logits (a softmax), or one click logit per row (a sigmoid).
    pub binary: bool,
    /// Fold the logits themselves (the logit match) instead of the probabilities.
    pub logits: bool,
    /// The distillation temperature (softmax rows only).
    pub temperature: f32,
    /// Weigh each teacher on each row by its confidence as well.
    pub confidence: bool,
}

/// The given weights checked (one per teacher, at least 0, not all 0) and normalised to sum 1.
pub fn normalise_weights(weights: &[f32], teachers: usize) -> Result<Vec<f32>> {
    if weights.len() != teachers {
        bail!(Invalid, "teacher_weights: {} weight(s) for {teachers} teacher(s); give one per teacher, in the order of --teacher", weights.len());
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!(Invalid, "teacher_weights: {w} is not a weight (finite, at least 0)");
    }
    let sum: f32 = weights.iter().sum();
    if sum <= 0.0 {
        bail!(Invalid, "teacher_weights: every weight is 0");
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

fn lse(x: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = x.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// CPU twin: `teachers` are K slices of `rows * cols` (cols 1 for click logits); `weights`
/// normalised. Writes `out [rows * cols]`, on up to `threads` threads (0: every core), blocks of
/// rows each (rows are independent: the same bits on any number).
pub fn mix_teachers_cpu(threads: usize, teachers: &[&[f32]], weights: &[f32], rows: usize, cols: usize, how: TeacherMix, out: &mut [f32]) {
    let threads = if threads == 0 { crate::backend::machine_cores() } else { threads }.clamp(1, rows.max(1));
    if threads == 1 || rows * cols < 1 << 14 {
        return mix_rows(teachers, weights, 0, rows, cols, how, out);
    }
    crate::par::blocks(&mut out[..rows * cols], cols, threads, 1, |first, chunk| mix_rows(teachers, weights, first, chunk.len() / cols, cols, how, chunk));
}

/// Rows `first .. first + rows` of the mix into `out [rows * cols]`.
fn mix_rows(teachers: &[&[f32]], weights: &[f32], first: usize, rows: usize, cols: usize, how: TeacherMix, out: &mut [f32]) {
    let nk = teachers.len();
    let inv_t = 1.0 / how.temperature as f64;
    let mut w = vec![0f64; nk];
    let mut lse_t = vec![0f64; nk];
    // Per row: ln of each live teacher's weight, and its index (the terms of an element's mix).
    let (mut ln_w, mut live, mut terms) = (vec![0f64; nk], Vec::with_capacity(nk), vec![0f64; nk]);
    for r in 0..rows {
        let row = |k: usize| &teachers[k][(first + r) * cols..(first + r + 1) * cols];
        for k in 0..nk {
            let z = row(k);
            let mut lse_1 = None;
            let conf = if !how.confidence {
                1.0
            } else if how.binary {
                let p = 1.0 / (1.0 + (-(z[0] as f64)).exp());
                p.max(1.0 - p)
            } else {
                let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let l = lse(z.iter().map(|&v| v as f64));
                lse_1 = Some(l);
                (max - l).exp()
            };
            w[k] = weights[k] as f64 * conf;
            if !how.binary && !how.logits {
                // At T 1 the row's log normaliser is the one the confidence took (`v * 1.0` is `v`).
                lse_t[k] = match lse_1 {
                    Some(l) if inv_t == 1.0 => l,
                    _ => lse(z.iter().map(|&v| v as f64 * inv_t)),
                };
            }
        }
        let sum: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= sum);
        let o = &mut out[r * cols..(r + 1) * cols];
        if how.logits {
            for (j, oj) in o.iter_mut().enumerate() {
                *oj = (0..nk).map(|k| w[k] * row(k)[j] as f64).sum::<f64>() as f32;
            }
        } else if how.binary {
            let p: f64 = (0..nk).map(|k| w[k] / (1.0 + (-(row(k)[0] as f64)).exp())).sum();
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            o[0] = (p / (1.0 - p)).ln() as f32;
        } else {
            live.clear();
            live.extend((0..nk).filter(|&k| w[k] > 0.0));
            for &k in &live {
                ln_w[k] = w[k].ln();
            }
            for (j, oj) in o.iter_mut().enumerate() {
                for (t, &k) in terms.iter_mut().zip(&live) {
                    *t = ln_w[k] + row(k)[j] as f64 * inv_t - lse_t[k];
                }
                *oj = (how.temperature as f64 * lse(terms[..live.len()].iter().copied())) as f32;
            }
        }
    }
}

/// The teachers' outputs (each shaped alike, on one device) folded into one, by `weights` (one
/// per teacher, normalised here) and, with `how.confidence`, by each teacher's confidence per row.
pub fn mix_teachers(be: &crate::Backend, teachers: &[Tensor], weights: &[f32], how: TeacherMix) -> Result<Tensor> {
    let Some(first) = teachers.first() else { bail!(Invalid, "no teacher outputs to weigh") };
    let weights = normalise_weights(weights, teachers.len())?;
    if !(how.temperature > 0.0 && how.temperature.is_finite()) {
        bail!(Invalid, "distillation temperature must be positive and finite, got {}", how.temperature);
    }
    let shape = first.shape().to_vec();
    let (rows, cols) = match (how.binary, shape.as_slice()) {
        (true, [n]) | (true, [n, 1]) => (*n, 1),
        (false, [n, v]) => (*n, *v),
        (_, s) => bail!(Invalid, "teacher outputs of shape {s:?} are not {}", if how.binary { "one logit per row" } else { "rows of class logits" }),
    };
    for (i, t) in teachers.iter().enumerate() {
        t.expect_shape(&format!("teacher {i} outputs"), &shape)?;
    }
    let dev = first.device();
    if let (Device::Cuda(_), true) = (dev, teachers.len() <= super::cuda::MAX_TEACHERS) {
        let bufs: Vec<&crate::cuda::GpuBuf<f32>> = teachers.iter().map(|t| t.cuda_f32()).collect::<Result<_>>()?;
        let gpu = bufs[0].gpu().clone();
        let mut out = gpu.alloc::<f32>(rows * cols)?;
        super::cuda::teacher_mix(&bufs, &weights, rows, cols, how, &mut out)?;
        return Tensor::from_gpu_f32(out, &shape);
    }
    let host: Vec<Tensor> = teachers.iter().map(|t| t.to_device(Device::Cpu)).collect::<Result<_>>()?;
    let tv: Vec<&[f32]> = host.iter().map(|t| t.f32s()).collect::<Result<_>>()?;
    let mut out = vec![0f32; rows * cols];
    mix_teachers_cpu(be.threads, &tv, &weights, rows, cols, how, &mut out);
    Tensor::from_f32(out, &shape)?.to_device(dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn softmax(z: &[f32], t: f64) -> Vec<f64> {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = z.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn the_folded_teacher_is_the_weighted_mixture_at_the_temperature() {
        let (rows, cols, t) = (5, 13, 2.5);
        let mut rng = Rng::new(9);
        let a: Vec<f32> = (0..rows * cols).map(|_| 4.0 * rng.normal() as f32).collect();
        let b: Vec<f32> = (0..rows * cols).map(|_| 4.0 * rng.normal() as f32).collect();
        let ta = Tensor::from_f32(a.clone(), &[rows, cols]).unwrap();
        let tb = Tensor::from_f32(b.clone(), &[rows, cols]).unwrap();
        let how = TeacherMix { binary: false, logits: false, temperature: t as f32, confidence: false };
        let mixed = mix_teachers(&crate::Backend::default(), &[ta.clone(), tb.clone()], &[3.0, 1.0], how).unwrap().to_vec_f32().unwrap();
        for r in 0..rows {
            let (pa, pb) = (softmax(&a[r * cols..(r + 1) * cols], t), softmax(&b[r * cols..(r + 1) * cols], t));
            let pm = softmax(&mixed[r * cols..(r + 1) * cols], t);
            for j in 0..cols {
                let want = 0.75 * pa[j] + 0.25 * pb[j];
                assert!((pm[j] - want).abs() < 1e-6 * (1.0 + want), "row {r} class {j}: {} vs {want}", pm[j]);
            }
        }
        // A weight of 0 drops a teacher: the other's distribution alone.
        let alone = mix_teachers(&crate::Backend::default(), &[ta.clone(), tb.clone()], &[1.0, 0.0], how).unwrap().to_vec_f32().unwrap();
        for r in 0..rows {
            let (pa, p) = (softmax(&a[r * cols..(r + 1) * cols], t), softmax(&alone[r * cols..(r + 1) * cols], t));
            assert!(pa.iter().zip(&p).all(|(x, y)| (x - y).abs() < 1e-6));
        }
        // The logit match folds the logits.
        let lm =
            mix_teachers(&crate::Backend::default(), &[ta.clone(), tb.clone()], &[1.0, 3.0], TeacherMix { logits: true, ..how }).unwrap().to_vec_f32().unwrap();
        assert!((lm[7] - (0.25 * a[7] + 0.75 * b[7])).abs() < 1e-5);
        // Bad weights are refused by name.
        assert!(mix_teachers(&crate::Backend::default(), &[ta.clone(), tb.clone()], &[1.0], how).unwrap_err().to_string().contains("one per teacher"));
        assert!(mix_teachers(&crate::Backend::default(), &[ta.clone(), tb.clone()], &[0.0, 0.0], how).unwrap_err().to_string().contains("every weight is 0"));
        assert!(mix_teachers(&crate::Backend::default(), &[ta, tb], &[-1.0, 2.0], how).unwrap_err().to_string().contains("-1"));
    }

    #[test]
    fn the_mix_is_the_same_bits_on_any_number_of_threads() {
        // 70 rows of 300 (enough elements to split) over uneven blocks of rows.
        let (rows, cols) = (70, 300);
        let ts: Vec<Vec<f32>> = (0..3).map(|k| Tensor::randn(&[rows, cols], 2.0, &mut Rng::new(20 + k)).to_vec_f32().unwrap()).collect();
        let tv: Vec<&[f32]> = ts.iter().map(|t| t.as_slice()).collect();
        let how = TeacherMix { binary: false, logits: false, temperature: 2.0, confidence: true };
        let run = |threads| {
            let mut out = vec![f32::NAN; rows * cols];
            mix_teachers_cpu(threads, &tv, &[0.5, 0.3, 0.2], rows, cols, how, &mut out);
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let one = run(1);
        assert!(one.iter().all(|&b| f32::from_bits(b).is_finite()));
        for threads in [2, 3, 8] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn confidence_leans_each_row_toward_the_surer_teacher() {
        // Row 0: teacher A sure (one large logit), B flat; row 1 the other way round.
        let a = vec![8.0, 0.0, 0.0, 0.1, 0.0, 0.0];
        let b = vec![0.1, 0.0, 0.0, 0.0, 8.0, 0.0];
        let (ta, tb) = (Tensor::from_f32(a, &[2, 3]).unwrap(), Tensor::from_f32(b, &[2, 3]).unwrap());
        let how = TeacherMix { binary: false, logits: false, temperature: 1.0, confidence: true };
        let m = mix_teachers(&crate::Backend::default(), &[ta, tb], &[1.0, 1.0], how).unwrap().to_vec_f32().unwrap();
        let (p0, p1) = (softmax(&m[..3], 1.0), softmax(&m[3..], 1.0));
        // A plain average would give about 0.5 + 1/6 to the sure teacher's class; confidence more.
        assert!(p0[0] > 0.75 && p1[1] > 0.75, "{p0:?} {p1:?}");
        // Click logits: the mean probability, leaning toward the surer teacher.
        let (ca, cb) = (Tensor::from_f32(vec![4.0], &[1]).unwrap(), Tensor::from_f32(vec![0.0], &[1]).unwrap());
        let plain = mix_teachers(&crate::Backend::default(), &[ca.clone(), cb.clone()], &[1.0, 1.0], TeacherMix { binary: true, confidence: false, ..how })
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let sure = mix_teachers(&crate::Backend::default(), &[ca, cb], &[1.0, 1.0], TeacherMix { binary: true, ..how }).unwrap().to_vec_f32().unwrap();
        let sig = |x: f32| 1.0 / (1.0 + (-x as f64).exp());
        assert!((sig(plain[0]) - (sig(4.0) + 0.5) / 2.0).abs() < 1e-6);
        assert!(sig(sure[0]) > sig(plain[0]) + 0.01);
    }
}
