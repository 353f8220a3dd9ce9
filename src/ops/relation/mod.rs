//! Losses between a student's and a teacher's hidden states of the same batch, the feature- and
//! relation-based knowledge of the distillation survey:
//!
//! ```text
//! Cosine       mean_r (1 - cos(a_r, b_r))                     DistilBERT's cosine term; a, b [N, D] (the student's mapped to D)
//! Sp           (1/N^2) || rn(A A^T) - rn(B B^T) ||_F^2         similarity-preserving KD (Tung and Mori 2019); rn: each row over its L2 norm
//! RkdDistance  mean_{i<j} huber(d^a_ij / mu_a - d^b_ij / mu_b)  relational KD's distance term (Park et al. 2019); d_ij = |x_i - x_j|, mu the mean d
//! RkdAngle     mean_{j,i,k} huber(<e^a_ji, e^a_jk> - <e^b_ji, e^b_jk>)  its angle term; e_ji = (x_i - x_j) / |x_i - x_j| (0 for i = j), over ANGLE_ROWS rows
//! Rkd          RkdDistance + 2 RkdAngle                         the paper's combination (its lambda_D 1, lambda_A 2): `rkd-full`
//!
//! (`rkd` names the distance term alone, as it did before the angle term was added.)
//! ```
//!
//! The angle term costs `O(N^3 D)` (all triplets, as the authors' code), so it is taken over
//! [`ANGLE_ROWS`] rows of the batch, evenly spaced (for a language model's time-major batch:
//! several lanes at several time steps); the gradient reaches those rows only.
//!
//! The relations compare `N x N` structures, so student and teacher widths may differ (no map).
//! Gradients are with respect to the student's states; the teacher's are a constant. Computed in
//! f64 on the host (a GPU tensor is copied there and its gradient back: correct, not fast; no
//! kernel is written for them yet), on the backend's CPU threads: each row of a Gram or distance
//! matrix and each row of a gradient on one thread, every sum over rows in one fixed order, so
//! that the results are the same bits on any number of threads. The relations cost `O(N^2 D)`: a
//! language-model batch of 32 x 35 rows is 1.25M pairs.

mod tape;

use crate::backend::Backend;
use crate::par;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// Which hidden-state loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HiddenLoss {
    /// The mean squared difference (FitNets; the `hint_loss` before these).
    #[default]
    Mse,
    Cosine,
    Sp,
    RkdDistance,
    RkdAngle,
    /// Distance plus twice the angle, as the RKD paper trains.
    Rkd,
}

crate::named_choices!(HiddenLoss, "a hidden-state loss", { Mse => "mse", Cosine => "cosine", Sp => "sp", RkdDistance => "rkd" | "rkd-distance", RkdAngle => "rkd-angle", Rkd => "rkd-full" });

impl HiddenLoss {
    /// Whether the loss compares rows across the batch (any widths) rather than matched units.
    pub fn relational(self) -> bool {
        matches!(self, HiddenLoss::Sp | HiddenLoss::RkdDistance | HiddenLoss::RkdAngle | HiddenLoss::Rkd)
    }
}

/// The rows of a batch the RKD angle term compares (all when the batch has fewer).
pub const ANGLE_ROWS: usize = 64;

const EPS: f64 = 1e-12;

fn cosine(a: &[f64], b: &[f64], n: usize, d: usize, grad: &mut [f64]) -> f64 {
    let mut total = 0.0;
    for r in 0..n {
        let (x, y) = (&a[r * d..(r + 1) * d], &b[r * d..(r + 1) * d]);
        let (xx, yy, xy) = x.iter().zip(y).fold((0.0, 0.0, 0.0), |(xx, yy, xy), (&p, &q)| (xx + p * p, yy + q * q, xy + p * q));
        let (nx, ny) = (xx.sqrt().max(EPS), yy.sqrt().max(EPS));
        let c = xy / (nx * ny);
        total += 1.0 - c;
        for ((g, &p), &q) in grad[r * d..(r + 1) * d].iter_mut().zip(x).zip(y) {
            *g = -(q / (nx * ny) - c * p / (nx * nx)) / n as f64;
        }
    }
    total / n as f64
}

