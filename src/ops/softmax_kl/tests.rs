//! Device-generic tests of the fused softmax-KL loss (compiled into `tests/ops.rs`, run once per
//! device: `cargo test --test ops softmax_kl`), against a direct, unfused float64 composition:
//! softmax of each model, the teachers' probabilities averaged, cross-entropy and KL written out
//! term by term. The reference gradient is the central difference of that reference loss in f64
//! (step 1e-5, error ~1e-9), so it shares no code with the fused backward.
//! Bounds (fp32 outputs): loss within 1e-5 relative; each gradient entry within
//! 1e-5 * (max |grad| of the matrix) + 1e-5 * |entry|. The gradient output is poisoned before each
//! call. At the trainers' shapes (2,240 x 10,000 and three teachers would take the central
//! differences hours) the reference gradient is the closed form in f64 instead.

use crate::common::dev::{host, poison, rng, up};
use codistill::ops::softmax_kl::{softmax_kl, DistillParams, Divergence};
use codistill::{Backend, Device, Rng, Tensor};

fn softmax64(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Unfused reference: mean over rows of (1 - a) * CE(y, softmax(s)) + a * T^2 * KL(p || softmax(s / T)).
fn reference_loss(s: &[f64], teachers: &[Vec<f64>], y: &[i32], rows: usize, cols: usize, t: f64, a: f64) -> f64 {
    let mut total = 0.0;
    for r in 0..rows {
        let row = &s[r * cols..(r + 1) * cols];
        let mut l = 0.0;
        if a < 1.0 {
            let q = softmax64(row);
            l += (1.0 - a) * -q[y[r] as usize].ln();
        }
        if a > 0.0 {
            let scaled: Vec<f64> = row.iter().map(|v| v / t).collect();
            let mut p = vec![0.0; cols];
            for tk in teachers {
                let pk = softmax64(&tk[r * cols..(r + 1) * cols].iter().map(|v| v / t).collect::<Vec<_>>());
                for j in 0..cols {
                    p[j] += pk[j] / teachers.len() as f64;
                }
            }
            // log qt written out stably, as the composition a careful user would write
            let m = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + scaled.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let kl: f64 = (0..cols).filter(|&j| p[j] > 0.0).map(|j| p[j] * (p[j].ln() - (scaled[j] - lse))).sum();
            l += a * t * t * kl;
        }
        total += l;
    }
    total / rows as f64
}

fn logits(rows: usize, cols: usize, seed: u64, extreme: bool) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut v = rng.normal_vec(rows * cols, 3.0);
    if extreme {
        // Row 0: huge positive and huge negative logits; row 1: all equal and huge.
        for j in 0..cols {
            v[j] = if j % 3 == 0 {
                1e4
            } else if j % 3 == 1 {
                -1e4
            } else {
                50.0 * v[j]
            };
            v[cols + j] = 8e3;
        }
        v[2 * cols] = -3e4;
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn check(dev: Device, rows: usize, cols: usize, k: usize, t: f32, a: f32, extreme: bool, seed: u64) {
    let s = logits(rows, cols, seed, extreme);
    let teachers: Vec<Vec<f32>> = (0..k).map(|i| logits(rows, cols, seed + 100 + i as u64, extreme && i == 0)).collect();
    let y: Vec<i32> = (0..rows).map(|r| ((r * 7 + 3) % cols) as i32).collect();
    let st = up(&Tensor::from_f32(s.clone(), &[rows, cols]).unwrap(), dev);
    let tt: Vec<Tensor> = teachers.iter().map(|v| up(&Tensor::from_f32(v.clone(), &[rows, cols]).unwrap(), dev)).collect();
    let yt = up(&Tensor::from_i32(y.clone(), &[rows]).unwrap(), dev);
    poison(dev, rows * cols);
    let (loss, grad) = softmax_kl(&Backend::default(), &st, &tt, Some(&yt), DistillParams { temperature: t, alpha: a, ..Default::default() }).unwrap();
    let what = format!("T={t} alpha={a} teachers={k} extreme={extreme} on {dev}");
    let g = host(&what, &grad, dev);
    assert!(loss.total.is_finite(), "{what}: non-finite loss {loss:?}");

    let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
    let t64: Vec<Vec<f64>> = teachers.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
    let reference = reference_loss(&s64, &t64, &y, rows, cols, t as f64, a as f64);
    assert!((loss.total - reference).abs() <= 1e-5 * reference.abs().max(1e-3), "{what}: loss {} vs reference {reference}", loss.total);

    let h = 1e-5;
    let numeric: Vec<f64> = (0..rows * cols)
        .map(|i| {
            let mut p = s64.clone();
            p[i] += h;
            let up = reference_loss(&p, &t64, &y, rows, cols, t as f64, a as f64);
            p[i] -= 2.0 * h;
            let down = reference_loss(&p, &t64, &y, rows, cols, t as f64, a as f64);
            (up - down) / (2.0 * h)
        })
        .collect();
    let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (&gv, &nv)) in g.iter().zip(&numeric).enumerate() {
        let tol = 1e-5 * scale + 1e-5 * nv.abs();
        assert!((gv as f64 - nv).abs() <= tol, "{what}: grad[{}][{}] fused {gv:e} vs reference {nv:e}", i / cols, i % cols);
    }
}

pub fn fused_matches_unfused_over_temperature_alpha_and_teacher_count(dev: Device) {
    let mut seed = 1;
    for t in [1.0, 2.0, 4.0] {
        for a in [0.0, 0.5, 1.0] {
            for k in [1, 3] {
                check(dev, 6, 37, k, t, a, false, seed);
                seed += 1;
            }
        }
    }
}

pub fn extreme_logits_neither_overflow_nor_nan(dev: Device) {
    let mut seed = 50;
    for t in [1.0, 2.0, 4.0] {
        for a in [0.0, 0.5, 1.0] {
            for k in [1, 3] {
                check(dev, 4, 13, k, t, a, true, seed);
                seed += 1;
            }
        }
    }
}

pub fn identical_student_and_teacher_give_zero_soft_loss_and_gradient(dev: Device) {
    let s = up(&Tensor::from_f32(logits(3, 11, 9, false), &[3, 11]).unwrap(), dev);
    let (loss, grad) =
        softmax_kl(&Backend::default(), &s, std::slice::from_ref(&s), None, DistillParams { temperature: 2.0, alpha: 1.0, ..Default::default() }).unwrap();
    assert!(loss.total.abs() < 1e-6, "{loss:?} on {dev}");
    assert!(host("grad", &grad, dev).iter().all(|v| v.abs() < 1e-7), "nonzero gradient on {dev}");
}

pub fn bad_arguments_are_errors_that_name_the_problem(dev: Device) {
    let s = up(&Tensor::zeros(&[2, 5]), dev);
    let y = up(&Tensor::from_i32(vec![0, 5], &[2]).unwrap(), dev);
    let p = DistillParams { temperature: 1.0, alpha: 0.0, ..Default::default() };
    assert!(softmax_kl(&Backend::default(), &s, &[], Some(&y), p).unwrap_err().to_string().contains("label 5"));
    let e =
        softmax_kl(&Backend::default(), &s, &[up(&Tensor::zeros(&[2, 4]), dev)], None, DistillParams { temperature: 1.0, alpha: 1.0, ..Default::default() })
            .unwrap_err();
    assert!(e.to_string().contains("[2, 4]"), "{e}");
    assert!(softmax_kl(&Backend::default(), &s, &[], None, DistillParams { temperature: 0.0, alpha: 0.0, ..Default::default() }).is_err());
    assert!(softmax_kl(&Backend::default(), &s, &[], None, DistillParams { temperature: 1.0, alpha: 0.5, ..Default::default() })
        .unwrap_err()
        .to_string()
        .contains("teacher"));
}

/// The closed-form f64 gradient of the reference loss: `((1 - a) (q - onehot) + a T (q_T - p)) / N`.
fn reference_grad(s: &[f64], teachers: &[Vec<f64>], y: &[i32], rows: usize, cols: usize, t: f64, a: f64) -> Vec<f64> {
    let mut g = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = &s[r * cols..(r + 1) * cols];
        let q = softmax64(row);
        let qt = softmax64(&row.iter().map(|v| v / t).collect::<Vec<_>>());
        let mut p = vec![0.0; cols];
        for tk in teachers {
            let pk = softmax64(&tk[r * cols..(r + 1) * cols].iter().map(|v| v / t).collect::<Vec<_>>());
            for j in 0..cols {
                p[j] += pk[j] / teachers.len() as f64;
            }
        }
        for j in 0..cols {
            let onehot = if j == y[r] as usize { 1.0 } else { 0.0 };
            g[r * cols + j] = ((1.0 - a) * (q[j] - onehot) + a * t * (qt[j] - p[j])) / rows as f64;
        }
    }
    g
}

