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

/// Per model: which teacher snapshots it has used, and which silent peers it has warned about.
#[derive(Clone, Debug)]
pub struct TeacherTracker {
    seen: Vec<Option<u64>>,
    warned: Vec<bool>,
    exchange_every: u64,
}

/// What using a teacher snapshot at a step means for the logs.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherUse {
    /// Steps since the teacher's snapshot was taken.
    pub staleness: u64,
    /// The first use of this snapshot (a swap): worth a metrics line.
    pub swapped: bool,
    /// Set once when the peer has been silent for more than three exchange periods.
    pub warning: Option<String>,
}

impl TeacherTracker {
    pub fn new(world: usize, exchange_every: u64) -> Self {
        TeacherTracker { seen: vec![None; world], warned: vec![false; world], exchange_every }
    }

    /// Record that `model` used `teacher` at `step`.
    pub fn observe(&mut self, model: usize, teacher: &exchange::Snapshot, step: u64) -> TeacherUse {
        let staleness = step.saturating_sub(teacher.step);
        let swapped = self.seen[teacher.rank] != Some(teacher.step);
        self.seen[teacher.rank] = Some(teacher.step);
        let mut warning = None;
        if self.exchange_every > 0 && staleness > 3 * self.exchange_every && !self.warned[teacher.rank] {
            self.warned[teacher.rank] = true;
            warning = Some(format!(
                "warning: model {} has not published for {staleness} steps; model {model} keeps training on its checkpoint of step {}",
                teacher.rank, teacher.step
            ));
        }
        TeacherUse { staleness, swapped, warning }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;

    #[test]
    fn tracker_reports_swaps_once_and_warns_once_about_a_silent_peer() {
        let mut t = TeacherTracker::new(2, 10);
        let snap = exchange::Snapshot { rank: 1, step: 20, params: ParamStore::new() };
        assert_eq!(t.observe(0, &snap, 25), TeacherUse { staleness: 5, swapped: true, warning: None });
        assert!(!t.observe(0, &snap, 26).swapped);
        let w = t.observe(0, &snap, 51).warning.unwrap();
        assert!(w.contains("model 1 has not published for 31 steps"), "{w}");
        assert!(t.observe(0, &snap, 60).warning.is_none());
    }
}
