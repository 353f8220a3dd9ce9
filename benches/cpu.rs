//! CPU benchmarks of the reference backend. Throughput is declared in FLOPs, so criterion's
//! "elem/s" column reads as FLOP/s (Gelem/s = GFLOP/s).
//!
//! - matmul: square sizes and the LM trainer's shapes (batch*steps rows against 4H gate columns).
//! - lstm step: one layer, forward and backward through time over a window; FLOPs counted as the
//!   matmuls' 2mnk (the pointwise cell work is a few percent at these sizes and is left out).

use codistill::ops::lstm::{layer_backward, layer_forward};
use codistill::ops::matmul::gemm_cpu;
use codistill::{Rng, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_matmul");
    let mut rng = Rng::new(0);
    // (m, n, k): square, then LSTM input projection (T*B x 4H x In) and the recurrent step (B x 4H x H)
    for &(m, n, k) in &[(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (1280, 2600, 650), (64, 2600, 650)] {
        let a = rng.normal_vec(m * k, 1.0);
        let b = rng.normal_vec(k * n, 1.0);
        let mut out = vec![0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(format!("{m}x{n}x{k}")), &(), |bch, _| {
            bch.iter(|| gemm_cpu(m, n, k, 1.0, &a, false, &b, false, 0.0, &mut out))
        });
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
            bch.iter(|| layer_forward(&x, &h0, &h0, &w_ih, &w_hh, &b, steps).unwrap())
        });
        let out = layer_forward(&x, &h0, &h0, &w_ih, &w_hh, &b, steps).unwrap();
        group.throughput(Throughput::Elements(bwd as u64));
        group.bench_with_input(BenchmarkId::new("backward", format!("T{steps}_B{batch}_H{hidden}")), &(), |bch, _| {
            bch.iter(|| layer_backward(&x, &h0, &w_ih, &w_hh, &out, &dy, None, None).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, matmul, lstm_step);
criterion_main!(benches);