/// The trainers' shapes: a language model's 2,240 rows over 10,000 words with three teachers, and
/// odd ones with 1 to 8 teachers (each teacher-count variant of the kernel), against the closed-form f64 loss and gradient.
pub fn trainer_shapes_match_the_closed_form(dev: Device) {
    let mut r = rng("softmax_kl trainer shapes", dev);
    for &(rows, cols, k) in &[(2240, 10_000, 3), (37, 1001, 2), (1, 2, 1), (19, 513, 4), (33, 257, 5), (64, 1000, 8)] {
        let s = r.normal_vec(rows * cols, 3.0);
        let ts: Vec<Vec<f32>> = (0..k).map(|_| r.normal_vec(rows * cols, 3.0)).collect();
        let y: Vec<i32> = (0..rows).map(|_| r.below(cols) as i32).collect();
        let (t, a) = (2.0, 0.6);
        let st = up(&Tensor::from_f32(s.clone(), &[rows, cols]).unwrap(), dev);
        let tt: Vec<Tensor> = ts.iter().map(|v| up(&Tensor::from_f32(v.clone(), &[rows, cols]).unwrap(), dev)).collect();
        let yt = up(&Tensor::from_i32(y.clone(), &[rows]).unwrap(), dev);
        poison(dev, rows * cols);
        let (loss, grad) =
            softmax_kl(&Backend::default(), &st, &tt, Some(&yt), DistillParams { temperature: t as f32, alpha: a as f32, ..Default::default() }).unwrap();
        let what = format!("{rows}x{cols} teachers={k} on {dev}");
        let g = host(&what, &grad, dev);
        let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let t64: Vec<Vec<f64>> = ts.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
        let want = reference_loss(&s64, &t64, &y, rows, cols, t, a);
        assert!((loss.total - want).abs() <= 1e-5 * want.abs().max(1e-3), "{what}: loss {} vs reference {want}", loss.total);
        let wg = reference_grad(&s64, &t64, &y, rows, cols, t, a);
        let e = crate::common::dev::rel_err(&g, &wg, 1e-30);
        assert!(e <= 1e-5, "{what}: gradient relative error {e:.2e}");
    }
}

