// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Runs the end-to-end probe (src/bin/probe.rs) against the real dax-backend binary.

use std::process::Command;

fn run(legacy: bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
    cmd.arg("--backend").arg(env!("CARGO_BIN_EXE_dax-backend"));
    if legacy {
        cmd.arg("--legacy");
    }
    let out = cmd.output().expect("run probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "probe failed");
    assert!(stdout.contains("probe: PASS"));
}

#[test]
fn standard_shmem_map_unmap() {
    run(false);
}

#[test]
fn legacy_fs_map_unmap() {
    run(true);
}
