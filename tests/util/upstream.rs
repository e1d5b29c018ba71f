//! The real upstream clients (`testflinger-cli`, `testflinger-agent`) for tests that drive
//! flinger with them.
//!
//! They live in a Python virtualenv made by `../shared/upstream-clients/install` (the
//! development workspace's unmodified copy of canonical/testflinger's clients). The venv is
//! found at `$FLINGER_UPSTREAM_VENV`, else at `target/upstream-clients`; when neither has the
//! clients, the first test that needs them installs them into `target/upstream-clients` (a
//! minute or so, from PyPI) so that README's test command works on a fresh machine. The
//! install script is found at `$FLINGER_UPSTREAM_CLIENTS/install`, else at
//! `../shared/upstream-clients/install` beside the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The virtualenv's directory (with `bin/testflinger-cli` and `bin/testflinger-agent`),
/// installing it on first use. Panics with what to do when it cannot be installed.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = match std::env::var_os("FLINGER_UPSTREAM_VENV") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/upstream-clients"),
        };
        if has_clients(&venv) {
            return venv;
        }
        let script = match std::env::var_os("FLINGER_UPSTREAM_CLIENTS") {
            Some(dir) => PathBuf::from(dir).join("install"),
            None => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream-clients/install")
            }
        };
        assert!(
            script.exists(),
            "the upstream Testflinger clients are not installed at {} and their install script \
             {} does not exist: set FLINGER_UPSTREAM_VENV to a venv that has testflinger-cli and \
             testflinger-agent, or FLINGER_UPSTREAM_CLIENTS to the upstream-clients folder",
            venv.display(),
            script.display()
        );
        // A half-made venv from an interrupted install would make the script fail.
        let _ = std::fs::remove_dir_all(&venv);
        let status = Command::new("bash")
            .arg(&script)
            .arg(&venv)
            .status()
            .expect("run the upstream clients' install script");
        assert!(
            status.success() && has_clients(&venv),
            "installing the upstream clients with {} failed ({status})",
            script.display()
        );
        venv
    })
}

fn has_clients(venv: &Path) -> bool {
    venv.join("bin/testflinger-cli").exists() && venv.join("bin/testflinger-agent").exists()
}

/// `testflinger-cli` from the venv.
pub fn cli() -> PathBuf {
    venv().join("bin/testflinger-cli")
}

/// `testflinger-agent` from the venv.
pub fn agent() -> PathBuf {
    venv().join("bin/testflinger-agent")
}
