//! codistill: a training engine for knowledge distillation and online codistillation
//! (Anil et al., ICLR 2018): several models train on disjoint shards, and after a burn-in each
//! also learns to match the average prediction of the others' stale checkpoints.
//!
//! Two ways in:
//! - **The trainers as library calls**: [`train::lm::train`] (LSTM language models) and
//!   [`train::criteo::train`] (click-through models on Criteo-format logs) take the same options
//!   as the command line, as a config struct whose `Default` is the CLI's defaults. `models: 2`
//!   (or more) codistills in this process; `world`, `rank` and `exchange_dir` run one model per
//!   process through a shared directory. `teacher` (a [`config::Paths`] of trained checkpoints)
//!   distills from fixed teachers instead or as well, `hint_weight` adds a feature hint from the
//!   first teacher's hidden states ([`train::hint_loss`]), and `data_free` distills without the
//!   training data: a language model on text sampled from its teachers ([`train::sample`]), a
//!   click model on rows synthesised by inverting its teacher (FastDFKD and its baselines,
//!   [`tasks::ctr::dfkd`]).
//! - **The pieces**: [`Tensor`] (CPU, or CUDA where a GPU is found), [`Graph`] (a tape autograd
//!   over coarse ops, including the fused softmax-KL distillation loss), [`nn`] modules over a
//!   [`ParamStore`], [`optim`], and [`distill::exchange`] for checkpoint exchange between models.
//!
//! Codistilling two small click models on a synthetic log (written, with its cache, under `out`
//! and `cache`):
//!
//! ```
//! use codistill::train::{criteo, DeviceChoice};
//!
//! let dir = std::env::temp_dir().join(format!("codistill-doc-{}", std::process::id()));
//! let mut cfg = criteo::CriteoConfig::default();
//! (cfg.out, cfg.cache, cfg.device) = (dir.join("run"), dir.join("cache"), DeviceChoice::Cpu);
//! (cfg.synthetic_rows, cfg.buckets, cfg.batch) = (20_000, 1024, 256);
//! (cfg.models, cfg.burn_in, cfg.exchange_every) = (2, 20, 10);
//! let s = criteo::train(&cfg)?;
//! assert_eq!(s.valid.len(), 2); // one validation per model
//! println!("log-loss {:.4} / {:.4}, churn {:.4}", s.valid[0].log_loss, s.valid[1].log_loss, s.churn.unwrap());
//! std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), codistill::Error>(())
//! ```
//!
//! A training step written with the pieces (the `quickstart` example runs it in a loop):
//!
//! ```
//! use codistill::nn::Mlp;
//! use codistill::optim::{Optimizer, OptimizerKind};
//! use codistill::{Graph, ParamStore, Rng, Tensor};
//!
//! let mut rng = Rng::new(0);
//! let mut params = ParamStore::new();
//! let mlp = Mlp::new(&mut params, "mlp", &[4, 16, 1], &mut rng)?;
//! let mut opt = Optimizer::new(OptimizerKind::adam());
//! let (x, y) = (Tensor::randn(&[32, 4], 1.0, &mut rng), Tensor::full(&[32], 1.0));
//! let mut g = Graph::new();
//! let xv = g.constant(x);
//! let logits = mlp.forward(&mut g, &params, xv)?;
//! let logits = g.reshape(logits, &[32])?;
//! let loss = g.bce_with_logits(logits, &y)?;
//! params.zero_grads()?;
//! let grads = g.backward(loss)?;
//! g.accumulate_grads(&grads, &mut params)?;
//! drop(g); // the tape shares the weights' storage: drop it so the update is in place
//! opt.step(&mut params, 1e-2, Some(5.0))?;
//! # Ok::<(), codistill::Error>(())
//! ```
//!
//! Layers, bottom up: `ops` (one file per op family: contract, CPU twin, device dispatch),
//! `tensor`, `autograd`, `nn` and `optim`, `data`, `distill`, `train`. See `README.md`.

pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod distill;
mod error;
pub mod hash;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod par;
pub mod params;
mod progress;
mod rng;
pub mod tasks;
pub mod tensor;
#[cfg(test)]
mod testdir;
pub mod train;

pub use autograd::{Grads, Graph, Var};
pub use backend::{Backend, LstmKernel};
/// The command-line parser the config tables generate flags for (used by `config_table!`).
#[doc(hidden)]
pub use clap as __clap;
pub use error::{Error, Result};
pub use ops::softmax_kl::{DistillLoss, DistillParams};
pub use params::ParamStore;
pub use rng::{hash_uniform, Rng};
pub use tensor::{DType, Device, Tensor};

/// Tunes glibc's allocator for training loops: buffers freed at the end of a step are kept for the
/// next instead of being unmapped (glibc serves blocks over 128 KiB-32 MiB with `mmap` and returns
/// them on free, so every step's logits and gradients were fresh pages to fault in and zero:
/// a third of a Brown language-model step's CPU time was the kernel's). Call once at the start of
/// a process, before threads start; the `codistill` binary does. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
