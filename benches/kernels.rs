//! Criterion benchmarks of every kernel family: the CPU backend always (groups `cpu_*`), and the
//! CUDA kernels when there is a GPU (groups `gpu_*`, timed with CUDA events around the launches,
//! so launch overhead is in and host synchronisation is not; without a GPU they are skipped with
//! the reason). `cargo bench --bench kernels -- cpu_` or `-- gpu_` picks a side.
//!
//! Compute-bound groups declare FLOPs, so criterion's "elem/s" column reads as FLOP/s
//! (Gelem/s = GFLOP/s).
//!
//! - matmul: square sizes and the LM trainer's shapes (batch*steps rows against 4H gate columns).
//! - lstm step: one layer, forward and backward through time over a window; FLOPs counted as the
//!   matmuls' 2mnk (the pointwise cell work is a few percent at these sizes and is left out).
//!
//! The memory-bound families declare bytes moved (each input read once, each output written
//! once), so their column reads as bytes/s: embedding gather and scatter-add, the fused LSTM cell,
//! the fused softmax-KL loss (student, teachers and gradient), and the Adam update.

use codistill::ops::embedding::{gather_cpu, scatter_add_cpu};
use codistill::ops::lstm::{cell_backward_cpu, cell_forward_cpu, layer_backward, layer_forward};
use codistill::ops::matmul::bf16gemm::{gemm_bf16_cpu, Bf16B};
use codistill::ops::matmul::gemm_cpu;
use codistill::ops::matmul::packed::PackedB;
use codistill::ops::optim::adam_cpu;
use codistill::ops::softmax_kl::{softmax_kl_cpu, DistillParams, Divergence};
use codistill::{Rng, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_matmul");
    let mut rng = Rng::new(0);
    // (m, n, k): square, then LSTM input projection (T*B x 4H x In) and the recurrent step (B x 4H x H)
    // Then the trainers' products: the LM's output layer forward (T*B x V x H, NT) and weight
    // gradient (H x V x T*B, TN) for issue 7's model and the Brown model, and the click model's
    // first MLP layer (B x 128 x 432) forward and weight gradient. Each beside the same product
    // through matrixmultiply (the CPU GEMM before the gemm crate), on the same operands.
    #[rustfmt::skip]
    let shapes: &[(usize, usize, usize, bool, bool)] = &[
        (256, 256, 256, false, false), (512, 512, 512, false, false), (1024, 1024, 1024, false, false),
        (1280, 2600, 650, false, false), (64, 2600, 650, false, false),
        (2240, 10000, 1024, false, true), (1024, 10000, 2240, true, false),
        (1120, 14115, 256, false, true), (256, 14115, 1120, true, false),
        (512, 128, 432, false, false), (432, 128, 512, true, false),
    ];
    for &(m, n, k, ta, tb) in shapes {
        let a = rng.normal_vec(m * k, 1.0);
        let b = rng.normal_vec(k * n, 1.0);
        let mut out = vec![0f32; m * n];
        let label = format!("{m}x{n}x{k}{}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" });
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("gemm_cpu", &label), &(), |bch, _| bch.iter(|| gemm_cpu(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut out)));
        // bf16 operands, f32 accumulation (`--cpu-bf16`): rounding and packing both operands included.
        group.bench_with_input(BenchmarkId::new("bf16", &label), &(), |bch, _| bch.iter(|| gemm_bf16_cpu(m, n, k, 1.0, &a, ta, &b, tb, 0.0, &mut out)));
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        group.bench_with_input(BenchmarkId::new("matrixmultiply", &label), &(), |bch, _| {
            // SAFETY: a, b and out hold m x k, k x n and m x n elements for these strides.
            bch.iter(|| unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, 0.0, out.as_mut_ptr(), n as isize, 1) })
        });
    }
    // The LSTM's per-step products with the right-hand side packed once (ops::matmul::packed), against the
    // same product through gemm_cpu: gates += h @ W_hh and dh = dgates @ W_hh^T.
    for &(batch, hidden) in &[(64, 1024), (32, 256), (20, 650)] {
        let w = rng.normal_vec(hidden * 4 * hidden, 0.05);
        for (what, m, n, k, trans) in [("fwd", batch, 4 * hidden, hidden, false), ("bwd", batch, hidden, 4 * hidden, true)] {
            let a = rng.normal_vec(m * k, 1.0);
            let mut out = vec![0f32; m * n];
            let packed = PackedB::new(&w, k, n, trans);
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("step_{what}_gemm_cpu"), format!("{m}x{n}x{k}")), &(), |bch, _| {
                bch.iter(|| gemm_cpu(m, n, k, 1.0, &a, false, &w, trans, 0.0, &mut out))
            });
            group.bench_with_input(BenchmarkId::new(format!("step_{what}_packed"), format!("{m}x{n}x{k}")), &(), |bch, _| {
                bch.iter(|| packed.gemm(m, &a, 0.0, &mut out))
            });
            let packed16 = Bf16B::new(&w, k, n, trans);
            group.bench_with_input(BenchmarkId::new(format!("step_{what}_bf16_packed"), format!("{m}x{n}x{k}")), &(), |bch, _| {
                bch.iter(|| packed16.gemm(m, 1.0, &a, false, 0.0, &mut out))
            });
        }
    }
    group.finish();
}

