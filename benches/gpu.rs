//! GPU kernel benchmark: each kernel's median time over many launches (CUDA events), with the
//! achieved TFLOP/s or GB/s. Prints a table and, with `--json PATH`, writes one JSON object per
//! line for `scripts/gpu_compare.py`, which times cuBLAS and PyTorch on the same shapes in the same
//! session and prints the ratios. Without a GPU it says why and exits 0 (so `cargo bench` works on
//! any machine); `REQUIRE_GPU=1` makes that an error.
//!
//! Bytes are the fewest the op must move (each input read once, each output written once); FLOPs
//! are 2mnk for a matmul.

use codistill::cuda::{self, Gpu, GpuBuf, MatmulKernel};

/// The launchers this benchmark times, from their op folders.
mod k {
    pub use codistill::ops::embedding::cuda::*;
    pub use codistill::ops::lstm::cuda::{lstm_cell_bwd, lstm_cell_fwd};
    pub use codistill::ops::matmul::cuda::*;
    pub use codistill::ops::optim::cuda::*;
    pub use codistill::ops::softmax_kl::cuda::*;
}
use codistill::ops::softmax_kl::Divergence;
use codistill::{DistillParams, Rng};
use cudarc::driver::sys;
use half::bf16;
use std::io::Write;
use std::sync::Arc;

struct Row {
    name: String,
    shape: String,
    ms: f64,
    flops: f64,
    bytes: f64,
}

fn time_ms(g: &Arc<Gpu>, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    g.sync().unwrap();
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let a = g.stream().record_event(flags).unwrap();
        f();
        let b = g.stream().record_event(flags).unwrap();
        times.push(a.elapsed_ms(&b).unwrap() as f64);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[iters / 2]
}

fn randn(g: &Arc<Gpu>, r: &mut Rng, n: usize, std: f32) -> GpuBuf<f32> {
    g.upload(&r.normal_vec(n, std)).unwrap()
}

