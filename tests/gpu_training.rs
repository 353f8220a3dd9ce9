//! Training on the GPU against training on the CPU: a whole training step of the language model and
//! of the click model (gradients and updated weights), both trainers end to end, and the exchange's
//! copy stream. (Each op's own tests, one body per device, are in its folder: `tests/ops.rs`.) Random inputs from a fixed seed by default (printed; `CODISTILL_TEST_SEED=random`
//! for a fresh one), odd sizes, and the allocator's cache filled with NaN before each op so that an
//! output element an op fails to write shows.
//!
//! Without a GPU every test is reported as ignored (tests/common/harness.rs); with `REQUIRE_GPU=1`
//! a missing GPU fails instead. Each op runs with the backend context it is given (`Backend`: the
//! matmul precision, deterministic scatter), so nothing here sets a process-wide switch and the
//! tests run side by side.

#![allow(clippy::field_reassign_with_default)]

mod common;
use codistill::autograd::Graph;
use codistill::cuda::{self, Gpu, MatmulPrecision};
use codistill::nn::LstmState;
use codistill::ops::elementwise::{self as ew, Binary};
use codistill::optim::{Optimizer, OptimizerKind};
use codistill::tensor::{Device, Tensor};
use codistill::train::{criteo, lm, DeviceChoice};
use codistill::{Backend, DistillParams, ParamStore, Rng};
use std::sync::Arc;

/// The GPU and a seeded generator. The harness runs these tests only where a GPU is
/// found, so a test that gets here without one was asked for by hand (`--ignored`) and fails rather
/// than passing unrun.
fn setup(test: &str) -> Option<(Arc<Gpu>, (), Rng)> {
    let gpu = cuda::gpu(0).unwrap_or_else(|e| panic!("no usable GPU: {e}"));
    Some((gpu, (), Rng::new(common::harness::seed(test))))
}

/// The device under test.
fn target() -> Device {
    Device::Cuda(0)
}

/// The exact backend: fp32 products on the GPU (the CPU's are fp32 whatever it says).
fn f32() -> Backend {
    Backend { matmul: MatmulPrecision::F32, ..Backend::default() }
}

fn up(t: &Tensor) -> Tensor {
    t.to_device(target()).unwrap()
}

/// ||gpu - cpu|| / ||cpu||, with the GPU tensor on the GPU and every element finite.
fn rel(what: &str, gpu: &Tensor, cpu: &Tensor) -> f64 {
    assert_eq!(gpu.device(), target(), "{what}: the result left the GPU");
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shapes differ");
    let (a, b) = (gpu.to_vec_f32().unwrap(), cpu.to_vec_f32().unwrap());
    assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite output on the GPU (an element left unwritten?)");
    let num: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

fn check(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    let e = rel(what, gpu, cpu);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// The relative error of every parameter's gradient and, after `opt` steps, of every weight's change.
fn compare_stores(what: &str, gpu: &ParamStore, cpu: &ParamStore, start: &ParamStore, grad_tol: f64, step_tol: f64) {
    for (name, pc) in cpu.iter() {
        let pg = gpu.param(name).unwrap();
        if pc.grad.numel() > 0 {
            check(&format!("{what}: gradient of {name}"), &pg.grad, &pc.grad, grad_tol);
        }
        let w0 = start.get(name).unwrap();
        let dg = ew::binary(Binary::Sub, &pg.value, &up(w0)).unwrap();
        let dc = ew::binary(Binary::Sub, &pc.value, w0).unwrap();
        check(&format!("{what}: update of {name}"), &dg, &dc, step_tol);
    }
}

fn a_language_model_training_step_on_the_gpu_matches_the_cpu() {
    let Some((_g, _l, mut r)) = setup("lm step") else { return };
    let mut cfg = lm::LmConfig::default();
    (cfg.emb_dim, cfg.hidden, cfg.layers) = (24, 40, 2);
    let (vocab, batch, steps) = (301, 6, 7);
    let mut cpu = ParamStore::new();
    let model = lm::LmModel::new(&mut cpu, &cfg, vocab, &mut r).unwrap();
    let start = cpu.clone();
    let mut gpu = cpu.clone();
    gpu.to_device(target()).unwrap();
    let teacher = cpu.clone();
    let (mut oc, mut og) =
        (Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 1e-4 }), Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 1e-4 }));
    for step in 0..3u64 {
        let x = Tensor::from_i32((0..steps * batch).map(|_| r.below(vocab) as i32).collect(), &[steps * batch]).unwrap();
        let y = Tensor::from_i32((0..steps * batch).map(|_| r.below(vocab) as i32).collect(), &[steps * batch]).unwrap();
        let run = |s: &mut ParamStore, t: &ParamStore, o: &mut Optimizer, dev: Device| -> f64 {
            let (x, y) = (x.to_device(dev).unwrap(), y.to_device(dev).unwrap());
            let state = LstmState::zeros_on(cfg.layers, batch, cfg.hidden, dev).unwrap();
            let mut tg = Graph::no_grad().with_backend(f32());
            let (tl, _) = model.forward(&mut tg, t, &x, &state, steps, None).unwrap();
            let tlog = tg.value(tl).clone();
            let mut g = Graph::new().with_backend(f32());
            let (logits, _) = model.forward(&mut g, s, &x, &state, steps, Some((0.2, 77 + step))).unwrap();
            let (l, parts) = g.softmax_kl(logits, &[tlog], Some(&y), DistillParams { temperature: 1.5, alpha: 0.5, ..Default::default() }).unwrap();
            let grads = g.backward(l).unwrap();
            s.zero_grads().unwrap();
            g.accumulate_grads(&grads, s).unwrap();
            drop(g);
            o.step(s, 0.5, Some(5.0)).unwrap();
            parts.total
        };
        let mut tgpu = teacher.clone();
        tgpu.to_device(target()).unwrap();
        let lc = run(&mut cpu, &teacher, &mut oc, Device::Cpu);
        let lg = run(&mut gpu, &tgpu, &mut og, target());
        assert!((lg - lc).abs() <= 1e-5 * lc.abs(), "step {step}: loss {lg} on the GPU vs {lc}");
        compare_stores(&format!("lm step {step}"), &gpu, &cpu, &start, 1e-4, 1e-4);
    }
}