/// log softmax(x) in f64.
fn log_softmax64(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - lse).collect()
}

/// The soft term of one row by its definition, in f64 and in the log domain (so that a teacher
/// probability that underflows still has its logarithm): its value, and the closed-form gradient
/// with respect to the student's logits.
fn soft_row64(s: &[f64], teachers: &[&[f64]], t: f64, div: Divergence) -> (f64, Vec<f64>) {
    let v = s.len();
    let nk = teachers.len() as f64;
    if div == Divergence::Mse {
        let d: Vec<f64> = (0..v).map(|j| s[j] - teachers.iter().map(|tk| tk[j]).sum::<f64>() / nk).collect();
        return (d.iter().map(|x| x * x).sum::<f64>() / (2.0 * v as f64), d.iter().map(|x| x / v as f64).collect());
    }
    let lq = log_softmax64(&s.iter().map(|x| x / t).collect::<Vec<_>>());
    let lps: Vec<Vec<f64>> = teachers.iter().map(|tk| log_softmax64(&tk.iter().map(|x| x / t).collect::<Vec<_>>())).collect();
    let lp: Vec<f64> = (0..v)
        .map(|j| {
            let m = lps.iter().map(|l| l[j]).fold(f64::NEG_INFINITY, f64::max);
            m + lps.iter().map(|l| (l[j] - m).exp()).sum::<f64>().ln() - nk.ln()
        })
        .collect();
    let q: Vec<f64> = lq.iter().map(|x| x.exp()).collect();
    match div {
        Divergence::ForwardKl => {
            let val = (0..v).map(|j| lp[j].exp() * (lp[j] - lq[j])).sum();
            (val, (0..v).map(|j| (q[j] - lp[j].exp()) / t).collect())
        }
        Divergence::ReverseKl => {
            let kl: f64 = (0..v).map(|j| q[j] * (lq[j] - lp[j])).sum();
            (kl, (0..v).map(|j| q[j] * (lq[j] - lp[j] - kl) / t).collect())
        }
        Divergence::JensenShannon => {
            let lm: Vec<f64> = (0..v).map(|j| ((lp[j].exp() + q[j]) / 2.0).ln()).collect();
            let js: f64 = (0..v).map(|j| 0.5 * lp[j].exp() * (lp[j] - lm[j]) + 0.5 * q[j] * (lq[j] - lm[j])).sum();
            let sq: f64 = (0..v).map(|j| q[j] * 0.5 * (lq[j] - lm[j])).sum();
            (js, (0..v).map(|j| q[j] * (0.5 * (lq[j] - lm[j]) - sq) / t).collect())
        }
        Divergence::Mse => unreachable!(),
    }
}

