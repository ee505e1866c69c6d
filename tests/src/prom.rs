//! The real Prometheus server (Debian's `prometheus` package, installed by
//! `cargo xtask setup`) in a test namespace: temporary config and storage,
//! a loopback port, queries through its HTTP API.

use std::{
    cell::RefCell,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Netns, http};

/// How long Prometheus may take to say it is ready (Debian's build replays
/// an empty WAL and loads its UI assets; slow on a busy machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Fail (never skip) when a tool the test needs is not installed.
pub fn require_tool(tool: &str) -> Result<()> {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "{tool} is not installed: `cargo xtask setup` (or `cargo xtask test`) installs Debian's prometheus package"
        );
    }
    Ok(())
}

pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    /// All API calls share one connection (see [`http::Client`]).
    client: RefCell<Option<http::Client>>,
}

impl Prometheus {
    /// Start Prometheus inside `ns` on `addr`, scraping `targets` (job
    /// `netconn`) every second and evaluating `rule_files` every second;
    /// waits until it is ready.
    pub fn start_in(
        ns: &Netns,
        addr: SocketAddr,
        targets: &[SocketAddr],
        rule_files: &[&Path],
    ) -> Result<Prometheus> {
        let dir = PathBuf::from(format!(
            "/tmp/netconn-prometheus-{}-{}",
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).context("creating Prometheus' temp dir")?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str("rule_files:\n");
        for file in rule_files {
            let file = file
                .canonicalize()
                .with_context(|| format!("rule file {}", file.display()))?;
            let _ = writeln!(config, "  - {:?}", file.display().to_string());
        }
        config.push_str(
            "scrape_configs:\n  - job_name: netconn\n    static_configs:\n      - targets:\n",
        );
        for t in targets {
            let _ = writeln!(config, "          - \"{t}\"");
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).context("writing prometheus.yml")?;
        let log = std::fs::File::create(dir.join("log")).context("creating Prometheus' log")?;
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut prom = Prometheus {
            child: Some(child),
            dir,
            addr,
            client: RefCell::new(None),
        };
        prom.wait_ready(ns)?;
        Ok(prom)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, ns: &Netns) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.get(ns, "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "prometheus not ready after {READY_TIMEOUT:?} (slow machine?); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET on the shared connection, made (inside `ns`) when there is none
    /// or the last one failed.
    fn get(&self, ns: &Netns, path: &str) -> Result<http::HttpResponse> {
        let mut client = self.client.borrow_mut();
        let result = match client.as_mut() {
            Some(c) => c.get(path),
            None => {
                let addr = self.addr;
                let mut fresh = ns.run(move || http::Client::connect(addr))??;
                let reply = fresh.get(path);
                *client = Some(fresh);
                reply
            }
        };
        if result.is_err() {
            *client = None;
        }
        result
    }

    /// GET an API path (inside `ns`); returns `data` of a success reply.
    pub fn api(&self, ns: &Netns, path_and_query: &str) -> Result<serde_json::Value> {
        let reply = self.get(ns, path_and_query)?;
        let value: serde_json::Value = serde_json::from_str(&reply.body)
            .with_context(|| format!("{path_and_query}: not JSON: {}", reply.body))?;
        if reply.status != 200 || value["status"] != "success" {
            bail!("{path_and_query}: HTTP {}: {}", reply.status, reply.body);
        }
        Ok(value["data"].clone())
    }

    /// An instant query; returns the result vector.
    pub fn query(&self, ns: &Netns, promql: &str) -> Result<Vec<serde_json::Value>> {
        let data = self.api(
            ns,
            &format!("/api/v1/query?query={}", http::urlencode(promql)),
        )?;
        match data["result"].as_array() {
            Some(r) => Ok(r.clone()),
            None => bail!("query {promql:?}: no result vector: {data}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The numeric value of one instant-vector sample.
pub fn sample_value(sample: &serde_json::Value) -> Option<f64> {
    sample["value"].get(1)?.as_str()?.parse().ok()
}
