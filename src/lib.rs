//! codistill: a training engine for knowledge distillation and online codistillation
//! (Anil et al., ICLR 2018).
//!
//! Layers, bottom up: `ops` (one file per op family: contract, CPU twin, device dispatch),
//! `tensor`, `autograd` (a tape over coarse ops), `nn` and `optim`, `data`. See `README.md`.

pub mod autograd;
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
pub mod params;
mod rng;
pub mod tensor;
pub mod train;

pub use autograd::{Grads, Graph, Var};
pub use error::{Error, Result};
pub use ops::softmax_kl::{DistillLoss, DistillParams};
pub use params::ParamStore;
pub use rng::{hash_uniform, Rng};
pub use tensor::{DType, Device, Tensor};
