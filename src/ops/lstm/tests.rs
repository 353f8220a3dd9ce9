//! Device-generic tests of the LSTM layer (compiled into `tests/ops.rs`, run once per device): the
//! forward pass against a float64 LSTM on every backend of the device, and the backward pass as a
//! directional derivative: for random directions V in every input, `<grads, V>` against the
//! central difference of the float64 forward along V (step 1e-4, so the check shares no code with
//! the backward and is exact to ~1e-8).

use crate::common::dev::{backends, check, f64s, host, poison, rng, up};
use codistill::ops::lstm::{layer_backward, layer_forward};
use codistill::{Device, Tensor};

struct Inputs {
    x: Vec<f64>,
    h0: Vec<f64>,
    c0: Vec<f64>,
    wih: Vec<f64>,
    whh: Vec<f64>,
    b: Vec<f64>,
}

/// The f64 layer: outputs `[T*B, H]`, final h and c.
fn forward64(p: &Inputs, t_len: usize, batch: usize, input: usize, hidden: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (mut h, mut c) = (p.h0.clone(), p.c0.clone());
    let mut y = Vec::with_capacity(t_len * batch * hidden);
    for t in 0..t_len {
        let (mut hn, mut cn) = (vec![0.0; batch * hidden], vec![0.0; batch * hidden]);
        for b in 0..batch {
            let mut g = p.b.clone();
            for (j, gj) in g.iter_mut().enumerate() {
                for k in 0..input {
                    *gj += p.x[(t * batch + b) * input + k] * p.wih[k * 4 * hidden + j];
                }
                for k in 0..hidden {
                    *gj += h[b * hidden + k] * p.whh[k * 4 * hidden + j];
                }
            }
            for j in 0..hidden {
                let (i, f, gg, o) = (sig(g[j]), sig(g[hidden + j]), g[2 * hidden + j].tanh(), sig(g[3 * hidden + j]));
                cn[b * hidden + j] = f * c[b * hidden + j] + i * gg;
                hn[b * hidden + j] = o * cn[b * hidden + j].tanh();
            }
        }
        y.extend_from_slice(&hn);
        (h, c) = (hn, cn);
    }
    (y, h, c)
}

pub fn forward_matches_f64_and_backward_matches_its_directional_derivative(dev: Device) {
    let mut r = rng("lstm layer", dev);
    for &(t_len, batch, input, hidden) in &[(1, 1, 1, 1), (5, 3, 7, 13), (35, 20, 64, 96), (9, 64, 200, 256)] {
        let k = 1.0 / (hidden as f32).sqrt();
        let x = Tensor::randn(&[t_len * batch, input], 1.0, &mut r);
        let h0 = Tensor::randn(&[batch, hidden], 0.5, &mut r);
        let c0 = Tensor::randn(&[batch, hidden], 0.5, &mut r);
        let wih = Tensor::uniform(&[input, 4 * hidden], -k, k, &mut r);
        let whh = Tensor::uniform(&[hidden, 4 * hidden], -k, k, &mut r);
        let bias = Tensor::uniform(&[4 * hidden], -k, k, &mut r);
        let dy = Tensor::randn(&[t_len * batch, hidden], 1.0, &mut r);
        let dh = Tensor::randn(&[batch, hidden], 1.0, &mut r);
        let dc = Tensor::randn(&[batch, hidden], 1.0, &mut r);
        let p = Inputs { x: f64s(&x), h0: f64s(&h0), c0: f64s(&c0), wih: f64s(&wih), whh: f64s(&whh), b: f64s(&bias) };
        let (y, hl, cl) = forward64(&p, t_len, batch, input, hidden);
        // The directions, and the derivative of L = <y, dy> + <h_T, dh> + <c_T, dc> along them.
        let dirs: Vec<Vec<f64>> = [&x, &h0, &c0, &wih, &whh, &bias].iter().map(|t| (0..t.numel()).map(|_| r.normal_vec(1, 1.0)[0] as f64).collect()).collect();
        let loss = |p: &Inputs| {
            let (y, h, c) = forward64(p, t_len, batch, input, hidden);
            let dot = |a: &[f64], b: &Tensor| a.iter().zip(f64s(b)).map(|(u, v)| u * v).sum::<f64>();
            dot(&y, &dy) + dot(&h, &dh) + dot(&c, &dc)
        };
        let step = 1e-4;
        let along = |s: f64| {
            let m = |v: &[f64], d: &[f64]| v.iter().zip(d).map(|(a, b)| a + s * b).collect::<Vec<f64>>();
            Inputs {
                x: m(&p.x, &dirs[0]),
                h0: m(&p.h0, &dirs[1]),
                c0: m(&p.c0, &dirs[2]),
                wih: m(&p.wih, &dirs[3]),
                whh: m(&p.whh, &dirs[4]),
                b: m(&p.b, &dirs[5]),
            }
        };
        let numeric = (loss(&along(step)) - loss(&along(-step))) / (2.0 * step);
        // On a GPU also the persistent layer (where the shape fits it: hidden 96 and 256 here; the
        // step layer elsewhere, said on stderr), unless CODISTILL_TEST_SKIP_KERNELS names
        // lstm-persistent (scripts/gpu_remote.sh, until the layer has passed its own gate).
        let mut all = backends(dev);
        let skip = std::env::var("CODISTILL_TEST_SKIP_KERNELS").unwrap_or_default().split(',').any(|s| s.trim() == "lstm-persistent");
        if let Some(&(_, be, tol)) = all.iter().find(|(n, ..)| *n == "bf16").filter(|_| !skip) {
            all.push(("bf16 persistent", codistill::Backend { lstm: codistill::LstmKernel::Persistent, ..be }, tol));
        }
        for (name, be, tol) in all {
            let what = format!("lstm T{t_len} B{batch} In{input} H{hidden} {name}");
            poison(dev, t_len * batch * 4 * hidden);
            let (gx, gh0, gwih, gwhh) = (up(&x, dev), up(&h0, dev), up(&wih, dev), up(&whh, dev));
            let out = layer_forward(&be, &gx, &gh0, &up(&c0, dev), &gwih, &gwhh, &up(&bias, dev), t_len).unwrap();
            check(&format!("{what} y"), &out.y, dev, &y, tol);
            check(&format!("{what} h_last"), &out.h_last, dev, &hl, tol);
            check(&format!("{what} c_last"), &out.c_last, dev, &cl, tol);
            poison(dev, t_len * batch * 4 * hidden);
            let g = layer_backward(&be, &gx, &gh0, &gwih, &gwhh, &out, &up(&dy, dev), Some(&up(&dh, dev)), Some(&up(&dc, dev))).unwrap();
            let grads = [&g.dx, &g.dh0, &g.dc0, &g.dw_ih, &g.dw_hh, &g.db];
            let analytic: f64 = grads.iter().zip(&dirs).map(|(t, d)| host(&what, t, dev).iter().zip(d).map(|(&a, b)| a as f64 * b).sum::<f64>()).sum();
            // Gradients through many steps compound the operand rounding: 10x the forward's bound.
            let scale: f64 = grads.iter().zip(&dirs).map(|(t, d)| host(&what, t, dev).iter().zip(d).map(|(&a, b)| (a as f64 * b).abs()).sum::<f64>()).sum();
            let bound = 10.0 * tol * scale.max(1e-6) + 1e-6;
            assert!((analytic - numeric).abs() <= bound, "{what}: <grads, V> = {analytic:.8e}, the f64 forward's derivative {numeric:.8e} (bound {bound:.1e})");
        }
    }
}
