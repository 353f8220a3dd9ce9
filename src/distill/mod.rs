//! Codistillation (Anil et al. 2018): n models train on their own shards; after `burn_in` steps
//! each adds a distillation term toward the average prediction of the others' most recently
//! exchanged (stale) checkpoints. `exchange` holds the checkpoint exchange.

pub mod exchange;

/// When and how strongly models distill from each other.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodistillSchedule {
    /// Steps with the distillation term off.
    pub burn_in: u64,
    /// Publish a checkpoint every this many steps.
    pub exchange_every: u64,
    /// Weight of the distillation term; `1 - weight` weighs the task loss.
    pub weight: f32,
}

impl CodistillSchedule {
    /// Whether step `step` (0-based) uses the teachers.
    pub fn distill_at(&self, step: u64) -> bool {
        self.weight > 0.0 && step >= self.burn_in
    }

    /// Whether a checkpoint is published after step `step` (0-based) completes.
    pub fn publish_after(&self, step: u64) -> bool {
        self.exchange_every > 0 && (step + 1) % self.exchange_every == 0
    }
}
