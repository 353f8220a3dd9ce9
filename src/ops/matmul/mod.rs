//! Matrix multiply: `C[m,n] = alpha * op(A) @ op(B) + beta * C`, row-major, where `op(A)` is A or
//! its transpose. The CPU twin is the `gemm` crate's packed, vectorised (kernels for the CPU's
//! SIMD chosen at run time: AVX2/FMA on x86_64), threaded kernel: a transpose is only a swap of
//! strides, so no operand is ever copied. bf16 operands are widened exactly to f32 (the tensor
//! cores multiply bf16 and accumulate in f32, which this reproduces up to summation order).

pub mod bf16gemm;
pub mod cuda;
pub mod packed;
mod tape;

use crate::backend::Backend;
use crate::tensor::{DType, Device, Tensor};
use crate::{bail, Result};

/// Products of at most this many multiply-adds (m n k) run on the calling thread. Below it the
/// threads cost more than they give, inside the product and after it (rayon's idle workers spin
/// for a while, taking a core from the serial work that follows): the click model's step, whose
/// products are all 512 x 208 x 128 or smaller, ran at 0.89x matrixmultiply's speed with them
/// threaded from 4M multiply-adds, and at 1.00x serial, on the 2-core CI machine.
const SERIAL_MAX: usize = 1 << 24;

/// CPU twin. `a` is `[m,k]` (or `[k,m]` when `trans_a`), `b` is `[k,n]` (or `[n,k]` when
/// `trans_b`), `c` is `[m,n]`. With `beta == 0` the old contents of `c` are never read, so a
/// poisoned (NaN) output buffer is fully overwritten. The result does not depend on the number of
/// threads (the work is split over output blocks, never over k).
#[allow(clippy::too_many_arguments)]
pub fn gemm_cpu(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    gemm_cpu_with(crate::backend::machine_cores(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_cpu`] on at most `threads` threads (small products on the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn gemm_cpu_with(threads: usize, m: usize, n: usize, k: usize, alpha: f32, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    let threads = if m * n * k <= SERIAL_MAX { 1 } else { threads.max(1) };
    gemm_cpu_on(threads, m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_cpu`] split over `threads` tasks (one: on the calling thread).
#[allow(clippy::too_many_arguments)]
fn gemm_cpu_on(threads: usize, m: usize, n: usize, k: usize, alpha: f32, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm_cpu buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: C = beta * C (and exactly 0 when beta is 0, whatever C held).
        for x in &mut c[..m * n] {
            *x = if beta == 0.0 { 0.0 } else { beta * *x };
        }
        return;
    }
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let par = if threads == 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
    // The crate's convention: dst = alpha' * dst + beta' * lhs @ rhs, dst read only when asked;
    // strides are given column stride first.
    // SAFETY: the asserts above bound every index the kernel forms from these sizes and strides.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, beta != 0.0, a.as_ptr(), csa, rsa, b.as_ptr(), csb, rsb, beta, alpha, false, false, false, par);
    }
}

