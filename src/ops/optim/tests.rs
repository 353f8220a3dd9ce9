//! Device-generic tests of the fused optimizer updates (compiled into `tests/ops.rs`, run once per
//! device): SGD with momentum, Adagrad and Adam, dense, row-sparse and compacted, against float64.

use crate::common::dev::{check, f64s, rng, up};
use codistill::ops::optim::{compact_rows, update, Grad, Rule};
use codistill::{Device, Tensor};

/// The rule in f64 on one element: (w, state) after the update.
fn step64(rule: Rule, w: f64, g: f64, s: &mut [f64], scale: f64) -> f64 {
    let g = scale * g;
    match rule {
        Rule::Sgd { lr, momentum, weight_decay } => {
            let g = g + weight_decay as f64 * w;
            s[0] = momentum as f64 * s[0] + g;
            w - lr as f64 * s[0]
        }
        Rule::Adagrad { lr, eps } => {
            s[0] += g * g;
            w - lr as f64 * g / (s[0].sqrt() + eps as f64)
        }
        Rule::Adam { lr, beta1, beta2, eps, weight_decay, step } => {
            let (b1, b2) = (beta1 as f64, beta2 as f64);
            s[0] = b1 * s[0] + (1.0 - b1) * g;
            s[1] = b2 * s[1] + (1.0 - b2) * g * g;
            let (mh, vh) = (s[0] / (1.0 - b1.powi(step as i32)), s[1] / (1.0 - b2.powi(step as i32)));
            w - lr as f64 * (mh / (vh.sqrt() + eps as f64) + weight_decay as f64 * w)
        }
    }
}

pub fn updates_match_f64_dense_and_row_sparse(dev: Device) {
    let mut r = rng("optim", dev);
    let rules = [
        Rule::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 1e-3 },
        Rule::Adagrad { lr: 0.05, eps: 1e-10 },
        Rule::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 3 },
    ];
    let (rows, width) = (37, 11);
    for rule in rules {
        for form in ["dense", "rows", "compact"] {
            let w = Tensor::randn(&[rows, width], 1.0, &mut r);
            let g = Tensor::randn(&[rows, width], 1.0, &mut r);
            let states: Vec<Tensor> = (0..rule.slots()).map(|_| Tensor::uniform(&[rows, width], 0.0, 0.5, &mut r)).collect();
            let touched: Vec<u32> = vec![0, 3, 4, 36, 20];
            let (wv, gv) = (f64s(&w), f64s(&g));
            let mut sv: Vec<Vec<f64>> = states.iter().map(f64s).collect();
            let mut want = wv.clone();
            for i in 0..rows * width {
                if form != "dense" && !touched.contains(&((i / width) as u32)) {
                    continue;
                }
                let mut s: Vec<f64> = sv.iter().map(|v| v[i]).collect();
                want[i] = step64(rule, wv[i], gv[i], &mut s, 0.5);
                for (k, v) in s.into_iter().enumerate() {
                    sv[k][i] = v;
                }
            }
            let mut wd = up(&w, dev).deep_copy().unwrap();
            let gd = up(&g, dev);
            let mut sd: Vec<Tensor> = states.iter().map(|s| up(s, dev).deep_copy().unwrap()).collect();
            let compact;
            let grad = match form {
                "dense" => Grad::Dense(&gd),
                "rows" => Grad::Rows(&gd, &touched),
                _ => {
                    compact = compact_rows(&gd, &touched).unwrap();
                    Grad::Compact(&compact)
                }
            };
            update(rule, &mut wd, grad, &mut sd, 0.5).unwrap();
            let what = format!("{rule:?} {form}");
            check(&format!("{what} weights"), &wd, dev, &want, 1e-6);
            for (k, s) in sd.iter().enumerate() {
                check(&format!("{what} state {k}"), s, dev, &sv[k], 1e-6);
            }
        }
    }
    let mut w = up(&Tensor::zeros(&[2, 2]), dev);
    let e = update(rules[2], &mut w, Grad::Dense(&up(&Tensor::zeros(&[2, 2]), dev)), &mut [], 1.0).unwrap_err().to_string();
    assert!(e.contains("2 state tensors"), "{e}");
}
