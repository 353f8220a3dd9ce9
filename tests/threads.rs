//! The CPU thread count (`--threads`, `Backend::threads`) changes speed, never results:
//! products are split over output blocks and the loss over rows, each summed in a fixed order.
//! A language model big enough that every threaded path splits (the output layer's products past
//! the GEMM's serial limit, the packed recurrent products, the softmax-KL over many rows) trains
//! to bitwise the same weights on one thread and on two.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::checkpoint::Checkpoint;
use codistill::train::lm;

#[test]
fn lm_training_is_bitwise_the_same_on_one_thread_and_on_two() {
    let d = common::Scratch::new("threads", "lm");
    let c = common::split_lm_config(&d, 3);
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let mut t = c.clone();
        t.threads = threads;
        t.out = d.join(format!("t{threads}"));
        let s = lm::train(&t).unwrap();
        assert_eq!(t.run_options().backend().unwrap().cpu_threads(), threads, "--threads reaches the run's backend");
        runs.push((s.best_valid, Checkpoint::load(&t.out.join("checkpoint.safetensors")).unwrap()));
    }
    let ((va, a), (vb, b)) = (&runs[0], &runs[1]);
    assert!(a.tensors.len() > 3);
    for (name, t) in &a.tensors {
        assert_eq!(t, &b.tensors[name], "tensor {name} differs between one and two threads");
    }
    assert_eq!(va.map(f64::to_bits), vb.map(f64::to_bits), "validation losses differ");
}