/// The CPU backend's product as `be` asks ([`Backend::cpu_bf16`], [`Backend::threads`]):
/// [`gemm_cpu`] in f32, or [`bf16gemm::gemm_bf16_cpu`] on operands rounded to bf16; the other
/// arguments as [`gemm_cpu`]'s.
#[allow(clippy::too_many_arguments)]
pub fn gemm_host(be: &Backend, m: usize, n: usize, k: usize, alpha: f32, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    if be.cpu_bf16 {
        bf16gemm::gemm_bf16_cpu_on(be.cpu_threads(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
    } else {
        gemm_cpu_with(be.cpu_threads(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
    }
}

/// Shapes of `op(A) @ op(B)`: returns (m, n, k) or an error naming both operands.
pub fn matmul_dims(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.expect_2d("matmul lhs")?;
    let (br, bc) = b.expect_2d("matmul rhs")?;
    let (m, ka) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if ka != kb {
        bail!(
            Shape,
            "matmul inner dimensions differ: lhs {:?}{} and rhs {:?}{}",
            a.shape(),
            if trans_a { "^T" } else { "" },
            b.shape(),
            if trans_b { "^T" } else { "" }
        );
    }
    Ok((m, n, ka))
}

fn operand_f32(t: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    match t.dtype() {
        DType::F32 => Ok(std::borrow::Cow::Borrowed(t.f32s()?)),
        DType::BF16 => Ok(std::borrow::Cow::Owned(t.to_vec_f32()?)),
        DType::I32 => bail!(DType, "matmul operand {:?} is an index tensor", t.shape()),
    }
}

/// `op(A) @ op(B)` as a new f32 tensor. Operands may be f32 or bf16 (both the same dtype).
pub fn matmul(be: &Backend, a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let (m, n, _) = matmul_dims(a, trans_a, b, trans_b)?;
    let dev = super::same_device(&[("lhs", a), ("rhs", b)])?;
    // beta = 0 below: the output's old contents are never read.
    let mut c = Tensor::uninit_on(&[m, n], dev)?;
    matmul_into(be, a, trans_a, b, trans_b, 1.0, 0.0, &mut c)?;
    Ok(c)
}

/// `C = alpha * op(A) @ op(B) + beta * C` in place (accumulate with `beta = 1`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(be: &Backend, a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool, alpha: f32, beta: f32, c: &mut Tensor) -> Result<()> {
    let (m, n, k) = matmul_dims(a, trans_a, b, trans_b)?;
    c.expect_shape("matmul output", &[m, n])?;
    if a.dtype() != b.dtype() {
        bail!(DType, "matmul operands differ: lhs {:?}, rhs {:?}", a.dtype(), b.dtype());
    }
    match super::same_device(&[("lhs", a), ("rhs", b), ("output", c)])? {
        Device::Cpu => {
            let (av, bv) = (operand_f32(a)?, operand_f32(b)?);
            gemm_host(be, m, n, k, alpha, &av, trans_a, &bv, trans_b, beta, c.f32s_mut()?);
            Ok(())
        }
        Device::Cuda(_) => {
            use crate::cuda::MatmulPrecision;
            use cuda::{gemm_bf16_with, gemm_f32, gemm_f32_as_bf16_with};
            let cb = c.cuda_f32_mut()?;
            match (a.dtype(), be.matmul) {
                (DType::BF16, _) => gemm_bf16_with(be.gemm, m, n, k, alpha, a.cuda_bf16()?, trans_a, b.cuda_bf16()?, trans_b, beta, cb),
                (DType::F32, MatmulPrecision::F32) => gemm_f32(m, n, k, alpha, a.cuda_f32()?, trans_a, b.cuda_f32()?, trans_b, beta, cb),
                (DType::F32, MatmulPrecision::Bf16) => gemm_f32_as_bf16_with(be.gemm, m, n, k, alpha, a.cuda_f32()?, trans_a, b.cuda_f32()?, trans_b, beta, cb),
                (DType::I32, _) => bail!(DType, "matmul operand {:?} is an index tensor", a.shape()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn reference(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let av = if ta { a[l * m + i] } else { a[i * k + l] };
                    let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                    c[i * n + j] += av as f64 * bv as f64;
                }
            }
        }
        c
    }

    #[test]
    fn all_transposes_and_odd_sizes_match_f64_reference() {
        let mut rng = Rng::new(1);
        for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (33, 17, 65), (64, 3, 129), (5, 70, 1)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = rng.normal_vec(m * k, 1.0);
                    let b = rng.normal_vec(k * n, 1.0);
                    let mut c = vec![f32::NAN; m * n];
                    gemm_cpu(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut c);
                    let r = reference(m, n, k, &a, ta, &b, tb);
                    for (x, y) in c.iter().zip(&r) {
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + y.abs());
                        assert!((*x as f64 - y).abs() <= tol, "m{m} n{n} k{k} ta{ta} tb{tb}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn threaded_products_with_alpha_beta_match_f64_and_one_worker_bitwise() {
        // Above SERIAL_MAX, so the product is split into tasks; where they run must not change a
        // bit (tests/threads.rs compares one thread with two through a whole training run).
        let mut rng = Rng::new(3);
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for &(m, n, k) in &[(300, 401, 150), (67, 2030, 129)] {
            assert!(m * n * k > SERIAL_MAX);
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = rng.normal_vec(m * k, 1.0);
                let b = rng.normal_vec(k * n, 1.0);
                let c0 = rng.normal_vec(m * n, 1.0);
                let mut c = c0.clone();
                gemm_cpu(m, n, k, 0.5, &a, ta, &b, tb, -2.0, &mut c);
                let r = reference(m, n, k, &a, ta, &b, tb);
                for ((x, y), z) in c.iter().zip(&r).zip(&c0) {
                    let want = 0.5 * y - 2.0 * *z as f64;
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                    assert!((*x as f64 - want).abs() <= tol, "m{m} n{n} k{k} ta{ta} tb{tb}: {x} vs {want}");
                }
                // Split over 1, 2, 3 and 4 tasks (other block boundaries each), and the same split
                // run by a one-thread pool: not a bit may change.
                for threads in 1..=4 {
                    let mut other = c0.clone();
                    gemm_cpu_on(threads, m, n, k, 0.5, &a, ta, &b, tb, -2.0, &mut other);
                    assert!(c.iter().zip(&other).all(|(x, y)| x.to_bits() == y.to_bits()), "m{m} n{n} k{k} ta{ta} tb{tb}: {threads} task(s) changed bits");
                }
                let mut serial = c0.clone();
                one_thread.install(|| gemm_cpu_on(2, m, n, k, 0.5, &a, ta, &b, tb, -2.0, &mut serial));
                assert!(c.iter().zip(&serial).all(|(x, y)| x.to_bits() == y.to_bits()), "m{m} n{n} k{k} ta{ta} tb{tb}: the pool changed bits");
                // beta 0 on a poisoned output: every element written, none read
                let mut p = vec![f32::NAN; m * n];
                gemm_cpu(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut p);
                assert!(p.iter().zip(&r).all(|(x, y)| (*x as f64 - y).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + y.abs())), "m{m} n{n} k{k}: poisoned output");
            }
        }
    }

    #[test]
    fn accumulate_adds_to_existing_output() {
        let a = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let eye = Tensor::from_f32(vec![1.0, 0.0, 0.0, 1.0], &[2, 2]).unwrap();
        let mut c = Tensor::full(&[2, 2], 10.0);
        matmul_into(&crate::Backend::default(), &a, false, &eye, false, 2.0, 1.0, &mut c).unwrap();
        assert_eq!(c.f32s().unwrap(), &[12.0, 14.0, 16.0, 18.0]);
    }

    #[test]
    fn mismatched_inner_dimension_names_both_shapes() {
        let a = Tensor::zeros(&[2, 3]);
        let b = Tensor::zeros(&[4, 5]);
        let e = matmul(&crate::Backend::default(), &a, false, &b, false).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    }

    #[test]
    fn bf16_operands_match_rounded_f32_product() {
        let mut rng = Rng::new(2);
        let a = Tensor::randn(&[9, 31], 1.0, &mut rng);
        let b = Tensor::randn(&[31, 11], 1.0, &mut rng);
        let (ab, bb) = (a.to_bf16().unwrap(), b.to_bf16().unwrap());
        let c = matmul(&crate::Backend::default(), &ab, false, &bb, false).unwrap();
        let exact = reference(9, 11, 31, &ab.to_vec_f32().unwrap(), false, &bb.to_vec_f32().unwrap(), false);
        let unrounded = reference(9, 11, 31, a.f32s().unwrap(), false, b.f32s().unwrap(), false);
        for ((x, y), z) in c.f32s().unwrap().iter().zip(&exact).zip(&unrounded) {
            assert!((*x as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            // bf16 operands: within the documented 1e-2 relative bound of the unrounded product
            assert!((*x as f64 - z).abs() <= 1e-2 * (1.0 + z.abs()) * 6.0, "{x} vs {z}");
        }
    }
}
