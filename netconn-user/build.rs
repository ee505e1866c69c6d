//! Builds the eBPF program (netconn-ebpf) on the nightly toolchain for the
//! bpf target and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! The same command aya-build 0.2.0's `build_ebpf` runs, without its habit
//! of echoing the nested cargo's whole output as `cargo:warning` lines on
//! every clean build: here the output is shown only when the build fails.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "netconn-ebpf";
/// Name of the eBPF crate's `[[bin]]`, which is the object file's name.
const EBPF_BIN: &str = "netconn";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join(EBPF_BIN);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // An empty placeholder keeps the include compiling (clippy, docs);
        // loading it fails with a clear error.
        if !object.exists() {
            fs::write(&object, []).context("writing placeholder eBPF object")?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("..").join(EBPF_PACKAGE);
    // The build-dependency on netconn-ebpf re-runs us when its library (and
    // netconn-common) change; this covers its binary's sources.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    // Kept apart from OUT_DIR's own files (cargo flocks its target dir).
    let target_dir = out_dir.join("ebpf-target");
    let rustflags = format!(
        "--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-cpu=v3"
    );
    let output = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args([
            "--bins",
            "--release",
            "--target",
            target,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The nightly's own compiler, not the stable one driving this build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .context("running `rustup run nightly cargo build` (run `cargo xtask setup`)")?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF program failed ({}); missing tools? run `cargo xtask setup`",
            output.status
        );
    }
    let built = target_dir.join(target).join("release").join(EBPF_BIN);
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