/// Row-normalised Gram matrix `rn(X X^T)` and the row norms of `X X^T`.
fn gram_rows(x: &[f64], n: usize, d: usize, threads: usize) -> (Vec<f64>, Vec<f64>) {
    // The upper triangle a row at a time (each pair once), then mirrored.
    let mut g = vec![0.0; n * n];
    par::rows(&mut g, n, threads, |i, row| {
        for (j, v) in row.iter_mut().enumerate().skip(i) {
            *v = x[i * d..(i + 1) * d].iter().zip(&x[j * d..(j + 1) * d]).map(|(p, q)| p * q).sum::<f64>();
        }
    });
    for i in 0..n {
        for j in 0..i {
            g[i * n + j] = g[j * n + i];
        }
    }
    let norms: Vec<f64> = (0..n).map(|i| g[i * n..(i + 1) * n].iter().map(|v| v * v).sum::<f64>().sqrt().max(EPS)).collect();
    for i in 0..n {
        g[i * n..(i + 1) * n].iter_mut().for_each(|v| *v /= norms[i]);
    }
    (g, norms)
}

fn sp(a: &[f64], b: &[f64], n: usize, da: usize, db: usize, threads: usize, grad: &mut [f64]) -> f64 {
    let (ga, na) = gram_rows(a, n, da, threads);
    let (gb, _) = gram_rows(b, n, db, threads);
    let nn = (n * n) as f64;
    let diff: Vec<f64> = ga.iter().zip(&gb).map(|(x, y)| x - y).collect();
    let loss = diff.iter().map(|v| v * v).sum::<f64>() / nn;
    // d/d rn(G)_i = 2 D_i / N^2; through the row normalisation: (u - g (g . u)) / |G_i|.
    let mut dg = vec![0.0; n * n];
    par::rows(&mut dg, n, threads, |i, out| {
        let row = &ga[i * n..(i + 1) * n];
        let u: Vec<f64> = diff[i * n..(i + 1) * n].iter().map(|v| 2.0 * v / nn).collect();
        let dot: f64 = row.iter().zip(&u).map(|(p, q)| p * q).sum();
        for (j, v) in out.iter_mut().enumerate() {
            *v = (u[j] - row[j] * dot) / na[i];
        }
    });
    // G = A A^T: dA = (dG + dG^T) A, a row of dA at a time.
    par::rows(&mut grad[..n * da], da, threads, |i, g| {
        g.fill(0.0);
        for j in 0..n {
            let w = dg[i * n + j] + dg[j * n + i];
            if w != 0.0 {
                for k in 0..da {
                    g[k] += w * a[j * da + k];
                }
            }
        }
    });
    loss
}

fn distances(x: &[f64], n: usize, d: usize, threads: usize) -> (Vec<f64>, f64) {
    // The upper triangle, a row at a time; the sum in the rows' order.
    let mut dist = vec![0.0; n * n];
    par::rows(&mut dist, n, threads, |i, row| {
        for (j, v) in row.iter_mut().enumerate().skip(i + 1) {
            *v = x[i * d..(i + 1) * d].iter().zip(&x[j * d..(j + 1) * d]).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt();
        }
    });
    let mut sum = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            sum += dist[i * n + j];
        }
    }
    let pairs = (n * (n - 1) / 2) as f64;
    (dist, (sum / pairs).max(EPS))
}

