//! Device-generic tests of dropout (compiled into `tests/ops.rs`, run once per device): the mask is
//! the counter-based `mask_value` bit for bit, on every device, and backward is the same mask.

use crate::common::dev::{host, poison, rng, up};
use codistill::ops::dropout::{dropout, mask_value};
use codistill::{Device, Tensor};

pub fn the_mask_is_a_pure_function_of_seed_and_index(dev: Device) {
    let mut r = rng("dropout", dev);
    for &n in &[1usize, 7, 4099, 300_001] {
        for p in [0.0f32, 0.3, 0.9] {
            let x = Tensor::randn(&[n], 1.0, &mut r);
            let seed = r.next_u64();
            poison(dev, n);
            let y = host("dropout", &dropout(&up(&x, dev), p, seed).unwrap(), dev);
            let xv = x.to_vec_f32().unwrap();
            for (i, (&got, &v)) in y.iter().zip(&xv).enumerate() {
                assert_eq!(got.to_bits(), (v * mask_value(p, seed, i)).to_bits(), "n={n} p={p} element {i} on {dev}");
            }
            let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
            if n > 4000 {
                assert!((kept - (1.0 - p as f64)).abs() < 0.03, "kept {kept} at p={p} on {dev}");
            }
        }
    }
    let e = dropout(&up(&Tensor::zeros(&[3]), dev), 1.0, 1).unwrap_err().to_string();
    assert!(e.contains("[0, 1)"), "{e}");
}