fn lstm_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_lstm_layer");
    group.sample_size(10);
    let mut rng = Rng::new(1);
    for &(steps, batch, hidden) in &[(20, 20, 200), (35, 20, 650)] {
        let input = hidden;
        let x = Tensor::randn(&[steps * batch, input], 1.0, &mut rng);
        let h0 = Tensor::zeros(&[batch, hidden]);
        let w_ih = Tensor::randn(&[input, 4 * hidden], 0.05, &mut rng);
        let w_hh = Tensor::randn(&[hidden, 4 * hidden], 0.05, &mut rng);
        let b = Tensor::zeros(&[4 * hidden]);
        let dy = Tensor::randn(&[steps * batch, hidden], 1.0, &mut rng);
        let (rows, g4) = (steps * batch, 4 * hidden);
        // forward: x W_ih + T recurrent matmuls; backward: dh recurrences + dW_hh + dW_ih + dx
        let fwd = 2 * rows * g4 * (input + hidden);
        let bwd = 2 * rows * g4 * (hidden + hidden + input + input);
        group.throughput(Throughput::Elements(fwd as u64));
        group.bench_with_input(BenchmarkId::new("forward", format!("T{steps}_B{batch}_H{hidden}")), &(), |bch, _| {
            bch.iter(|| layer_forward(&codistill::Backend::default(), &x, &h0, &h0, &w_ih, &w_hh, &b, steps).unwrap())
        });
        let out = layer_forward(&codistill::Backend::default(), &x, &h0, &h0, &w_ih, &w_hh, &b, steps).unwrap();
        group.throughput(Throughput::Elements(bwd as u64));
        group.bench_with_input(BenchmarkId::new("backward", format!("T{steps}_B{batch}_H{hidden}")), &(), |bch, _| {
            bch.iter(|| layer_backward(&codistill::Backend::default(), &x, &h0, &w_ih, &w_hh, &out, &dy, None, None).unwrap())
        });
    }
    group.finish();
}

fn embedding(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_embedding");
    let mut rng = Rng::new(2);
    // (table rows, width, ids): the LM's (vocabulary 10k, 1024 wide, a 64x35 window) and Criteo's
    for &(rows, dim, n) in &[(10_000, 1024, 64 * 35), (26 * 65_536, 8, 26 * 512)] {
        let table = rng.normal_vec(rows * dim, 1.0);
        let ids: Vec<i32> = (0..n).map(|_| rng.below(rows) as i32).collect();
        let mut out = vec![0f32; n * dim];
        group.throughput(Throughput::Bytes((2 * n * dim * 4 + n * 4) as u64));
        group.bench_with_input(BenchmarkId::new("gather", format!("{rows}x{dim}_ids{n}")), &(), |bch, _| bch.iter(|| gather_cpu(&table, dim, &ids, &mut out)));
        let mut dtable = vec![0f32; rows * dim];
        // scatter-add reads dout and the rows it adds into, and writes them back
        group.throughput(Throughput::Bytes((3 * n * dim * 4 + n * 4) as u64));
        group.bench_with_input(BenchmarkId::new("scatter_add", format!("{rows}x{dim}_ids{n}")), &(), |bch, _| {
            bch.iter(|| scatter_add_cpu(&out, dim, &ids, &mut dtable))
        });
    }
    group.finish();
}

