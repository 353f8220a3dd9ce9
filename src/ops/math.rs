//! The scalar math the CPU twins share: a vectorisable `exp` and the activations built on it, and
//! the numerically safe logistic function. Pure functions of their arguments, no tensors.

/// `e^x` in f32 for the softmax rows: Cephes' `expf` (range reduction by ln 2 in two parts, a
/// degree-6 polynomial, the exponent put in by bits), within 2 ulp on [-87, 88]; inputs below -87
/// give about 1e-38 (a softmax term that small is zero beside the row's largest, which is 1).
/// Written without calls or branches so the loops over a row vectorise; libm's f64 `exp` made the
/// CPU softmax-KL a quarter of a Brown language-model step.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to nearest
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let p = p * r * r + r + 1.0;
    // n as an integer from t's low mantissa bits (t's unit in the last place is 1): the same value
    // as `n as i32`, whose saturating conversion kept the loops over a row from vectorising fully.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// `exp(x_j * scale - max)` into `out`, the row's maximum of `x * scale` and the sum of `out` (8
/// at a time in f32, those in f64): the pass every softmax row starts with.
#[inline]
pub fn exp_row(x: &[f32], scale: f32, out: &mut [f32]) -> (f32, f64) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_f32(v * scale - max);
    }
    (max, out.chunks(8).map(|c| c.iter().sum::<f32>() as f64).sum())
}

/// Numerically safe logistic function: never evaluates exp of a large positive number.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `1 / (1 + e^-x)` through the vectorisable [`exp_f32`] (within 3e-7 relative; exactly 1 from
/// x = 88 up, about 6e-39 from x = -87 down where the true value is smaller still).
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh` as Cephes' `tanhf`: an odd polynomial below |x| = 0.625 (so small arguments keep their
/// relative precision), `1 - 2 / (e^2|x| + 1)` above; both computed and one selected, so loops
/// vectorise. Within a few ulp of libm's.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 0.133_314_42) * z - 0.333_332_8) * z * x + x;
    let large = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exponential against f64 `exp` over the range softmax rows use, and its ends.
    #[test]
    fn exp_f32_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) < 1e-37 && exp_f32(-1e4) >= 0.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
    }

    /// The vectorised activations against f64 over the gate range and beyond, relative error
    /// (absolute below 1e-30, where the sigmoid's tail is clamped).
    #[test]
    fn fast_activations_match_f64() {
        let (mut ws, mut wt) = (0f64, 0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4 * 3.0; // [-60, 60], finest near 0
            let x = if i % 2 == 0 { x } else { x * 1e-3 };
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let t = (x as f64).tanh();
            ws = ws.max(((fast_sigmoid(x) as f64 - s) / s.max(1e-30)).abs().min((fast_sigmoid(x) as f64 - s).abs() * 1e30));
            wt = wt.max(if t == 0.0 { (fast_tanh(x) as f64).abs() } else { ((fast_tanh(x) as f64 - t) / t).abs() });
        }
        assert!(ws < 1e-6, "sigmoid worst relative error {ws:e}");
        assert!(wt < 1e-6, "tanh worst relative error {wt:e}");
        assert_eq!((fast_tanh(1e4), fast_tanh(-1e4), fast_sigmoid(1e4)), (1.0, -1.0, 1.0));
        assert!(fast_sigmoid(-1e4) < 1e-37);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(1e4), 1.0);
        assert_eq!(sigmoid(-1e4), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