fn rkd_distance(a: &[f64], b: &[f64], n: usize, da: usize, db: usize, threads: usize, grad: &mut [f64]) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    if n < 2 {
        return 0.0;
    }
    let (dsa, mua) = distances(a, n, da, threads);
    let (dsb, mub) = distances(b, n, db, threads);
    let pairs = (n * (n - 1) / 2) as f64;
    let (mut loss, mut dpsi) = (0.0, vec![0.0; n * n]);
    for i in 0..n {
        for j in i + 1..n {
            let (l, dl) = huber(dsa[i * n + j] / mua - dsb[i * n + j] / mub);
            loss += l / pairs;
            dpsi[i * n + j] = dl / pairs;
        }
    }
    // psi = d / mu, mu = mean d: dL/dd_kl = dpsi_kl / mu - (sum_ij dpsi_ij d_ij) / (P mu^2).
    let cross: f64 = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).map(|(i, j)| dpsi[i * n + j] * dsa[i * n + j]).sum::<f64>();
    let common = cross / (pairs * mua * mua);
    // Row r of the gradient: -v for each pair (j, r) with j < r, then +v for each pair (r, j) with
    // j > r, v = dd (a_first - a_second) / d: the order in which a pass over the pairs (i < j)
    // adding v to row i and -v to row j adds them.
    par::rows(&mut grad[..n * da], da, threads, |r, g| {
        for j in 0..n {
            let (i, jj) = if j < r { (j, r) } else { (r, j) };
            let d = dsa[i * n + jj];
            if j == r || d <= EPS {
                continue;
            }
            let dd = dpsi[i * n + jj] / mua - common;
            for k in 0..da {
                let v = dd * (a[i * da + k] - a[jj * da + k]) / d;
                if j < r {
                    g[k] -= v;
                } else {
                    g[k] += v;
                }
            }
        }
    });
    loss
}

/// Huber (smooth L1, delta 1), as the authors' code, and its derivative.
fn huber(e: f64) -> (f64, f64) {
    if e.abs() < 1.0 {
        (0.5 * e * e, e)
    } else {
        (e.abs() - 0.5, e.signum())
    }
}