fn a_click_model_training_step_on_the_gpu_matches_the_cpu() {
    let Some((_g, _l, mut r)) = setup("ctr step") else { return };
    let mut cfg = criteo::CriteoConfig::default();
    (cfg.emb_dim, cfg.buckets) = (8, 1000);
    cfg.mlp = "33,17".into();
    let mut cpu = ParamStore::new();
    let model = criteo::CtrModel::new(&mut cpu, &cfg, &mut r).unwrap();
    let start = cpu.clone();
    let mut gpu = cpu.clone();
    gpu.to_device(target()).unwrap();
    let n = 257;
    let (mut oc, mut og) = (Optimizer::new(OptimizerKind::adagrad()), Optimizer::new(OptimizerKind::adagrad()));
    for step in 0..3 {
        // ids within each field's buckets, with repeats (a popular category)
        let ids: Vec<i32> = (0..n * 26).map(|i| ((i % 26) * cfg.buckets + if r.below(3) == 0 { 5 } else { r.below(cfg.buckets) }) as i32).collect();
        let ids = Tensor::from_i32(ids, &[n * 26]).unwrap();
        let dense = Tensor::randn(&[n, 26], 1.0, &mut r); // 13 values and their 13 missing flags
        let targets = Tensor::uniform(&[n], 0.0, 1.0, &mut r);
        let run = |s: &mut ParamStore, o: &mut Optimizer, dev: Device| -> f64 {
            let mut g = Graph::new().with_backend(f32());
            let l = model.forward(&mut g, s, &ids.to_device(dev).unwrap(), &dense.to_device(dev).unwrap()).unwrap();
            let loss = g.bce_with_logits(l, &targets.to_device(dev).unwrap()).unwrap();
            let lv = g.value(loss).item().unwrap() as f64;
            let grads = g.backward(loss).unwrap();
            s.zero_grads().unwrap();
            g.accumulate_grads(&grads, s).unwrap();
            drop(g);
            o.step(s, 0.05, Some(10.0)).unwrap();
            lv
        };
        let lc = run(&mut cpu, &mut oc, Device::Cpu);
        let lg = run(&mut gpu, &mut og, target());
        assert!((lg - lc).abs() <= 1e-5 * lc.abs(), "step {step}: loss {lg} on the GPU vs {lc}");
        compare_stores(&format!("ctr step {step}"), &gpu, &cpu, &start, 1e-4, 1e-4);
    }
    // after zero_grads the GPU gradients are zero again, sparse rows included
    gpu.zero_grads().unwrap();
    for (name, p) in gpu.iter() {
        assert!(p.grad.to_vec_f32().unwrap().iter().all(|&v| v == 0.0), "{name} not cleared");
    }
}

