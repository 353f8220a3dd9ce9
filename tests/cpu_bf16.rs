//! `--cpu-bf16` (`Backend::cpu_bf16`): the CPU backend's products on bf16 operands with f32
//! accumulation. An LSTM layer's forward and backward stay within bf16's 1e-2 of the f32 ones, and
//! a language model trains to the same losses as in f32 (to bf16's precision), bitwise the same on
//! one thread and on two.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::checkpoint::Checkpoint;
use codistill::ops::lstm::{layer_backward, layer_forward};
use codistill::train::lm;
use codistill::{Rng, Tensor};

/// Largest difference over the largest magnitude of the f32 result.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a.iter().zip(&b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    assert!(a.iter().all(|x| x.is_finite()), "non-finite output");
    diff / scale.max(1e-30)
}

#[test]
fn bf16_products_track_f32_and_train_alike_on_any_thread_count() {
    // One LSTM layer at an odd size, forward and backward, f32 then bf16.
    let mut rng = Rng::new(5);
    let (steps, batch, input, hidden) = (7, 9, 37, 45);
    let x = Tensor::randn(&[steps * batch, input], 1.0, &mut rng);
    let h0 = Tensor::randn(&[batch, hidden], 0.5, &mut rng);
    let c0 = Tensor::randn(&[batch, hidden], 0.5, &mut rng);
    let w_ih = Tensor::randn(&[input, 4 * hidden], 0.2, &mut rng);
    let w_hh = Tensor::randn(&[hidden, 4 * hidden], 0.2, &mut rng);
    let b = Tensor::randn(&[4 * hidden], 0.1, &mut rng);
    let dy = Tensor::randn(&[steps * batch, hidden], 1.0, &mut rng);
    let mut layers = Vec::new();
    for on in [false, true] {
        let be = codistill::Backend { cpu_bf16: on, ..Default::default() };
        let out = layer_forward(&be, &x, &h0, &c0, &w_ih, &w_hh, &b, steps).unwrap();
        let g = layer_backward(&be, &x, &h0, &w_ih, &w_hh, &out, &dy, None, None).unwrap();
        layers.push((out, g));
    }
    let ((f, gf), (h, gh)) = (&layers[0], &layers[1]);
    for (what, a, b) in [
        ("y", &h.y, &f.y),
        ("c_last", &h.c_last, &f.c_last),
        ("dx", &gh.dx, &gf.dx),
        ("dw_ih", &gh.dw_ih, &gf.dw_ih),
        ("dw_hh", &gh.dw_hh, &gf.dw_hh),
        ("dh0", &gh.dh0, &gf.dh0),
    ] {
        let r = rel(a, b);
        assert!(r < 1e-2, "{what}: bf16 differs from f32 by {r:.2e} of its scale");
        assert!(r > 0.0, "{what}: bf16 is bitwise the f32 result, so the setting did nothing");
    }

    // A language model big enough that every threaded path splits.
    let d = common::Scratch::new("cpu_bf16", "lm");
    let c = common::split_lm_config(&d, 6);
    let mut runs = Vec::new();
    for (bf, threads) in [(false, 0), (true, 1), (true, 2)] {
        let mut t = c.clone();
        (t.cpu_bf16, t.threads) = (bf, threads);
        t.out = d.join(format!("bf{bf}-t{threads}"));
        let s = lm::train(&t).unwrap();
        runs.push((s.best_valid.unwrap(), Checkpoint::load(&t.out.join("checkpoint.safetensors")).unwrap()));
    }
    let (f32_loss, bf_loss) = (runs[0].0, runs[1].0);
    assert!((bf_loss - f32_loss).abs() < 0.02 * f32_loss, "validation loss {bf_loss} in bf16 against {f32_loss} in f32");
    let ((va, a), (vb, b)) = (&runs[1], &runs[2]);
    for (name, t) in &a.tensors {
        assert_eq!(t, &b.tensors[name], "tensor {name} differs between one and two threads in bf16");
    }
    assert_eq!(va.to_bits(), vb.to_bits(), "bf16 validation losses differ between thread counts");
    assert_ne!(runs[0].1.tensors, a.tensors, "bf16 training gave the f32 weights bitwise");
}