/// For apex `j` of `x [m, d]`: the unit vectors `e_i = (x_i - x_j) / |x_i - x_j|` (0 for a
/// zero difference) and the lengths.
fn unit_differences(x: &[f64], m: usize, d: usize, j: usize) -> (Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0; m * d];
    let mut len = vec![0.0; m];
    for i in 0..m {
        let row = &mut e[i * d..(i + 1) * d];
        for k in 0..d {
            row[k] = x[i * d + k] - x[j * d + k];
        }
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        len[i] = n;
        if n > EPS {
            row.iter_mut().for_each(|v| *v /= n);
        } else {
            row.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    (e, len)
}

/// The RKD angle term over the rows `rows` of `a [n, da]` and `b [n, db]`; the gradient with
/// respect to `a` added into `grad` (those rows only), scaled by `scale`.
#[allow(clippy::too_many_arguments)]
fn rkd_angle(a: &[f64], b: &[f64], n: usize, da: usize, db: usize, scale: f64, threads: usize, grad: &mut [f64]) -> f64 {
    let m = n.min(ANGLE_ROWS);
    if m < 3 {
        return 0.0;
    }
    let rows: Vec<usize> = (0..m).map(|r| r * n / m).collect();
    let pick = |x: &[f64], d: usize| -> Vec<f64> { rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect() };
    let (xa, xb) = (pick(a, da), pick(b, db));
    let triplets = (m * m * m) as f64;
    let mut loss = 0.0;
    let mut gx = vec![0.0; m * da];
    for j in 0..m {
        let (ea, la) = unit_differences(&xa, m, da, j);
        let (eb, _) = unit_differences(&xb, m, db, j);
        let dot = |e: &[f64], d: usize, i: usize, k: usize| -> f64 { e[i * d..(i + 1) * d].iter().zip(&e[k * d..(k + 1) * d]).map(|(p, q)| p * q).sum() };
        // G[i][k] = dL/dA_ik; dL/de_i = sum_k (G_ik + G_ki) e_k = 2 sum_k G_ik e_k (G symmetric).
        // A row i at a time: its m loss terms (added to the loss below in (i, k) order) and its
        // row of dL/de.
        let per_row = par::map(m, threads, |i| {
            let (mut terms, mut g) = (Vec::with_capacity(m), vec![0.0; da]);
            for k in 0..m {
                let (l, dl) = huber(dot(&ea, da, i, k) - dot(&eb, db, i, k));
                terms.push(l / triplets);
                let w = 2.0 * dl / triplets;
                if w != 0.0 {
                    for t in 0..da {
                        g[t] += w * ea[k * da + t];
                    }
                }
            }
            (terms, g)
        });
        let mut ge = Vec::with_capacity(m * da);
        for (terms, g) in per_row {
            terms.iter().for_each(|l| loss += l);
            ge.extend(g);
        }
        // Through e_i = u_i / |u_i|: dL/du_i = (g - e (e . g)) / |u_i|; u_i = x_i - x_j.
        for i in 0..m {
            if la[i] <= EPS {
                continue;
            }
            let (e, g) = (&ea[i * da..(i + 1) * da], &ge[i * da..(i + 1) * da]);
            let eg: f64 = e.iter().zip(g).map(|(p, q)| p * q).sum();
            for t in 0..da {
                let du = (g[t] - e[t] * eg) / la[i];
                gx[i * da + t] += du;
                gx[j * da + t] -= du;
            }
        }
    }
    for (r, &row) in rows.iter().enumerate() {
        for t in 0..da {
            grad[row * da + t] += scale * gx[r * da + t];
        }
    }
    loss
}

/// CPU twin: the loss of the student's `a [n, da]` against the teacher's `b [n, db]`, and its
/// gradient with respect to `a` written to `grad [n * da]` (fully). Mse and Cosine need `da == db`.
/// On `threads` CPU threads (0: every core); the result is the same bits on any number.
#[allow(clippy::too_many_arguments)]
pub fn hidden_loss_cpu(threads: usize, kind: HiddenLoss, a: &[f32], b: &[f32], n: usize, da: usize, db: usize, grad: &mut [f32]) -> f64 {
    let threads = if threads == 0 { crate::backend::machine_cores() } else { threads };
    let (a64, b64): (Vec<f64>, Vec<f64>) = (a.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
    let mut g = vec![0.0; n * da];
    let loss = match kind {
        HiddenLoss::Mse => {
            let m = (n * da) as f64;
            let mut s = 0.0;
            for ((gv, &p), &q) in g.iter_mut().zip(&a64).zip(&b64) {
                s += (p - q) * (p - q);
                *gv = 2.0 * (p - q) / m;
            }
            s / m
        }
        HiddenLoss::Cosine => cosine(&a64, &b64, n, da, &mut g),
        HiddenLoss::Sp => sp(&a64, &b64, n, da, db, threads, &mut g),
        HiddenLoss::RkdDistance => rkd_distance(&a64, &b64, n, da, db, threads, &mut g),
        HiddenLoss::RkdAngle => rkd_angle(&a64, &b64, n, da, db, 1.0, threads, &mut g),
        HiddenLoss::Rkd => rkd_distance(&a64, &b64, n, da, db, threads, &mut g) + 2.0 * rkd_angle(&a64, &b64, n, da, db, 2.0, threads, &mut g),
    };
    for (o, v) in grad.iter_mut().zip(&g) {
        *o = *v as f32;
    }
    loss
}

/// Tensor entry: `student [N, Da]`, `teacher [N, Db]` (one device); the loss and the gradient
/// with respect to the student's states, on the student's device (computed on the backend's CPU
/// threads, `be.threads`).
pub fn hidden_loss(be: &Backend, kind: HiddenLoss, student: &Tensor, teacher: &Tensor) -> Result<(f64, Tensor)> {
    let (n, da) = student.expect_2d("student hidden states")?;
    let (nb, db) = teacher.expect_2d("teacher hidden states")?;
    if nb != n {
        bail!(Invalid, "hidden-state loss: the student has {n} rows and the teacher {nb}");
    }
    if !kind.relational() && da != db {
        bail!(Invalid, "the {kind} hidden-state loss compares units: the student's width {da} must be the teacher's {db} (map it first)");
    }
    let dev = student.device();
    let (a, b) = (student.to_device(Device::Cpu)?, teacher.to_device(Device::Cpu)?);
    let mut grad = vec![0f32; n * da];
    let loss = hidden_loss_cpu(be.threads, kind, a.f32s()?, b.f32s()?, n, da, db, &mut grad);
    if !loss.is_finite() {
        bail!(Invalid, "the {kind} hidden-state loss is {loss}: the hidden states hold non-finite values");
    }
    Ok((loss, Tensor::from_f32(grad, &[n, da])?.to_device(dev)?))
}

/// The mean `[w]` and covariance `[w, w]` (row-major, biased) of the columns of `x [n, w]`.
pub fn covariance(x: &[f32], n: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0f64; w];
    for r in x.chunks(w) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n.max(1) as f64;
        }
    }
    let mut c = vec![0f64; w * w];
    for r in x.chunks(w) {
        let d: Vec<f64> = r.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..w {
            for j in 0..w {
                c[i * w + j] += d[i] * d[j] / n.max(1) as f64;
            }
        }
    }
    (mean, c)
}

