//! Device-generic tests of the task losses (compiled into `tests/ops.rs`, run once per device):
//! softmax cross-entropy (with its gradient, and the evaluation form without) and binary
//! cross-entropy on soft targets, against float64.

use crate::common::dev::{check, poison, rng, up};
use codistill::ops::loss::{bce_with_logits, binary_divergence, softmax_xent, softmax_xent_value};
use codistill::ops::softmax_kl::Divergence;
use codistill::{Backend, Device, Tensor};

pub fn cross_entropies_match_f64(dev: Device) {
    let mut r = rng("loss", dev);
    let be = Backend::default();
    for &(n, c) in &[(1, 2), (37, 1001), (700, 10_000)] {
        let x = Tensor::randn(&[n, c], 3.0, &mut r);
        let y: Vec<i32> = (0..n).map(|_| r.below(c) as i32).collect();
        let xv = x.to_vec_f32().unwrap();
        let (mut want, mut wg) = (0f64, vec![0f64; n * c]);
        for i in 0..n {
            let row: Vec<f64> = xv[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            want += (m + z.ln() - row[y[i] as usize]) / n as f64;
            for j in 0..c {
                wg[i * c + j] = ((row[j] - m).exp() / z - (j == y[i] as usize) as i32 as f64) / n as f64;
            }
        }
        let (xd, yd) = (up(&x, dev), up(&Tensor::from_i32(y, &[n]).unwrap(), dev));
        poison(dev, n * c);
        let (l, g) = softmax_xent(&be, &xd, &yd).unwrap();
        assert!((l - want).abs() <= 1e-5 * want, "xent {n}x{c} on {dev}: {l} vs {want}");
        check(&format!("xent grad {n}x{c}"), &g, dev, &wg, 1e-5);
        let v = softmax_xent_value(&be, &xd, &yd).unwrap();
        assert!((v - want).abs() <= 1e-5 * want, "xent value {n}x{c} on {dev}: {v} vs {want}");
    }
    for &n in &[1usize, 17, 300_001] {
        let x = Tensor::randn(&[n], 4.0, &mut r);
        let t = Tensor::uniform(&[n], 0.0, 1.0, &mut r);
        let (xv, tv) = (x.to_vec_f32().unwrap(), t.to_vec_f32().unwrap());
        let want: f64 =
            xv.iter().zip(&tv).map(|(&a, &b)| (a as f64).max(0.0) - a as f64 * b as f64 + (1.0 + (-(a as f64).abs()).exp()).ln()).sum::<f64>() / n as f64;
        let wg: Vec<f64> = xv.iter().zip(&tv).map(|(&a, &b)| (1.0 / (1.0 + (-(a as f64)).exp()) - b as f64) / n as f64).collect();
        poison(dev, n);
        let (l, g) = bce_with_logits(&up(&x, dev), &up(&t, dev)).unwrap();
        assert!((l - want).abs() <= 1e-5 * want, "bce n={n} on {dev}: {l} vs {want}");
        check(&format!("bce grad n={n}"), &g, dev, &wg, 1e-6);
    }
    let bad = Tensor::from_f32(vec![0.5, 1.5], &[2]).unwrap();
    let e = bce_with_logits(&up(&Tensor::zeros(&[2]), dev), &up(&bad, dev)).unwrap_err().to_string();
    assert!(e.contains("1.5"), "{e}");
    let e = softmax_xent(&be, &up(&Tensor::zeros(&[2, 3]), dev), &up(&Tensor::from_i32(vec![0, 3], &[2]).unwrap(), dev)).unwrap_err().to_string();
    assert!(e.contains("label 3"), "{e}");
}

/// A click model's distillation terms against their definitions on probabilities in f64, the
/// gradient against central differences of those definitions; teacher probabilities of exactly
/// 0 and 1 (clamped to 1e-7 from the ends) give finite values.
pub fn binary_divergences_match_their_definitions(dev: Device) {
    let mut r = rng("binary divergences", dev);
    let kl = |a: f64, b: f64| a * (a / b).ln() + (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln();
    let clamp = |p: f64| p.clamp(1e-7, 1.0 - 1e-7);
    for div in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse] {
        for &n in &[1usize, 17, 300_001] {
            let x = Tensor::randn(&[n], 3.0, &mut r);
            let mut t = if div == Divergence::Mse { Tensor::randn(&[n], 3.0, &mut r) } else { Tensor::uniform(&[n], 0.0, 1.0, &mut r) };
            if div != Divergence::Mse && n > 2 {
                let mut v = t.to_vec_f32().unwrap();
                (v[0], v[1]) = (0.0, 1.0);
                t = Tensor::from_f32(v, &[n]).unwrap();
            }
            let (xv, tv) = (x.to_vec_f32().unwrap(), t.to_vec_f32().unwrap());
            let term = |xi: f64, ti: f64| {
                let q = 1.0 / (1.0 + (-xi).exp());
                match div {
                    Divergence::ForwardKl => kl(clamp(ti), q),
                    Divergence::ReverseKl => kl(q, clamp(ti)),
                    Divergence::JensenShannon => 0.5 * kl(clamp(ti), (clamp(ti) + q) / 2.0) + 0.5 * kl(q, (clamp(ti) + q) / 2.0),
                    Divergence::Mse => 0.5 * (xi - ti).powi(2),
                }
            };
            let want: f64 = xv.iter().zip(&tv).map(|(&a, &b)| term(a as f64, b as f64)).sum::<f64>() / n as f64;
            let h = 1e-5;
            let wg: Vec<f64> =
                xv.iter().zip(&tv).map(|(&a, &b)| (term(a as f64 + h, b as f64) - term(a as f64 - h, b as f64)) / (2.0 * h) / n as f64).collect();
            poison(dev, n);
            let (l, g) = binary_divergence(&up(&x, dev), &up(&t, dev), div).unwrap();
            let what = format!("{div} n={n}");
            assert!((l - want).abs() <= 1e-5 * want.abs().max(1e-6), "{what} on {dev}: {l} vs {want}");
            check(&format!("{what} grad"), &g, dev, &wg, 1e-5);
        }
    }
    let e = binary_divergence(&up(&Tensor::zeros(&[2]), dev), &up(&Tensor::from_f32(vec![0.5, 1.5], &[2]).unwrap(), dev), Divergence::ReverseKl)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1.5"), "{e}");
}
