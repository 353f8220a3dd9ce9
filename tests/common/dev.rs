//! What the device-generic op tests share (`tests/ops.rs`, `tests/gradcheck.rs`): inputs moved to
//! the device under test, outputs poisoned before each op, comparisons against float64 references
//! computed on the host, and the backends each device is checked with.

use codistill::cuda::MatmulPrecision;
use codistill::{Backend, Device, Rng, Tensor};

/// The test's random inputs, from the harness's seed (printed; replayable).
pub fn rng(test: &str, dev: Device) -> Rng {
    Rng::new(super::harness::seed(&format!("{test} on {dev}")))
}

/// `t` on the device under test.
pub fn up(t: &Tensor, dev: Device) -> Tensor {
    t.to_device(dev).unwrap()
}

/// Poisons the device's free buffers of `n` f32s (see `Tensor::poison_free_buffers`), so that an
/// output element the next op fails to write is NaN and fails the comparison.
pub fn poison(dev: Device, n: usize) {
    Tensor::poison_free_buffers(dev, n).unwrap();
}

/// The host values of a result, asserted to live on the device under test and to be finite.
pub fn host(what: &str, t: &Tensor, dev: Device) -> Vec<f32> {
    assert_eq!(t.device(), dev, "{what}: the result left {dev}");
    let v = t.to_vec_f32().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite output on {dev} (an element left unwritten, or an overflow)");
    v
}

/// `||got - want|| / ||want||` (with `floor` under the denominator, for references near zero).
pub fn rel_err(got: &[f32], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "result length");
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num.sqrt()) / den.sqrt().max(floor)
}

/// Asserts `t` (on `dev`) is within `tol` of the float64 reference `want`, relative in norm.
pub fn check(what: &str, t: &Tensor, dev: Device, want: &[f64], tol: f64) {
    let got = host(what, t, dev);
    let e = rel_err(&got, want, 1e-30);
    assert!(e <= tol, "{what} on {dev}: relative error {e:.2e} > {tol:.0e}");
}

/// The backends a device's ops are checked with, each with its bound for products of fp32
/// operands: the exact fp32 path (1e-5 relative) and, on the GPU, bf16 operands (1e-2); the CPU's
/// bf16 products (`cpu_bf16`) likewise at 1e-2.
pub fn backends(dev: Device) -> Vec<(&'static str, Backend, f64)> {
    let exact = Backend { matmul: MatmulPrecision::F32, ..Backend::default() };
    match dev {
        Device::Cpu => vec![("f32", exact, 1e-5), ("cpu-bf16", Backend { cpu_bf16: true, ..exact }, 1e-2)],
        Device::Cuda(_) => vec![("f32", exact, 1e-5), ("bf16", Backend { matmul: MatmulPrecision::Bf16, ..exact }, 1e-2)],
    }
}

/// The values of `t` widened to f64.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&x| x as f64).collect()
}
