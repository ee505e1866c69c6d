use std::process::Command;

/// Rebuild when bpf-linker changes (it is the linker of this crate). A
/// missing bpf-linker is not an error here: cargo reports it at link time,
/// and `cargo xtask setup` installs it.
fn main() {
    let linker = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok());
    match linker {
        Some(path) => println!("cargo:rerun-if-changed={}", path.trim()),
        None => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
}
