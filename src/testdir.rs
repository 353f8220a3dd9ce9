//! A temporary directory for unit tests, removed when the test that made it passes (kept after a
//! failure, for looking at): the unit tests' twin of `tests/common::Scratch`, which the library's
//! own tests cannot reach.

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub struct TestDir(PathBuf);

impl TestDir {
    /// An empty directory under the system's temporary directory, named for the test and process.
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("codistill-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create a test directory");
        TestDir(d)
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