/// Mean over rows of `(1 - a) CE + a w soft`, and its gradient, from `soft_row64`.
#[allow(clippy::too_many_arguments)]
fn reference_div(s: &[f64], teachers: &[Vec<f64>], y: &[i32], rows: usize, cols: usize, t: f64, a: f64, div: Divergence) -> (f64, Vec<f64>) {
    let (mut loss, mut grad) = (0.0, vec![0.0; rows * cols]);
    let w = div.weight(t);
    let n = rows as f64;
    for r in 0..rows {
        let row = &s[r * cols..(r + 1) * cols];
        let lq1 = log_softmax64(row);
        loss += (1.0 - a) * -lq1[y[r] as usize] / n;
        let trows: Vec<&[f64]> = teachers.iter().map(|tk| &tk[r * cols..(r + 1) * cols]).collect();
        let (soft, sg) = soft_row64(row, &trows, t, div);
        loss += a * w * soft / n;
        for j in 0..cols {
            let hard = lq1[j].exp() - if j == y[r] as usize { 1.0 } else { 0.0 };
            grad[r * cols + j] = ((1.0 - a) * hard + a * w * sg[j]) / n;
        }
    }
    (loss, grad)
}

/// Reverse KL, Jensen-Shannon and the logit match against their definitions: the loss in f64,
/// the closed-form gradient checked by central differences of that loss first (so the formulas
/// the large shapes use are themselves checked), then the op's gradient against it; several
/// temperatures, weights and teacher counts, rows of +-1e4 logits, and a trainer-sized row.
pub fn every_divergence_matches_its_definition(dev: Device) {
    let mut r = rng("softmax_kl divergences", dev);
    for div in [Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse, Divergence::ForwardKl] {
        for &(rows, cols, k, t, a, extreme) in &[
            (3, 11, 1, 1.0, 1.0, false),
            (4, 17, 3, 2.0, 0.5, false),
            (3, 13, 2, 4.0, 1.0, true),
            (37, 1001, 2, 2.0, 0.7, false),
            (64, 10_000, 3, 1.0, 0.5, false),
        ] {
            let what = format!("{div:?} {rows}x{cols} teachers={k} T={t} alpha={a} extreme={extreme} on {dev}");
            let s = if extreme { logits(rows, cols, r.next_u64(), true) } else { r.normal_vec(rows * cols, 3.0) };
            let ts: Vec<Vec<f32>> =
                (0..k).map(|i| if extreme && i == 0 { logits(rows, cols, r.next_u64(), true) } else { r.normal_vec(rows * cols, 3.0) }).collect();
            let y: Vec<i32> = (0..rows).map(|_| r.below(cols) as i32).collect();
            let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
            let t64: Vec<Vec<f64>> = ts.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
            let (want, wg) = reference_div(&s64, &t64, &y, rows, cols, t, a, div);
            if rows * cols < 100 && !extreme {
                let h = 1e-5;
                for i in 0..rows * cols {
                    let mut p = s64.clone();
                    p[i] += h;
                    let up = reference_div(&p, &t64, &y, rows, cols, t, a, div).0;
                    p[i] -= 2.0 * h;
                    let down = reference_div(&p, &t64, &y, rows, cols, t, a, div).0;
                    let num = (up - down) / (2.0 * h);
                    assert!((num - wg[i]).abs() <= 1e-6 * (1.0 + num.abs()), "{what}: the closed form {} against differences {num} at {i}", wg[i]);
                }
            }
            let st = up(&Tensor::from_f32(s, &[rows, cols]).unwrap(), dev);
            let tt: Vec<Tensor> = ts.into_iter().map(|v| up(&Tensor::from_f32(v, &[rows, cols]).unwrap(), dev)).collect();
            let yt = up(&Tensor::from_i32(y, &[rows]).unwrap(), dev);
            poison(dev, rows * cols);
            let p = DistillParams { temperature: t as f32, alpha: a as f32, divergence: div };
            let (loss, grad) = softmax_kl(&Backend::default(), &st, &tt, Some(&yt), p).unwrap();
            assert!((loss.total - want).abs() <= 1e-5 * want.abs().max(1e-3), "{what}: loss {} vs {want}", loss.total);
            let g = host(&what, &grad, dev);
            let e = crate::common::dev::rel_err(&g, &wg, 1e-30);
            assert!(e <= 1e-5, "{what}: gradient relative error {e:.2e}");
        }
    }
}

