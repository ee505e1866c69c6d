//! The shipped monitoring definitions (deploy/icinga2, deploy/nagios) pass
//! the real daemons' configuration checks (Debian's `icinga2 daemon -C`,
//! `nagios4 -v`), a broken copy of each fails them, and the command line
//! each renders is one `netconn check` accepts and answers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use netconn_tests::*;

/// A scratch directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("netconn-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Readable by the daemons' own users (icinga2 drops root).
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn tool(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    anyhow::bail!("{name} is not installed (`cargo xtask setup` installs it)")
}

/// `netconn check` with these arguments answers as a plugin (exit 0-2 with
/// a status line), i.e. takes every argument the definitions pass.
fn check_accepts(args: &[&str]) -> Result<()> {
    let out = Command::new(netconn_bin()?)
        .arg("check")
        .args(args)
        .output()
        .context("running netconn check")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        matches!(out.status.code(), Some(0..=2)) && !stdout.trim().is_empty(),
        "netconn check {args:?} -> {:?}: {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn icinga2_check(dir: &Scratch, command_file: &Path) -> Result<(bool, String)> {
    // icinga2 reads the configuration as its own user (it drops root), who
    // may not see into the checkout (a 0700 temporary clone): use a copy.
    let copy = dir.path().join("netconn-command.conf");
    std::fs::copy(command_file, &copy)
        .with_context(|| format!("copying {}", command_file.display()))?;
    let command_file = copy.as_path();
    let conf = dir.path().join("icinga2.conf");
    std::fs::write(
        &conf,
        format!(
            r#"include <itl>
include "{}"
object Host "localhost" {{ check_command = "dummy"; address = "127.0.0.1" }}
object Service "tcp-states" {{
  host_name = "localhost"
  check_command = "netconn"
  vars.netconn_conn_type = [ "tcp", "tcp6" ]
  vars.netconn_conn_status = [ "time_wait", "close_wait" ]
  vars.netconn_warning = "5000"
  vars.netconn_critical = "10000"
  vars.netconn_always_ok = true
}}
object Service "leaks" {{
  host_name = "localhost"
  check_command = "netconn"
  vars.netconn_leaks = true
}}
"#,
            command_file.display()
        ),
    )?;
    let out = Command::new(tool("icinga2")?)
        .args(["daemon", "-C", "-c"])
        .arg(&conf)
        .output()
        .context("running icinga2 daemon -C")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn icinga2_accepts_the_check_command() -> Result<()> {
    // icinga2 writes its variables to /var/cache/icinga2 even when checking.
    require_root()?;
    let dir = Scratch::new("icinga2")?;
    let (ok, text) = icinga2_check(&dir, &deploy("icinga2/netconn.conf"))?;
    ensure!(
        ok,
        "icinga2 daemon -C rejected deploy/icinga2/netconn.conf:\n{text}"
    );
    ensure!(
        text.contains("Instantiated 2 Services"),
        "the services using it were not instantiated:\n{text}"
    );
    // A check that can fail: the same file with a typo is refused.
    let broken = dir.path().join("broken.conf");
    std::fs::write(
        &broken,
        std::fs::read_to_string(deploy("icinga2/netconn.conf"))?
            .replace("repeat_key = true", "repeat_key = ture"),
    )?;
    let (ok, _) = icinga2_check(&dir, &broken)?;
    ensure!(!ok, "icinga2 daemon -C accepted a broken CheckCommand");
    // What the tcp-states service runs (repeat_key repeats the flag).
    check_accepts(&[
        "--always-ok",
        "--conn-status",
        "time_wait",
        "--conn-status",
        "close_wait",
        "--conn-type",
        "tcp",
        "--conn-type",
        "tcp6",
        "--critical",
        "10000",
        "--warning",
        "5000",
    ])
}

fn nagios_check(dir: &Scratch, command_file: &Path) -> Result<(bool, String)> {
    let d = dir.path().display();
    let objects = dir.path().join("objects.cfg");
    let period = "monday 00:00-24:00\n tuesday 00:00-24:00\n wednesday 00:00-24:00\n thursday 00:00-24:00\n friday 00:00-24:00\n saturday 00:00-24:00\n sunday 00:00-24:00";
    let service = |name: &str, command: &str| {
        format!(
            "define service {{\n host_name localhost\n service_description {name}\n check_command {command}\n max_check_attempts 1\n check_interval 1\n retry_interval 1\n check_period 24x7\n contacts root\n notification_period 24x7\n}}\n"
        )
    };
    std::fs::write(
        &objects,
        format!(
            "define timeperiod {{\n timeperiod_name 24x7\n alias always\n {period}\n}}\n\
             define contact {{\n contact_name root\n host_notifications_enabled 0\n service_notifications_enabled 0\n host_notification_period 24x7\n service_notification_period 24x7\n host_notification_options n\n service_notification_options n\n host_notification_commands check_netconn\n service_notification_commands check_netconn\n}}\n\
             define host {{\n host_name localhost\n address 127.0.0.1\n max_check_attempts 1\n check_period 24x7\n contacts root\n notification_period 24x7\n}}\n{}{}",
            service(
                "TCP states",
                "check_netconn!--conn-type tcp --conn-type tcp6 --conn-status time_wait --warning 5000 --critical 10000"
            ),
            service("Connection leaks", "check_netconn_leaks"),
        ),
    )?;
    let main = dir.path().join("nagios.cfg");
    std::fs::write(
        &main,
        format!(
            "cfg_file={}\ncfg_file={}\ncheck_result_path={d}\nlock_file={d}/nagios.lock\ntemp_file={d}/nagios.tmp\nstatus_file={d}/status.dat\nlog_file={d}/nagios.log\nnagios_user=root\nnagios_group=root\nillegal_macro_output_chars=`~$&|'\"<>\n",
            command_file.display(),
            objects.display()
        ),
    )?;
    let out = Command::new(tool("nagios4")?)
        .arg("-v")
        .arg(&main)
        .output()
        .context("running nagios4 -v")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn nagios_accepts_the_command_definitions() -> Result<()> {
    require_root()?;
    let dir = Scratch::new("nagios")?;
    let (ok, text) = nagios_check(&dir, &deploy("nagios/netconn.cfg"))?;
    ensure!(ok, "nagios4 -v rejected deploy/nagios/netconn.cfg:\n{text}");
    ensure!(
        text.contains("Checked 2 services") && text.contains("Things look okay"),
        "nagios4 -v did not check both services:\n{text}"
    );
    let broken = dir.path().join("broken.cfg");
    std::fs::write(
        &broken,
        std::fs::read_to_string(deploy("nagios/netconn.cfg"))?
            .replace("command_line", "command_lin"),
    )?;
    let (ok, _) = nagios_check(&dir, &broken)?;
    ensure!(!ok, "nagios4 -v accepted a broken command definition");
    // What the services run once $ARG1$ is expanded.
    check_accepts(&[
        "--conn-type",
        "tcp",
        "--conn-type",
        "tcp6",
        "--conn-status",
        "time_wait",
        "--warning",
        "5000",
        "--critical",
        "10000",
    ])
}
