//! Data: synthetic sources with known entropy (the embedded default and the learning checks).
pub mod synthetic;
