//! Man pages and shell completions, generated from the one clap definition
//! ([`Cli`]) by the binary itself: whatever the binary accepts is what its
//! documentation says, with no second copy to drift. `cargo xtask dist`
//! runs these to fill the Debian package; a user of a plain binary can run
//! `netconn completions SHELL` too.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// `netconn completions`'s arguments.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// Shell to write completions for (printed on stdout).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `netconn generate-man`'s arguments.
#[derive(clap::Args, Debug)]
pub struct GenerateManArgs {
    /// Directory for the pages (created if missing): netconn.1 and one
    /// netconn-COMMAND.1 per command.
    pub dir: PathBuf,
}

/// Print the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let script = completion_script(args.shell);
    match io::Write::write_all(&mut io::stdout().lock(), &script) {
        // `netconn completions bash | head` is not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the completion script"),
    }
}

/// The completion script for `shell`, for the binary named `netconn`.
/// Rendered into memory: clap_complete panics on a failed write.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = visible_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "netconn", &mut out);
    out
}

/// [`Cli`] without its hidden commands: clap_complete offers hidden ones
/// too, and clap cannot drop a subcommand, so the root is rebuilt from the
/// visible ones (and any root arguments).
fn visible_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("netconn")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Write netconn.1 and a page per visible command into `args.dir`.
pub fn man_pages(args: &GenerateManArgs) -> anyhow::Result<()> {
    let written = write_man_pages(&args.dir)?;
    for page in written {
        println!("{}", page.display());
    }
    Ok(())
}

/// The pages written, in name order.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    // generate_to does not say what it wrote; list it so callers can check.
    let mut pages = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("netconn") && name.ends_with(".1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_command_and_none_for_hidden_ones() {
        let dir = std::env::temp_dir().join(format!("netconn-man-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pages = write_man_pages(&dir).expect("writing man pages");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        for want in [
            "netconn.1",
            "netconn-agent.1",
            "netconn-stats.1",
            "netconn-watch.1",
            "netconn-check.1",
            "netconn-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-man")),
            "hidden command got a page: {names:?}"
        );
        let stats = fs::read_to_string(dir.join("netconn-stats.1")).expect("reading page");
        assert!(stats.contains(".TH netconn-stats 1"), "{stats}");
        assert!(stats.contains("json"), "options missing: {stats}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_name_every_command_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completion_script(shell)).expect("utf-8 script");
            for command in ["agent", "stats", "watch", "check", "completions"] {
                assert!(text.contains(command), "{shell}: {command} missing");
            }
            assert!(
                !text.contains("generate-man"),
                "{shell}: hidden command offered"
            );
            // fish spells it `-l socket`.
            assert!(text.contains("socket"), "{shell}: options missing");
        }
    }
}
