//! Tests that need a network of their own (browsers whose ICE must only see loopback, nftables
//! faults on cluster links) run again inside a fresh network namespace that has only `lo`.

use std::process::Command;

use crate::process::binary;

/// Runs the calling test again in a fresh network namespace that has only `lo`. Returns `true`
/// in the outer process (the test already ran inside and passed; the caller just returns) and
/// `false` inside, where the test body runs.
pub fn rerun_in_netns(test: &str) -> bool {
    if std::env::var_os("SWITCHBOARD_IN_NETNS").is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = binary();
    let status = Command::new("unshare")
        .args(["--net", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("SWITCHBOARD_IN_NETNS", "1")
        .env("SWITCHBOARD_BIN", bin)
        .status()
        .expect("unshare (util-linux) must be installed and the tests run as root to create a network namespace");
    assert!(status.success(), "{test} failed inside its network namespace ({status})");
    true
}