fn both_trainers_run_on_the_gpu_and_agree_with_the_cpu() {
    let Some((_g, _l, _r)) = setup("trainers") else { return };
    let d = common::Scratch::new("gput", "trainers");
    // language model: one model on the CPU and on the GPU (f32 products), then codistillation
    let data = d.join("data");
    codistill::data::synthetic::write_markov_corpus(&data, &codistill::data::synthetic::MarkovSource::new(30, 1, 3, 5), [12_000, 2_000, 2_000], 5).unwrap();
    let mut c = lm::LmConfig::default();
    c.data = Some(data);
    c.cache = d.join("cache");
    c.min_count = 1;
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt) = (8, 16, 2, 4, 10);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every) = (60, 30, 10, 30);
    c.matmul_f32 = true;
    let mut cc = c.clone();
    (cc.device, cc.out) = (DeviceChoice::Cpu, d.join("lm-cpu"));
    let mut cg = c.clone();
    (cg.device, cg.out) = (if target() == Device::Cpu { DeviceChoice::Cpu } else { DeviceChoice::Cuda }, d.join("lm-gpu"));
    let (a, b) = (lm::train(&cc).unwrap(), lm::train(&cg).unwrap());
    let (va, vb) = (a.best_valid.unwrap(), b.best_valid.unwrap());
    eprintln!("lm: validation loss cpu {va:.5} gpu {vb:.5}; tokens/s cpu {:.0} gpu {:.0}", a.tokens_per_s, b.tokens_per_s);
    assert!((va - vb).abs() < 0.02, "validation loss {vb} on the GPU vs {va} on the CPU");
    let mut co = c.clone();
    (co.device, co.out, co.models, co.burn_in, co.exchange_every) = (cg.device, d.join("lm-co"), 2, 20, 10);
    co.matmul_f32 = false;
    let s = lm::train(&co).unwrap();
    assert_eq!(s.per_model.len(), 2);
    assert!(s.ensemble_valid.unwrap().is_finite() && s.per_model.iter().all(|m| m.0.unwrap() < 30f64.ln()), "{:?}", s.per_model);
    assert!(d.join("lm-co/model-1/checkpoint.safetensors").exists());
    // offline distillation: the CPU run's checkpoint (a CPU-made file) teaches a narrower student
    // on each device, with a feature hint; the teacher is loaded onto the student's device
    let mut st = c.clone();
    (st.hidden, st.layers, st.burn_in, st.alpha, st.temperature, st.hint_weight) = (8, 1, 0, 0.7, 2.0, 0.5);
    st.teacher = codistill::config::Paths(vec![d.join("lm-cpu/best.safetensors")]);
    let (mut sc, mut sg) = (st.clone(), st.clone());
    (sc.device, sc.out, sg.device, sg.out) = (DeviceChoice::Cpu, d.join("st-cpu"), cg.device, d.join("st-gpu"));
    let (a, b) = (lm::train(&sc).unwrap(), lm::train(&sg).unwrap());
    let (va, vb) = (a.best_valid.unwrap(), b.best_valid.unwrap());
    eprintln!("lm student: validation loss cpu {va:.5} gpu {vb:.5}");
    assert!((va - vb).abs() < 0.02, "distilled student's validation loss {vb} on the GPU vs {va} on the CPU");
    // data-free: the sampler's per-token forward passes and draws, with the teacher on the GPU
    // (its logits differ from the CPU's in the last bits, so a draw may differ: a looser bound)
    (sc.data_free, sc.alpha, sc.out, sg.data_free, sg.alpha, sg.out) = (true, 1.0, d.join("df-cpu"), true, 1.0, d.join("df-gpu"));
    (sc.hint_weight, sg.hint_weight) = (0.0, 0.0);
    let (a, b) = (lm::train(&sc).unwrap(), lm::train(&sg).unwrap());
    let (va, vb) = (a.best_valid.unwrap(), b.best_valid.unwrap());
    eprintln!("lm data-free student: validation loss cpu {va:.5} gpu {vb:.5}");
    assert!((va - vb).abs() < 0.05, "data-free student's validation loss {vb} on the GPU vs {va} on the CPU");
    // click model: one model on each device
    let mut k = criteo::CriteoConfig::default();
    (k.cache, k.synthetic_scale, k.synthetic_rows, k.buckets) = (d.join("ccache"), 0.002, 60_000, 4096);
    k.matmul_f32 = true;
    let mut kc = k.clone();
    (kc.device, kc.out) = (DeviceChoice::Cpu, d.join("ctr-cpu"));
    let mut kg = k.clone();
    (kg.device, kg.out) = (cg.device, d.join("ctr-gpu"));
    let (a, b) = (criteo::train(&kc).unwrap(), criteo::train(&kg).unwrap());
    let (la, lb) = (a.valid[0].log_loss, b.valid[0].log_loss);
    eprintln!("criteo: validation log-loss cpu {la:.5} gpu {lb:.5}");
    assert!((la - lb).abs() < 0.002 * la, "log-loss {lb} on the GPU vs {la} on the CPU");
    // a narrower click model distilled from the CPU run's checkpoint, with a feature hint, on
    // each device
    for kk in [&mut kc, &mut kg] {
        (kk.emb_dim, kk.mlp, kk.burn_in, kk.alpha, kk.hint_weight) = (4, "32".into(), 0, 0.5, 1.0);
        kk.teacher = codistill::config::Paths(vec![d.join("ctr-cpu/checkpoint.safetensors")]);
        kk.out = kk.out.with_extension("student");
    }
    let (a, b) = (criteo::train(&kc).unwrap(), criteo::train(&kg).unwrap());
    let (la, lb) = (a.valid[0].log_loss, b.valid[0].log_loss);
    eprintln!("criteo student: validation log-loss cpu {la:.5} gpu {lb:.5}");
    assert!((la - lb).abs() < 0.002 * la, "distilled student's log-loss {lb} on the GPU vs {la} on the CPU");
}

