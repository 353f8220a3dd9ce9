//! The click model's options: its own keys and the shared ones.

use crate::data::criteo::OnBadLine;
use crate::Result;
use std::path::PathBuf;

crate::config_table! {
    /// Options of `codistill criteo train`: the click model's own keys, and those every task
    /// shares ([`RunOptions`](crate::train::RunOptions)). Every key can be set in a TOML file
    /// (`--config`) and overridden on the command line.
    pub struct CriteoConfig {
        /// Training file in the Criteo TSV format, plain or gzip (none: the built-in synthetic log)
        train: Option<PathBuf> = None,
        /// Validation file (none: hold out the last valid_fraction of the training rows)
        valid: Option<PathBuf> = None,
        /// Without a validation file, the fraction of training rows held out (the last ones)
        valid_fraction: f32 = 0.1,
        /// Bad lines: stop (error naming file, line and column) or skip (counted and reported)
        on_bad_line: OnBadLine = OnBadLine::Stop,
        /// Hash buckets per categorical field
        buckets: usize = 65536,
        /// Embedding width per field
        emb_dim: usize = 8,
        /// Hidden layer widths of the MLP, comma-separated
        mlp: String = "128,64".to_string(),
        /// Examples per batch
        batch: usize = 512,
        /// Passes over the training rows (shuffled each epoch)
        epochs: usize = 1,
        /// Training steps, counting those before a resume (0: epochs passes over the training rows; a data-free run takes as many, its batches drawn from the bank)
        steps: u64 = 0,
        /// Data-free distillation from the one --teacher (its checkpoint must record feature statistics, as every click checkpoint since this option does): fast (FastDFKD: a meta-learned generator adapted dfkd_steps steps per batch), sequential (each batch from the last batch's generator), generator (one generator trained on, fresh latents each step: DAFL/DFAD-style), inversion (each batch's rows optimised from noise, no generator: DeepInversion-style), or off; the student trains on a bank of synthesised rows, validation on the validation rows
        data_free: super::dfkd::DataFree = super::dfkd::DataFree::Off,
        /// Data-free: adaptation steps per synthesised batch (k)
        dfkd_steps: usize = 5,
        /// Data-free: rows per synthesised batch
        dfkd_rows: usize = 512,
        /// Data-free: student steps per synthesised batch
        dfkd_every: u64 = 10,
        /// Data-free: the memory bank's size in rows (the oldest replaced first)
        dfkd_bank: usize = 200000,
        /// Data-free: Adam's learning rate for the generator (inversion: for the rows)
        dfkd_lr: f32 = 0.005,
        /// Data-free: Adam's learning rate for each batch's latents
        dfkd_lr_z: f32 = 0.05,
        /// Data-free: the meta-generator's learning rate (fast; Reptile through Adam)
        dfkd_meta_lr: f32 = 0.025,
        /// Data-free: weight of the recorded-moments term (dense inputs and hidden layers)
        dfkd_bn: f32 = 1.0,
        /// Data-free: weight of the class term (the teacher toward drawn labels)
        dfkd_oh: f32 = 0.5,
        /// Data-free: weight of the adversarial term (the student's disagreement with the teacher, maximised)
        dfkd_adv: f32 = 0.5,
        /// Data-free: weight of the covariance term (each hidden layer's batch covariance against the teacher's recorded one: joint statistics beside the per-unit moments)
        dfkd_cov: f32 = 0.0,
        /// Data-free: the class term's click rate (0: the teacher's recorded training rate)
        dfkd_click_rate: f32 = 0.0,
        /// Data-free: category rows per field the generator chooses among (the teacher's most used)
        dfkd_candidates: usize = 256,
        /// Data-free: the Gumbel-softmax temperature
        dfkd_temperature: f32 = 1.0,
        /// Data-free: the generator's latent width
        dfkd_latent: usize = 64,
        /// Data-free: the generator's hidden width
        dfkd_hidden: usize = 256,
        /// Validate on at most this many rows (0: all)
        eval_rows: usize = 0,
        /// Synthetic log: training rows (the validation file gets a tenth)
        synthetic_rows: usize = 1000000,
        /// Synthetic log: multiplier of the Criteo-like field cardinalities
        synthetic_scale: f32 = 0.1,
    }
    shared {
        out = PathBuf::from("runs/criteo"),
    }
}

/// The format string of the task's checkpoints.
pub const FORMAT: &str = "codistill-criteo-v1";

/// A checkpoint of the task, checked, and its config.
pub fn checkpoint_config(ck: &crate::checkpoint::Checkpoint, path: &std::path::Path) -> Result<CriteoConfig> {
    crate::train::checkpoint_config(ck, path, FORMAT, "a click model")
}