/// `|cov(h) - target|_F` for a batch `h [n, w]` and a recorded covariance `target [w, w]`, and
/// its gradient with respect to `h`: `(h - mean) (D + D^T) / (n L)`, `D = C - T` (the mean's part
/// vanishes).
/// A batch's joint statistics, beside the per-unit moments a batch-norm prior matches. On the
/// host, in f64.
pub fn covariance_gap(h: &Tensor, target: &Tensor) -> Result<(f64, Tensor)> {
    let (n, w) = h.expect_2d("hidden states")?;
    if target.shape() != [w, w] {
        bail!(Invalid, "covariance gap: the target is {:?}, not [{w}, {w}] for states of width {w}", target.shape());
    }
    let dev = h.device();
    let (x, t) = (h.to_vec_f32()?, target.to_vec_f32()?);
    let (mean, c) = covariance(&x, n, w);
    let diff: Vec<f64> = c.iter().zip(&t).map(|(a, &b)| a - b as f64).collect();
    let loss = diff.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !loss.is_finite() {
        bail!(Invalid, "covariance gap is {loss}: the hidden states hold non-finite values");
    }
    let mut grad = vec![0f32; n * w];
    if loss > EPS {
        for (r, row) in x.chunks(w).enumerate() {
            let d: Vec<f64> = row.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
            for j in 0..w {
                let s: f64 = (0..w).map(|i| d[i] * (diff[i * w + j] + diff[j * w + i])).sum();
                grad[r * w + j] = (s / (n as f64 * loss)) as f32;
            }
        }
    }
    Ok((loss, Tensor::from_f32(grad, &[n, w])?.to_device(dev)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[test]
    fn the_covariance_gap_is_zero_at_the_batchs_own_covariance() {
        let (n, w) = (40, 5);
        let x = Tensor::randn(&[n, w], 1.0, &mut Rng::new(7));
        let c: Vec<f32> = covariance(&x.to_vec_f32().unwrap(), n, w).1.iter().map(|&v| v as f32).collect();
        let (l, _) = covariance_gap(&x, &Tensor::from_f32(c, &[w, w]).unwrap()).unwrap();
        assert!(l < 1e-5, "{l}");
        let (l, _) = covariance_gap(&x, &Tensor::zeros(&[w, w])).unwrap();
        assert!(l > 0.5, "{l}");
        assert!(covariance_gap(&x, &Tensor::zeros(&[w, w + 1])).unwrap_err().to_string().contains("not [5, 5]"));
    }

    #[test]
    fn every_relation_gives_the_same_bits_on_any_number_of_threads() {
        // Rows that do not divide evenly among the threads, and more rows than ANGLE_ROWS.
        let (n, da, db) = (70, 5, 7);
        let a = Tensor::randn(&[n, da], 1.0, &mut Rng::new(11)).to_vec_f32().unwrap();
        let b = Tensor::randn(&[n, db], 1.0, &mut Rng::new(12)).to_vec_f32().unwrap();
        for kind in [HiddenLoss::Sp, HiddenLoss::RkdDistance, HiddenLoss::RkdAngle, HiddenLoss::Rkd] {
            let run = |threads| {
                let mut g = vec![0f32; n * da];
                let l = hidden_loss_cpu(threads, kind, &a, &b, n, da, db, &mut g);
                (l.to_bits(), g.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
            };
            let one = run(1);
            assert!(one.1.iter().any(|&v| v != 0), "{kind}: a zero gradient proves nothing");
            for threads in [2, 3, 8] {
                assert_eq!(run(threads), one, "{kind} on {threads} threads");
            }
        }
    }

    #[test]
    fn each_loss_is_zero_where_its_knowledge_is_the_same() {
        let (n, d) = (9, 4);
        let a = Tensor::randn(&[n, d], 1.0, &mut Rng::new(1));
        let av = a.to_vec_f32().unwrap();
        // Cosine ignores a row's scale; the relations ignore a global scale (and SP a rotation too,
        // here a sign flip of every unit); RKD a translation.
        let scaled_rows =
            Tensor::from_f32(av.chunks(d).enumerate().flat_map(|(r, row)| row.iter().map(move |v| v * (1.0 + r as f32))).collect(), &[n, d]).unwrap();
        let flipped = Tensor::from_f32(av.iter().map(|v| -3.0 * v).collect(), &[n, d]).unwrap();
        let shifted = Tensor::from_f32(av.iter().map(|v| 2.0 * v + 5.0).collect(), &[n, d]).unwrap();
        let l = |k, t: &Tensor| hidden_loss(&Backend::default(), k, &a, t).unwrap().0;
        assert!(l(HiddenLoss::Cosine, &scaled_rows) < 1e-12);
        assert!(l(HiddenLoss::Sp, &flipped) < 1e-12);
        assert!(l(HiddenLoss::RkdDistance, &shifted) < 1e-12);
        assert!(l(HiddenLoss::RkdAngle, &shifted) < 1e-12 && l(HiddenLoss::Rkd, &shifted) < 1e-12);
        assert!(l(HiddenLoss::Mse, &a) == 0.0);
        // And not where it differs.
        let other = Tensor::randn(&[n, 6], 1.0, &mut Rng::new(2));
        assert!(l(HiddenLoss::Sp, &other) > 1e-3 && l(HiddenLoss::RkdDistance, &other) > 1e-3 && l(HiddenLoss::RkdAngle, &other) > 1e-3);
        let (dist, angle) = (l(HiddenLoss::RkdDistance, &other), l(HiddenLoss::RkdAngle, &other));
        assert!((l(HiddenLoss::Rkd, &other) - (dist + 2.0 * angle)).abs() < 1e-12);
        // Widths must agree for the unit-wise losses; rows always.
        assert!(hidden_loss(&Backend::default(), HiddenLoss::Cosine, &a, &other).unwrap_err().to_string().contains("map it first"));
        let short = Tensor::randn(&[n - 1, d], 1.0, &mut Rng::new(3));
        assert!(hidden_loss(&Backend::default(), HiddenLoss::Sp, &a, &short).unwrap_err().to_string().contains("rows"));
        assert!("angle".parse::<HiddenLoss>().unwrap_err().contains("mse, cosine, sp, rkd, rkd-angle or rkd-full"));
    }
}