/// Teachers weighted (`ops::softmax_kl::mix`): the folded row against the mixture written out in
/// f64 (softmax rows: `softmax(out / T)` is the weighted mean of the teachers' `softmax(z / T)`,
/// compared as `out` itself, `T ln` of that mean; the logit match; click logits), with and without
/// confidence weights (each teacher's top-class probability at T = 1), a zero weight, one to three
/// teachers, odd shapes up to Brown's vocabulary, and rows of +-30 logits. Bound: fp32's, 1e-5
/// relative to the output's scale (its root mean square, at least 1). The output is poisoned first.
pub fn teacher_mix_matches_f64(dev: Device) {
    use codistill::ops::softmax_kl::mix::{mix_teachers, TeacherMix};
    let mut r = rng("teacher mix", dev);
    let lse = |x: &[f64]| {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    };
    for &(rows, cols, scale) in &[(1usize, 1usize, 1.0f32), (7, 5, 3.0), (3, 1000, 30.0), (5, 14115, 3.0)] {
        for weights in [vec![1.0f32], vec![0.8, 0.2], vec![0.5, 0.0, 1.5]] {
            let nk = weights.len();
            let ts: Vec<Tensor> = (0..nk).map(|_| Tensor::randn(&[rows, cols], scale, &mut r)).collect();
            let tv: Vec<Vec<f64>> = ts.iter().map(|t| t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()).collect();
            let sum: f64 = weights.iter().map(|&w| w as f64).sum();
            for (confidence, logits, temperature) in [(false, false, 1.0f32), (true, false, 2.0), (false, true, 1.0), (true, true, 1.0)] {
                let how = TeacherMix { binary: false, logits, temperature, confidence };
                let t = temperature as f64;
                let mut want = vec![0f64; rows * cols];
                for row in 0..rows {
                    let z: Vec<&[f64]> = tv.iter().map(|v| &v[row * cols..(row + 1) * cols]).collect();
                    let mut w: Vec<f64> = weights
                        .iter()
                        .zip(&z)
                        .map(|(&c, zk)| c as f64 / sum * if confidence { (zk.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - lse(zk)).exp() } else { 1.0 })
                        .collect();
                    let ws: f64 = w.iter().sum();
                    w.iter_mut().for_each(|v| *v /= ws);
                    let lz: Vec<f64> = z.iter().map(|zk| lse(&zk.iter().map(|v| v / t).collect::<Vec<_>>())).collect();
                    for j in 0..cols {
                        want[row * cols + j] = if logits {
                            (0..nk).map(|k| w[k] * z[k][j]).sum()
                        } else {
                            t * (0..nk).map(|k| w[k] * (z[k][j] / t - lz[k]).exp()).sum::<f64>().ln()
                        };
                    }
                }
                poison(dev, rows * cols);
                let got = host(
                    "teacher mix",
                    &mix_teachers(&codistill::Backend::default(), &ts.iter().map(|t| up(t, dev)).collect::<Vec<_>>(), &weights, how).unwrap(),
                    dev,
                );
                let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt() / (want.len() as f64).sqrt();
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 1e-5 * (norm.max(1.0) + w.abs()),
                        "{rows}x{cols} weights {weights:?} {how:?} element {i}: {g} against {w} on {dev}"
                    );
                }
            }
            // Click logits: one per row, the mixture of sigmoids.
            let tb: Vec<Tensor> = (0..nk).map(|_| Tensor::randn(&[rows], 3.0, &mut r)).collect();
            let bv: Vec<Vec<f64>> = tb.iter().map(|t| t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()).collect();
            for confidence in [false, true] {
                let how = TeacherMix { binary: true, logits: false, temperature: 1.0, confidence };
                let want: Vec<f64> = (0..rows)
                    .map(|row| {
                        let p: Vec<f64> = bv.iter().map(|v| 1.0 / (1.0 + (-v[row]).exp())).collect();
                        let w: Vec<f64> = weights.iter().zip(&p).map(|(&c, &pk)| c as f64 * if confidence { pk.max(1.0 - pk) } else { 1.0 }).collect();
                        let m = (0..nk).map(|k| w[k] * p[k]).sum::<f64>() / w.iter().sum::<f64>();
                        (m / (1.0 - m)).ln()
                    })
                    .collect();
                poison(dev, rows);
                let got = host(
                    "teacher mix (click)",
                    &mix_teachers(&codistill::Backend::default(), &tb.iter().map(|t| up(t, dev)).collect::<Vec<_>>(), &weights, how).unwrap(),
                    dev,
                );
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "click {rows} rows weights {weights:?} confidence {confidence} row {i}: {g} against {w} on {dev}"
                    );
                }
            }
        }
    }
}