fn lstm_cell(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_lstm_cell");
    let mut rng = Rng::new(3);
    let (batch, hidden) = (64, 1024);
    let n = batch * hidden;
    let gates0 = rng.normal_vec(4 * n, 1.0);
    let c_prev = rng.normal_vec(n, 1.0);
    let (mut gates, mut cc, mut h) = (gates0.clone(), vec![0f32; n], vec![0f32; n]);
    // forward: reads 4 gate rows and c_prev, writes 4 activations, c and h (the timing also
    // includes restoring the pre-activations, so the figure is a lower bound)
    group.throughput(Throughput::Bytes((4 * (5 * n + 6 * n)) as u64));
    group.bench_function(BenchmarkId::new("forward", format!("B{batch}_H{hidden}")), |bch| {
        bch.iter(|| {
            gates.copy_from_slice(&gates0);
            cell_forward_cpu(&mut gates, &c_prev, &mut cc, &mut h, hidden)
        })
    });
    let dh = rng.normal_vec(n, 1.0);
    let (mut dc, mut dgates) = (rng.normal_vec(n, 1.0), vec![0f32; 4 * n]);
    // backward: reads 4 activations, c_prev, c, dh, dc; writes dc and 4 gate gradients
    group.throughput(Throughput::Bytes((4 * (8 * n + 5 * n)) as u64));
    group.bench_function(BenchmarkId::new("backward", format!("B{batch}_H{hidden}")), |bch| {
        bch.iter(|| cell_backward_cpu(&gates, &c_prev, &cc, &dh, &mut dc, &mut dgates, hidden))
    });
    group.finish();
}

fn softmax_kl(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_softmax_kl");
    group.sample_size(10);
    let mut rng = Rng::new(4);
    // (rows, classes, teachers): a 32x35 Brown window (14,115 words) with one teacher, and 10k with three
    for &(rows, cols, k) in &[(1120, 14_115, 1), (512, 10_000, 3)] {
        let s = rng.normal_vec(rows * cols, 2.0);
        let t: Vec<Vec<f32>> = (0..k).map(|_| rng.normal_vec(rows * cols, 2.0)).collect();
        let tv: Vec<&[f32]> = t.iter().map(|v| v.as_slice()).collect();
        let y: Vec<i32> = (0..rows).map(|_| rng.below(cols) as i32).collect();
        let mut g = vec![0f32; rows * cols];
        group.throughput(Throughput::Bytes((4 * rows * cols * (k + 2)) as u64));
        group.bench_function(BenchmarkId::new("fwd_bwd", format!("{rows}x{cols}_k{k}")), |bch| {
            bch.iter(|| softmax_kl_cpu(&s, &tv, Some(&y), rows, cols, DistillParams { temperature: 1.0, alpha: 0.5, ..Default::default() }, &mut g))
        });
        if k == 1 {
            // The language model's own case: one teacher, T 1, labels and the soft term (the
            // divergences other than forward KL take the generic per-element path).
            for div in [Divergence::ReverseKl, Divergence::JensenShannon] {
                let p = DistillParams { temperature: 1.0, alpha: 0.5, divergence: div };
                group.bench_function(BenchmarkId::new(format!("fused_{div}"), format!("{rows}x{cols}_k{k}")), |bch| {
                    bch.iter(|| softmax_kl_cpu(&s, &tv, Some(&y), rows, cols, p, &mut g))
                });
            }
        }
        if k == 3 {
            // Every divergence fused, beside its unfused composition (whole-matrix passes, as a
            // composition of tensor ops runs: log-softmaxes, the teachers' average, the divergence,
            // the row sums, the gradient), at T = 2, soft term alone.
            for div in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse] {
                let p = DistillParams { temperature: 2.0, alpha: 1.0, divergence: div };
                group.bench_function(BenchmarkId::new(format!("fused_{div}"), format!("{rows}x{cols}_k{k}")), |bch| {
                    bch.iter(|| softmax_kl_cpu(&s, &tv, None, rows, cols, p, &mut g))
                });
                group.bench_function(BenchmarkId::new(format!("unfused_{div}"), format!("{rows}x{cols}_k{k}")), |bch| {
                    bch.iter(|| unfused_divergence(&s, &tv, rows, cols, 2.0, div))
                });
            }
        }
    }
    group.finish();
}