/// The directory exchange with GPU weights: a publish copies them to page-locked host memory on
/// the copy stream (the writer thread waits, the trainer does not), and the peer's reader uploads
/// the snapshot on the copy stream, so the teacher it serves is already on the GPU. The file
/// holds the weights as of the publish even though the publisher updates them right after
/// (`settle` orders that update after the copy), and the served teacher equals them exactly.
fn directory_exchange_moves_gpu_weights_through_the_copy_stream() {
    use codistill::distill::exchange::{DirExchange, Exchange};
    let Some((_g, _guard, mut r)) = setup("directory_exchange_moves_gpu_weights_through_the_copy_stream") else { return };
    let dev = target();
    let mut own = ParamStore::new();
    own.insert("emb", Tensor::randn(&[1001, 33], 1.0, &mut r)).unwrap();
    own.insert("bias", Tensor::randn(&[7], 1.0, &mut r)).unwrap();
    own.to_device(dev).unwrap();
    let published: Vec<Vec<f32>> = ["bias", "emb"].iter().map(|n| own.get(n).unwrap().to_device(Device::Cpu).unwrap().f32s().unwrap().to_vec()).collect();
    let dir = std::env::temp_dir().join(format!("codistill-gpu-x-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let poll = std::time::Duration::from_millis(5);
    let mut a = DirExchange::new(&dir, 0, 2, &own, poll, "", true).unwrap();
    let mut b = DirExchange::new(&dir, 1, 2, &own, poll, "", true).unwrap();
    a.publish(0, 5, &own).unwrap();
    // The publisher's next update, as a trainer makes it: settle, then write the weights.
    a.settle(0).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::sgd());
    own.zero_grads().unwrap();
    own.accumulate_grad("emb", &up(&Tensor::full(&[1001, 33], 1.0))).unwrap();
    opt.step(&mut own, 0.5, None).unwrap();
    let t = std::time::Instant::now();
    let got = loop {
        if let Some(s) = b.latest(0) {
            break s;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "the peer's snapshot never arrived");
        std::thread::sleep(poll);
    };
    assert_eq!(got.step, 5);
    for (name, want) in ["bias", "emb"].iter().zip(&published) {
        let v = got.params.get(name).unwrap();
        assert_eq!(v.device(), dev, "{name}: the teacher is not on the training device");
        let v = v.to_device(Device::Cpu).unwrap();
        assert!(v.f32s().unwrap().iter().zip(want).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}: the served teacher differs from the published weights");
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every test of this binary, run by the GPU harness (tests/common/harness.rs).
fn main() {
    common::harness::run(
        "gpu_training",
        &[
            ("a_language_model_training_step_on_the_gpu_matches_the_cpu", a_language_model_training_step_on_the_gpu_matches_the_cpu),
            ("a_click_model_training_step_on_the_gpu_matches_the_cpu", a_click_model_training_step_on_the_gpu_matches_the_cpu),
            ("both_trainers_run_on_the_gpu_and_agree_with_the_cpu", both_trainers_run_on_the_gpu_and_agree_with_the_cpu),
            ("directory_exchange_moves_gpu_weights_through_the_copy_stream", directory_exchange_moves_gpu_weights_through_the_copy_stream),
        ],
    )
}
