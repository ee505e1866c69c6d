//! `netconn unload`: detach and remove the kernel side `agent --pin` left
//! pinned.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::kernel::pin;

#[derive(clap::Args, Debug)]
pub struct UnloadArgs {
    /// The pin root the agent used (`agent --pin-root`).
    #[arg(long, value_name = "DIR", default_value = pin::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
}

pub fn run(args: &UnloadArgs) -> anyhow::Result<()> {
    let root = &args.pin_root;
    if !root.exists() {
        println!("nothing pinned under {}", root.display());
        return Ok(());
    }
    let dirs = pin::others(root, std::path::Path::new(""));
    for dir in &dirs {
        pin::remove(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("removed {}", dir.display());
    }
    std::fs::remove_dir(root).with_context(|| format!("cannot remove {}", root.display()))?;
    // A running `agent --pin` keeps its programs attached until it exits
    // (it holds them open); without pins it then leaves nothing behind.
    println!("netconn's kernel side is detached (a running agent keeps counting until it exits)");
    Ok(())
}