/// The soft term and its gradient as a composition of whole-matrix passes (each a tensor the size
/// of the logits): what the fused loss is measured against.
fn unfused_divergence(s: &[f32], teachers: &[&[f32]], rows: usize, cols: usize, t: f32, div: Divergence) -> (f64, Vec<f32>) {
    let n = rows * cols;
    let log_softmax = |x: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; n];
        for (o, r) in out.chunks_mut(cols).zip(x.chunks(cols)) {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b / t));
            let lse = m + r.iter().map(|&v| (v / t - m).exp()).sum::<f32>().ln();
            o.iter_mut().zip(r).for_each(|(o, &v)| *o = v / t - lse);
        }
        out
    };
    if div == Divergence::Mse {
        let zbar: Vec<f32> = (0..n).map(|i| teachers.iter().map(|tk| tk[i]).sum::<f32>() / teachers.len() as f32).collect();
        let d: Vec<f32> = s.iter().zip(&zbar).map(|(a, b)| a - b).collect();
        let loss = d.iter().map(|x| (x * x) as f64).sum::<f64>() / (2 * n) as f64;
        return (loss, d.iter().map(|x| x / (cols * rows) as f32).collect());
    }
    let lq = log_softmax(s);
    let q: Vec<f32> = lq.iter().map(|x| x.exp()).collect();
    let ps: Vec<Vec<f32>> = teachers.iter().map(|tk| log_softmax(tk).iter().map(|x| x.exp()).collect()).collect();
    let p: Vec<f32> = (0..n).map(|i| ps.iter().map(|pk| pk[i]).sum::<f32>() / ps.len() as f32).collect();
    let lp: Vec<f32> = p.iter().map(|x| x.ln()).collect();
    let (pointwise, h): (Vec<f32>, Vec<f32>) = match div {
        Divergence::ForwardKl => ((0..n).map(|i| p[i] * (lp[i] - lq[i])).collect(), vec![]),
        Divergence::ReverseKl => ((0..n).map(|i| q[i] * (lq[i] - lp[i])).collect(), (0..n).map(|i| lq[i] - lp[i]).collect()),
        _ => {
            let lm: Vec<f32> = (0..n).map(|i| ((p[i] + q[i]) / 2.0).ln()).collect();
            ((0..n).map(|i| 0.5 * p[i] * (lp[i] - lm[i]) + 0.5 * q[i] * (lq[i] - lm[i])).collect(), (0..n).map(|i| 0.5 * (lq[i] - lm[i])).collect())
        }
    };
    let loss = pointwise.iter().map(|&x| x as f64).sum::<f64>() / rows as f64;
    let grad = match div {
        Divergence::ForwardKl => (0..n).map(|i| t * (q[i] - p[i]) / rows as f32).collect(),
        _ => {
            let sums: Vec<f32> = (0..rows).map(|r| (r * cols..(r + 1) * cols).map(|i| q[i] * h[i]).sum()).collect();
            (0..n).map(|i| t * q[i] * (h[i] - sums[i / cols]) / rows as f32).collect()
        }
    };
    (loss, grad)
}

fn adam(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_adam");
    let mut rng = Rng::new(5);
    let n = 1 << 22;
    let (mut w, g, mut m, mut v) = (rng.normal_vec(n, 1.0), rng.normal_vec(n, 1.0), vec![0f32; n], vec![0f32; n]);
    // reads w, g, m, v; writes w, m, v
    group.throughput(Throughput::Bytes((7 * 4 * n) as u64));
    group.bench_function(BenchmarkId::new("update", format!("{n}")), |bch| {
        bch.iter(|| adam_cpu(&mut w, &g, &mut m, &mut v, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, 1.0))
    });
    group.finish();
}

/// The GPU groups: the same families on the CUDA kernels, shapes as in `benches/gpu.rs`.
mod gpu {
    use codistill::cuda::{self, Gpu, GpuBuf};

    /// The launchers timed here, from their op folders.
    mod k {
        pub use codistill::ops::embedding::cuda::*;
        pub use codistill::ops::lstm::cuda::{lstm_cell_bwd, lstm_cell_fwd};
        pub use codistill::ops::matmul::cuda::gemm_bf16;
        pub use codistill::ops::optim::cuda::adam;
        pub use codistill::ops::softmax_kl::cuda::softmax_kl;
    }
    use codistill::{DistillParams, Rng};
    use criterion::{BenchmarkId, Criterion, Throughput};
    use cudarc::driver::sys;
    use half::bf16;
    use std::sync::Arc;
    use std::time::Duration;

