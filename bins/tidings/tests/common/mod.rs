//! Helpers shared by the binary's integration tests.

use std::process::Command;

/// Runs the `tidings` binary with `args`, with no `TIDINGS_*` variable
/// from this environment but those in `env`: (success, stdout, stderr).
pub(crate) fn tidings(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    let out = cmd.output().expect("run tidings");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
