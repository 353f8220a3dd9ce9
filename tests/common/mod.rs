//! Helpers shared by the integration tests.

#[path = "../../src/testdir.rs"]
mod testdir;
pub use testdir::Scratch;