    /// `iters` launches between two CUDA events.
    fn timed(g: &Arc<Gpu>, iters: u64, mut f: impl FnMut()) -> Duration {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = g.stream().record_event(flags).unwrap();
        for _ in 0..iters {
            f();
        }
        let b = g.stream().record_event(flags).unwrap();
        Duration::from_secs_f64(a.elapsed_ms(&b).unwrap() as f64 / 1e3)
    }

    fn randn(g: &Arc<Gpu>, r: &mut Rng, n: usize) -> GpuBuf<f32> {
        g.upload(&r.normal_vec(n, 1.0)).unwrap()
    }

    fn randn_bf16(g: &Arc<Gpu>, r: &mut Rng, n: usize) -> GpuBuf<bf16> {
        g.upload(&r.normal_vec(n, 1.0).into_iter().map(bf16::from_f32).collect::<Vec<_>>()).unwrap()
    }

    pub fn all(c: &mut Criterion) {
        let g = match cuda::gpu(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gpu_* benchmark groups skipped: {e}");
                return;
            }
        };
        let mut r = Rng::new(9);

        let mut group = c.benchmark_group("gpu_matmul");
        for &(m, n, kk, ta, tb) in
            &[(4096, 4096, 4096, false, false), (2240, 4096, 1024, false, false), (2240, 10000, 1024, false, true), (1024, 10000, 2240, true, false)]
        {
            let (a, b) = (randn_bf16(&g, &mut r, m * kk), randn_bf16(&g, &mut r, kk * n));
            let mut out = g.alloc::<f32>(m * n).unwrap();
            group.throughput(Throughput::Elements((2 * m * n * kk) as u64));
            group.bench_function(BenchmarkId::new("bf16", format!("{m}x{n}x{kk}{}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" })), |bch| {
                bch.iter_custom(|it| timed(&g, it, || k::gemm_bf16(m, n, kk, 1.0, &a, ta, &b, tb, 0.0, &mut out).unwrap()))
            });
        }
        group.finish();

        let mut group = c.benchmark_group("gpu_embedding");
        let (vocab, dim, n) = (1_000_000usize, 128usize, 262_144usize);
        let table = randn(&g, &mut r, vocab * dim);
        let ids_h: Vec<i32> = (0..n).map(|_| r.below(vocab) as i32).collect();
        let ids = g.upload(&ids_h).unwrap();
        let mut out = g.alloc::<f32>(n * dim).unwrap();
        group.throughput(Throughput::Bytes((2 * n * dim * 4) as u64));
        group.bench_function("gather", |bch| bch.iter_custom(|it| timed(&g, it, || k::gather(&table, vocab, dim, &ids, &mut out).unwrap())));
        let mut dtable = g.full(vocab * dim, 0.0).unwrap();
        let (order, starts) = k::sorted_segments(&ids_h);
        let (o, st) = (g.upload(&order).unwrap(), g.upload(&starts).unwrap());
        group.throughput(Throughput::Bytes((n * dim * 4 + 2 * (starts.len() - 1) * dim * 4) as u64));
        group.bench_function("scatter_add_atomic", |bch| {
            bch.iter_custom(|it| timed(&g, it, || k::scatter_add(&out, vocab, dim, &ids, None, &mut dtable, k::ScatterMode::Atomic).unwrap()))
        });
        group.bench_function("scatter_add_deterministic", |bch| {
            bch.iter_custom(|it| timed(&g, it, || k::scatter_add_planned(&out, vocab, dim, &ids, &o, &st, &mut dtable).unwrap()))
        });
        group.finish();

        let mut group = c.benchmark_group("gpu_lstm_cell");
        let (b, h) = (64usize, 1024usize);
        let mut gates = randn(&g, &mut r, b * 4 * h);
        let cp = randn(&g, &mut r, b * h);
        let (mut cc, mut hh) = (g.alloc::<f32>(b * h).unwrap(), g.alloc::<f32>(b * h).unwrap());
        group.throughput(Throughput::Bytes((b * h * 4 * 11) as u64));
        group.bench_function("forward", |bch| bch.iter_custom(|it| timed(&g, it, || k::lstm_cell_fwd(&mut gates, &cp, &mut cc, &mut hh, None, b, h).unwrap())));
        let dh = randn(&g, &mut r, b * h);
        let (mut dc, mut dg) = (randn(&g, &mut r, b * h), g.alloc::<f32>(b * 4 * h).unwrap());
        group.throughput(Throughput::Bytes((b * h * 4 * 13) as u64));
        group.bench_function("backward", |bch| {
            bch.iter_custom(|it| timed(&g, it, || k::lstm_cell_bwd(&gates, &cp, &cc, &dh, &mut dc, &mut dg, None, b, h).unwrap()))
        });
        group.finish();

        // The whole layer of the 2x1024 model over one window, as the trainer runs it on the GPU.
        let mut group = c.benchmark_group("gpu_lstm_layer");
        {
            use codistill::ops::lstm::{layer_backward, layer_forward};
            use codistill::tensor::Device;
            let (t, b, i, h) = (35usize, 64usize, 1024usize, 1024usize);
            let mut on =
                |n: usize, std: f32, shape: &[usize]| codistill::Tensor::from_f32(r.normal_vec(n, std), shape).unwrap().to_device(Device::Cuda(0)).unwrap();
            let x = on(t * b * i, 1.0, &[t * b, i]);
            let (h0, c0) = (on(b * h, 0.5, &[b, h]), on(b * h, 0.5, &[b, h]));
            let (w_ih, w_hh, bias) = (on(i * 4 * h, 0.03, &[i, 4 * h]), on(h * 4 * h, 0.03, &[h, 4 * h]), on(4 * h, 0.1, &[4 * h]));
            let dy = on(t * b * h, 1.0, &[t * b, h]);
            let fwd = 2 * t * b * (i + h) * 4 * h;
            group.throughput(Throughput::Elements(fwd as u64));
            group.bench_function(BenchmarkId::new("forward", format!("T{t}_B{b}_H{h}")), |bch| {
                bch.iter_custom(|it| {
                    timed(&g, it, || {
                        layer_forward(&codistill::Backend::default(), &x, &h0, &c0, &w_ih, &w_hh, &bias, t).unwrap();
                    })
                })
            });
            group.throughput(Throughput::Elements(3 * fwd as u64));
            group.bench_function(BenchmarkId::new("forward_backward", format!("T{t}_B{b}_H{h}")), |bch| {
                bch.iter_custom(|it| {
                    timed(&g, it, || {
                        let out = layer_forward(&codistill::Backend::default(), &x, &h0, &c0, &w_ih, &w_hh, &bias, t).unwrap();
                        layer_backward(&codistill::Backend::default(), &x, &h0, &w_ih, &w_hh, &out, &dy, None, None).unwrap();
                    })
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group("gpu_softmax_kl");
        for &(n, v, nt) in &[(4096usize, 32768usize, 1usize), (2240, 10000, 1), (4096, 32768, 3)] {
            let s = randn(&g, &mut r, n * v);
            let ts: Vec<GpuBuf<f32>> = (0..nt).map(|_| randn(&g, &mut r, n * v)).collect();
            let tr: Vec<&GpuBuf<f32>> = ts.iter().collect();
            let y = g.upload(&(0..n).map(|_| r.below(v) as i32).collect::<Vec<_>>()).unwrap();
            let mut grad = g.alloc::<f32>(n * v).unwrap();
            let p = DistillParams { temperature: 2.0, alpha: 0.5, ..Default::default() };
            group.throughput(Throughput::Bytes(((2 + nt) * n * v * 4) as u64));
            group.bench_function(BenchmarkId::new("fwd_bwd", format!("{n}x{v}_k{nt}")), |bch| {
                bch.iter_custom(|it| {
                    timed(&g, it, || {
                        let _ = k::softmax_kl(&s, &tr, Some(&y), n, v, p, &mut grad).unwrap();
                    })
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group("gpu_adam");
        let n = 64 << 20;
        let (mut w, gr) = (randn(&g, &mut r, n), randn(&g, &mut r, n));
        let (mut m, mut v) = (g.full(n, 0.0).unwrap(), g.full(n, 0.0).unwrap());
        group.throughput(Throughput::Bytes((7 * 4 * n) as u64));
        group.bench_function(BenchmarkId::new("update", n), |bch| {
            bch.iter_custom(|it| timed(&g, it, || k::adam(&mut w, &gr, &mut m, &mut v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, 1.0).unwrap()))
        });
        group.finish();
    }
}

criterion_group!(benches, matmul, lstm_step, embedding, lstm_cell, softmax_kl, adam, gpu::all);
criterion_main!(benches);
