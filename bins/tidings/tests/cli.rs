//! The binary's configuration handling: layering, errors that name the key
//! and its source, and `check-config`.
//!
//! (This integration test also makes `cargo test --workspace` build the
//! `tidings` binary that the end-to-end suite in `tests/` drives.)

mod common;
use common::tidings;

fn write_config(name: &str, body: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tidings-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn check_config_prints_defaults_and_redacts_secrets() {
    let (ok, out, err) = tidings(
        &["check-config"],
        &[
            ("TIDINGS_API_KEY", "1234567890123456789"),
            (
                "TIDINGS_REDIS_URL",
                "redis://:hunter2hunter2@127.0.0.1:6379/2",
            ),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    assert!(out.contains("api_key = \"<redacted>\""), "{out}");
    assert!(out.contains("redis_url = \"<redacted>\""), "{out}");
    assert!(
        !out.contains("1234567890123456789") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(out.contains("[[routing.rules]]"));
}

#[test]
fn layering_file_then_environment() {
    let p = write_config(
        "layers",
        "listen = \"127.0.0.1:9001\"\n[websocket]\nping_interval_secs = 5\n",
    );
    let (ok, out, err) = tidings(
        &["--config", p.to_str().unwrap(), "check-config"],
        &[("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "7")],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("listen = \"127.0.0.1:9001\""),
        "file beats defaults: {out}"
    );
    assert!(
        out.contains("ping_interval_secs = 7"),
        "environment beats file: {out}"
    );
    let (ok, out, _) = tidings(
        &["--config", p.to_str().unwrap(), "check-config"],
        &[("TIDINGS_LISTEN", "0.0.0.0:9002")],
    );
    assert!(ok);
    assert!(out.contains("listen = \"0.0.0.0:9002\""), "{out}");
}

#[test]
fn bad_values_name_the_key_and_the_source() {
    let (ok, _, err) = tidings(
        &["check-config"],
        &[("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS", "soon")],
    );
    assert!(!ok);
    assert!(
        err.contains("ping_interval_secs") && err.contains("TIDINGS_WEBSOCKET__PING_INTERVAL_SECS"),
        "{err}"
    );

    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_LISTEN", "not-an-address")]);
    assert!(!ok);
    assert!(
        err.contains("listen") && err.contains("TIDINGS_LISTEN"),
        "{err}"
    );

    let (ok, _, err) = tidings(
        &["check-config"],
        &[("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS", "-1")],
    );
    assert!(!ok);
    assert!(
        err.contains("websocket.pong_timeout_secs")
            && err.contains("TIDINGS_WEBSOCKET__PONG_TIMEOUT_SECS"),
        "{err}"
    );

    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_REDIS_URL", "http://x")]);
    assert!(!ok);
    assert!(err.contains("redis_url"), "{err}");
    assert!(!err.contains("http://x"), "secrets are not echoed: {err}");
}

#[test]
fn unknown_keys_stop_startup() {
    // A typo in the environment.
    let (ok, _, err) = tidings(&["check-config"], &[("TIDINGS_LISTN", "127.0.0.1:1")]);
    assert!(!ok);
    assert!(err.contains("listn"), "{err}");
    // A typo in the file names the key and the file.
    let p = write_config("typo", "[websocket]\nping_intervall_secs = 3\n");
    let (ok, _, err) = tidings(&["--config", p.to_str().unwrap(), "check-config"], &[]);
    assert!(!ok);
    assert!(
        err.contains("ping_intervall_secs") && err.contains(p.to_str().unwrap()),
        "{err}"
    );
    // A bad routing rule.
    let p = write_config(
        "rule",
        "[[routing.rules]]\nchannel = \"/u/{uid}\"\njoin = true\n",
    );
    let (ok, _, err) = tidings(&["--config", p.to_str().unwrap(), "check-config"], &[]);
    assert!(!ok);
    assert!(
        err.contains("routing.rules") && err.contains("uid"),
        "{err}"
    );
    // A missing file.
    let (ok, _, err) = tidings(
        &["--config", "/nonexistent/tidings.toml", "check-config"],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn an_all_digit_api_key_is_kept_exactly() {
    // figment would read this as a number and round it; the key must be
    // used byte for byte (leading zeros and all).
    let key = "00123456789012345678";
    let (ok, out, err) = tidings(&["check-config"], &[("TIDINGS_API_KEY", key)]);
    assert!(ok, "{err}");
    assert!(out.contains("api_key = \"<redacted>\""), "{out}");
    assert!(!out.contains(key) && !err.contains(key));
}