fn randn_bf16(g: &Arc<Gpu>, r: &mut Rng, n: usize) -> GpuBuf<bf16> {
    let v: Vec<bf16> = r.normal_vec(n, 1.0).into_iter().map(bf16::from_f32).collect();
    g.upload(&v).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().position(|a| a == "--json").map(|i| args[i + 1].clone());
    let g = match cuda::gpu(0) {
        Ok(g) => g,
        Err(e) => {
            if std::env::var("REQUIRE_GPU").as_deref() == Ok("1") {
                eprintln!("REQUIRE_GPU=1 but no usable GPU: {e}");
                std::process::exit(1);
            }
            eprintln!("GPU benchmark skipped: {e}");
            return;
        }
    };
    let mut r = Rng::new(7);
    let mut rows: Vec<Row> = Vec::new();
    // CODISTILL_BENCH_ONLY=gemm (or softmax, embedding, lstm, adam) runs one group, e.g. under ncu.
    let only = std::env::var("CODISTILL_BENCH_ONLY").ok();
    let want = |group: &str| only.as_deref().is_none_or(|o| group.contains(o));
    println!("device: {}", g.name().unwrap_or_default());

    // Copy bandwidth: the memory ceiling (bytes read + written).
    if want("copy") {
        let n = 256 << 20; // 1 GiB of f32
        let a = g.full(n, 1.0).unwrap();
        let b = g.alloc::<f32>(n).unwrap();
        let ms = time_ms(&g, 20, || unsafe {
            cudarc::driver::result::memcpy_dtod_async(b.ptr(), a.ptr(), n * 4, g.stream().cu_stream()).unwrap();
        });
        rows.push(Row { name: "copy d2d".into(), shape: "1 GiB".into(), ms, flops: 0.0, bytes: 2.0 * n as f64 * 4.0 });
    }

    // Matmul: 4096^3 and the trainers' shapes (LSTM LM 2x1024, batch 64, 35 steps, vocab 10k;
    // Criteo MLP), bf16 operands on the tensor cores, and the fp32 path for reference.
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("square", 4096, 4096, 4096, false, false),
        ("square", 4096, 4096, 4096, false, true),
        ("square", 8192, 8192, 8192, false, false),
        ("lstm x@W_ih", 2240, 4096, 1024, false, false),
        ("lstm h@W_hh step", 64, 4096, 1024, false, false),
        ("lstm dh=dg@W_hh^T step", 64, 1024, 4096, false, true),
        ("lstm logits h@W_out^T", 2240, 10000, 1024, false, true),
        ("lstm dW = h^T@dlogits", 1024, 10000, 2240, true, false),
        ("criteo mlp", 8192, 512, 432, false, false),
    ];
    // Each shape on every tensor-core kernel where the GPU has wgmma (the TMA kernel reads operands
    // whose contiguous dimension is not k as they lie, and is timed once more with them transposed
    // first, as before it could). `auto`, the trainers' default, is wgmma-tma for the large
    // products and mma.sync (split-K) for the LSTM's 64-row step products. The cp.async wgmma
    // kernel that came first is timed by its own harness in the kernel lab (dev/README.md).
    // CODISTILL_BENCH_MATMUL=mma,wgmma-tma (the default where the GPU has wgmma) picks them,
    // wgmma-tma-persistent (issue 28, not yet run on a GPU) only when listed; scripts/gpu_remote.sh
    // passes the ones that passed its gate.
    let listed = std::env::var("CODISTILL_BENCH_MATMUL").unwrap_or_else(|_| "mma,wgmma-tma".into());
    let kernels: Vec<(MatmulKernel, &str)> = [
        (MatmulKernel::MmaSync, "mma.sync", "mma"),
        (MatmulKernel::WgmmaTma, "wgmma-tma", "wgmma-tma"),
        (MatmulKernel::WgmmaTmaPersistent, "wgmma-tma-persistent", "wgmma-tma-persistent"),
    ]
    .into_iter()
    .filter(|(kernel, _, key)| listed.split(',').any(|l| l == *key) && (*kernel == MatmulKernel::MmaSync || g.has_wgmma()))
    .map(|(kernel, name, _)| (kernel, name))
    .collect();
    // CODISTILL_SPLIT_K=0 (set by gpu_remote.sh when split-K fails its test) is kept.
    let env = cuda::Gemm::from_env().unwrap();
    let split_default = env.split_k;
    for &(what, m, n, kk, ta, tb) in shapes.iter().filter(|_| want("gemm")) {
        let a = randn_bf16(&g, &mut r, m * kk);
        let b = randn_bf16(&g, &mut r, kk * n);
        let mut c = g.alloc::<f32>(m * n).unwrap();
        let iters = if m * n * kk > 1 << 36 { 10 } else { 50 };
        let mut first: Option<Vec<f32>> = None;
        // mma.sync splits k where its output tiles alone would leave the device idle; time those
        // shapes without the split as well.
        let mn_default = env.mn_major;
        let mut runs: Vec<(MatmulKernel, String, bool, bool)> =
            kernels.iter().map(|&(kernel, kname)| (kernel, kname.to_string(), split_default, mn_default)).collect();
        if split_default && m * n <= 128 * 128 * 66 && kk >= 512 {
            runs.insert(1, (MatmulKernel::MmaSync, "mma.sync no-split-k".to_string(), false, mn_default));
        }
        if mn_default && (ta || !tb) && kernels.iter().any(|&(kernel, _)| kernel == MatmulKernel::WgmmaTma) {
            runs.push((MatmulKernel::WgmmaTma, "wgmma-tma via transposes".to_string(), split_default, false));
        }
        for (kernel, kname, split, mn) in runs {
            let choice = cuda::Gemm { kernel, split_k: split, mn_major: mn };
            let ms = time_ms(&g, iters, || k::gemm_bf16_with(choice, m, n, kk, 1.0, &a, ta, &b, tb, 0.0, &mut c).unwrap());
            // The kernels must agree on what was timed (the tests check each against f64).
            let got = c.download().unwrap();
            let mut name = format!("gemm bf16 {what} {kname}");
            if let Some(f) = &first {
                let num: f64 = got.iter().zip(f).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let den: f64 = f.iter().map(|y| (*y as f64).powi(2)).sum();
                let rel = (num / den.max(1e-300)).sqrt();
                if rel.is_nan() || rel >= 1e-3 {
                    name.push_str(" MISMATCH");
                }
            } else {
                first = Some(got);
            }
            let t = format!("{}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" });
            rows.push(Row { name, shape: format!("{m}x{n}x{kk} {t}"), ms, flops: 2.0 * (m * n * kk) as f64, bytes: 0.0 });
        }
    }
    if want("gemm") {
        let (m, n, kk) = (4096, 4096, 4096);
        let a = randn(&g, &mut r, m * kk, 1.0);
        let b = randn(&g, &mut r, kk * n, 1.0);
        let mut c = g.alloc::<f32>(m * n).unwrap();
        let ms = time_ms(&g, 5, || k::gemm_f32(m, n, kk, 1.0, &a, false, &b, false, 0.0, &mut c).unwrap());
        rows.push(Row { name: "gemm f32 (CUDA cores)".into(), shape: format!("{m}x{n}x{kk} NN"), ms, flops: 2.0 * (m * n * kk) as f64, bytes: 0.0 });
    }

    // Fused softmax-KL, forward and backward in one kernel.
    // T = 2 (the bar, as first measured) and T = 1, the trainers' default, where the
    // kernel keeps one state and one exp2 per element fewer.
    for &(n, v, nt, t) in
        [(4096usize, 32768usize, 1usize, 2.0f32), (2240, 10000, 1, 2.0), (4096, 32768, 3, 2.0), (4096, 32768, 1, 1.0)].iter().filter(|_| want("softmax"))
    {
        let s = randn(&g, &mut r, n * v, 3.0);
        let ts: Vec<GpuBuf<f32>> = (0..nt).map(|_| randn(&g, &mut r, n * v, 3.0)).collect();
        let tr: Vec<&GpuBuf<f32>> = ts.iter().collect();
        let y: Vec<i32> = (0..n).map(|_| r.below(v) as i32).collect();
        let y = g.upload(&y).unwrap();
        let mut grad = g.alloc::<f32>(n * v).unwrap();
        let p = DistillParams { temperature: t, alpha: 0.5, ..Default::default() };
        let ms = time_ms(&g, 20, || {
            k::softmax_kl(&s, &tr, Some(&y), n, v, p, &mut grad).unwrap();
        });
        let bytes = ((2 + nt) * n * v * 4) as f64;
        let name = if t == 2.0 { format!("softmax-KL fwd+bwd, {nt} teacher(s)") } else { format!("softmax-KL fwd+bwd T={t}, {nt} teacher(s)") };
        rows.push(Row { name, shape: format!("{n}x{v}"), ms, flops: 0.0, bytes });
    }
    // The other divergences (one generic kernel, softmax_div) beside forward KL on the same kernel's
    // forward-KL path, at the LM trainer's shape with three teachers; the GPU's unfused compositions
    // are PyTorch's, timed by scripts/gpu_compare.py (not yet written for these).
    for div in [Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse].into_iter().filter(|_| want("softmax")) {
        let (n, v, nt) = (2240usize, 10000usize, 3usize);
        let s = randn(&g, &mut r, n * v, 3.0);
        let ts: Vec<GpuBuf<f32>> = (0..nt).map(|_| randn(&g, &mut r, n * v, 3.0)).collect();
        let tr: Vec<&GpuBuf<f32>> = ts.iter().collect();
        let y = g.upload(&(0..n).map(|_| r.below(v) as i32).collect::<Vec<_>>()).unwrap();
        let mut grad = g.alloc::<f32>(n * v).unwrap();
        let p = DistillParams { temperature: 2.0, alpha: 0.5, divergence: div };
        let ms = time_ms(&g, 20, || {
            k::softmax_kl(&s, &tr, Some(&y), n, v, p, &mut grad).unwrap();
        });
        rows.push(Row {
            name: format!("distill loss {div} fwd+bwd, {nt} teachers"),
            shape: format!("{n}x{v}"),
            ms,
            flops: 0.0,
            bytes: ((2 + nt) * n * v * 4) as f64,
        });
    }

    // Embedding.
    if want("embedding") {
        let (vocab, dim, n) = (1_000_000usize, 128usize, 262_144usize);
        let table = randn(&g, &mut r, vocab * dim, 1.0);
        let ids_h: Vec<i32> = (0..n).map(|_| r.below(vocab) as i32).collect();
        let ids = g.upload(&ids_h).unwrap();
        let mut out = g.alloc::<f32>(n * dim).unwrap();
        let ms = time_ms(&g, 50, || k::gather(&table, vocab, dim, &ids, &mut out).unwrap());
        rows.push(Row { name: "embedding gather".into(), shape: format!("{n} ids x {dim}, V={vocab}"), ms, flops: 0.0, bytes: 2.0 * (n * dim * 4) as f64 });
        let dout = randn(&g, &mut r, n * dim, 1.0);
        let mut dtable = g.full(vocab * dim, 0.0).unwrap();
        let (order, starts) = k::sorted_segments(&ids_h);
        let unique = starts.len() - 1;
        let (o, st) = (g.upload(&order).unwrap(), g.upload(&starts).unwrap());
        // bytes: dout read once, each touched table row read and written once
        let bytes = (n * dim * 4 + 2 * unique * dim * 4) as f64;
        let ms = time_ms(&g, 50, || k::scatter_add(&dout, vocab, dim, &ids, None, &mut dtable, k::ScatterMode::Atomic).unwrap());
        rows.push(Row { name: "embedding backward, atomic".into(), shape: format!("{n} ids x {dim}, V={vocab}"), ms, flops: 0.0, bytes });
        let ms = time_ms(&g, 50, || k::scatter_add_planned(&dout, vocab, dim, &ids, &o, &st, &mut dtable).unwrap());
        rows.push(Row { name: "embedding backward, deterministic".into(), shape: format!("{n} ids x {dim}, V={vocab}"), ms, flops: 0.0, bytes });
        let t0 = std::time::Instant::now();
        let _ = k::sorted_segments(&ids_h);
        println!("deterministic plan (host sort of {n} ids): {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    }

    // LSTM cell, one step of the 2x1024 batch-64 model.
    if want("lstm") {
        let (b, h) = (64usize, 1024usize);
        let mut gates = randn(&g, &mut r, b * 4 * h, 1.0);
        let cp = randn(&g, &mut r, b * h, 1.0);
        let mut c = g.alloc::<f32>(b * h).unwrap();
        let mut hh = g.alloc::<f32>(b * h).unwrap();
        let ms = time_ms(&g, 200, || k::lstm_cell_fwd(&mut gates, &cp, &mut c, &mut hh, None, b, h).unwrap());
        rows.push(Row { name: "lstm cell fwd".into(), shape: format!("B{b} H{h}"), ms, flops: 0.0, bytes: (b * h * 4 * (4 + 4 + 3)) as f64 });
        let dh = randn(&g, &mut r, b * h, 1.0);
        let mut dc = randn(&g, &mut r, b * h, 1.0);
        let mut dg = g.alloc::<f32>(b * 4 * h).unwrap();
        let ms = time_ms(&g, 200, || k::lstm_cell_bwd(&gates, &cp, &c, &dh, &mut dc, &mut dg, None, b, h).unwrap());
        rows.push(Row { name: "lstm cell bwd".into(), shape: format!("B{b} H{h}"), ms, flops: 0.0, bytes: (b * h * 4 * (4 + 4 + 5)) as f64 });
    }

    // The whole LSTM layer of the 2x1024 language model (one window: 35 steps of batch 64, input
    // 1024), forward and forward+backward through time, against cuDNN in scripts/gpu_compare.py.
    // FLOPs: the input and recurrent products, 2*T*B*(I+H)*4H forward and twice that backward.
    if want("lstm") {
        use codistill::ops::lstm::{layer_backward, layer_forward};
        use codistill::tensor::Device;
        let (t, b, i, h) = (35usize, 64usize, 1024usize, 1024usize);
        let on = |v: Vec<f32>, shape: &[usize]| codistill::Tensor::from_f32(v, shape).unwrap().to_device(Device::Cuda(0)).unwrap();
        let x = on(r.normal_vec(t * b * i, 1.0), &[t * b, i]);
        let h0 = on(r.normal_vec(b * h, 0.5), &[b, h]);
        let c0 = on(r.normal_vec(b * h, 0.5), &[b, h]);
        let w_ih = on(r.normal_vec(i * 4 * h, 0.03), &[i, 4 * h]);
        let w_hh = on(r.normal_vec(h * 4 * h, 0.03), &[h, 4 * h]);
        let bias = on(r.normal_vec(4 * h, 0.1), &[4 * h]);
        let dy = on(r.normal_vec(t * b * h, 1.0), &[t * b, h]);
        let fwd_flops = 2.0 * (t * b * (i + h) * 4 * h) as f64;
        let shape = format!("T{t} B{b} I{i} H{h}");
        // The step layer (the default), then the persistent one (issue 28; CODISTILL_LSTM=persistent)
        // where the plan fits this GPU, on the same inputs (tests/gpu.rs checks it against both),
        // unless CODISTILL_TEST_SKIP_KERNELS names lstm-persistent (scripts/gpu_remote.sh does until
        // its gate has passed: a trap would end this process's CUDA context).
        let mut layers = vec![("", codistill::Backend::default())];
        let skip = std::env::var("CODISTILL_TEST_SKIP_KERNELS").unwrap_or_default().split(',').any(|s| s.trim() == "lstm-persistent");
        match codistill::ops::lstm::persistent::plan(&g, b, h) {
            _ if skip => eprintln!("persistent lstm: not timed (CODISTILL_TEST_SKIP_KERNELS names lstm-persistent)"),
            Ok(p) => {
                eprintln!("persistent lstm at {shape}: {p:?}");
                layers.push((" persistent", codistill::Backend { lstm: codistill::LstmKernel::Persistent, ..codistill::Backend::default() }));
            }
            Err(why) => eprintln!("persistent lstm at {shape}: not timed, no plan ({why})"),
        }
        for (tag, be) in layers {
            let ms = time_ms(&g, 20, || {
                layer_forward(&be, &x, &h0, &c0, &w_ih, &w_hh, &bias, t).unwrap();
            });
            rows.push(Row { name: format!("lstm layer fwd{tag}"), shape: shape.clone(), ms, flops: fwd_flops, bytes: 0.0 });
            let ms = time_ms(&g, 20, || {
                let out = layer_forward(&be, &x, &h0, &c0, &w_ih, &w_hh, &bias, t).unwrap();
                layer_backward(&be, &x, &h0, &w_ih, &w_hh, &out, &dy, None, None).unwrap();
            });
            rows.push(Row { name: format!("lstm layer fwd+bwd{tag}"), shape: shape.clone(), ms, flops: 3.0 * fwd_flops, bytes: 0.0 });
        }
    }

    // Adam over 64M parameters: read w, g, m, v; write w, m, v.
    if want("adam") {
        let n = 64 << 20;
        let mut w = randn(&g, &mut r, n, 1.0);
        let gr = randn(&g, &mut r, n, 1.0);
        let mut m = g.full(n, 0.0).unwrap();
        let mut v = g.full(n, 0.0).unwrap();
        let mut step = 0u64;
        let ms = time_ms(&g, 20, || {
            step += 1;
            k::adam(&mut w, &gr, &mut m, &mut v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, step, 1.0).unwrap()
        });
        rows.push(Row { name: "adam update".into(), shape: format!("{n} params"), ms, flops: 0.0, bytes: (n * 4 * 7) as f64 });
    }

    let copy_gbs = rows.iter().find(|r| r.name == "copy d2d").map_or(f64::NAN, |r| r.bytes / r.ms / 1e6);
    println!("\n{:<40} {:<28} {:>10} {:>10} {:>10} {:>8}", "kernel", "shape", "ms", "TFLOP/s", "GB/s", "of copy");
    for row in &rows {
        let tf = if row.flops > 0.0 { format!("{:.1}", row.flops / row.ms / 1e9) } else { "".into() };
        let (gb, frac) = if row.bytes > 0.0 {
            let gbs = row.bytes / row.ms / 1e6;
            (format!("{gbs:.0}"), format!("{:.0}%", 100.0 * gbs / copy_gbs))
        } else {
            (String::new(), String::new())
        };
        println!("{:<40} {:<28} {:>10.4} {:>10} {:>10} {:>8}", row.name, row.shape, row.ms, tf, gb, frac);
    }
    if let Some(path) = json {
        let mut f = std::fs::File::create(&path).unwrap();
        for row in &rows {
            writeln!(f, "{{\"name\":\"{}\",\"shape\":\"{}\",\"ms\":{},\"flops\":{},\"bytes\":{}}}", row.name, row.shape, row.ms, row.flops, row.bytes).unwrap();
        }
    }
    println!("allocator: {:?}", g.stats());
}
