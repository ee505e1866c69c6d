//! What a `popgen` process builds: the command-line spec, the exact `ss`
//! deltas it produces, and how a big spec is split over several processes.

use std::fmt;

use anyhow::{Context, Result, bail};

use netconn_common::{Counts, Family, State};

/// One address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    /// `4` or `6`, as popgen's flags spell it.
    pub fn digit(self) -> char {
        match self {
            IpVersion::V4 => '4',
            IpVersion::V6 => '6',
        }
    }
    pub fn tcp(self) -> Family {
        match self {
            IpVersion::V4 => Family::Tcp4,
            IpVersion::V6 => Family::Tcp6,
        }
    }
    pub fn udp(self) -> Family {
        match self {
            IpVersion::V4 => Family::Udp4,
            IpVersion::V6 => Family::Udp6,
        }
    }
}

/// Which families a spec builds. With `Both`, every count applies to each
/// family (so `--established 10 --family both` makes 20 pairs in all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilySel {
    V4,
    V6,
    Both,
}

impl FamilySel {
    pub fn families(self) -> &'static [IpVersion] {
        match self {
            FamilySel::V4 => &[IpVersion::V4],
            FamilySel::V6 => &[IpVersion::V6],
            FamilySel::Both => &[IpVersion::V4, IpVersion::V6],
        }
    }
    fn arg(self) -> &'static str {
        match self {
            FamilySel::V4 => "4",
            FamilySel::V6 => "6",
            FamilySel::Both => "both",
        }
    }
}

/// Churn mode: open and close short TCP connections until told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnSpec {
    /// Connections per second; 0 = as fast as possible.
    pub rate: u32,
    /// Churn stops after this many seconds (the population stays held).
    pub seconds: u64,
}

impl Default for ChurnSpec {
    fn default() -> Self {
        ChurnSpec {
            rate: 0,
            seconds: 60,
        }
    }
}

/// Population of one `popgen` run (or, for [`crate::Population`], the total
/// to spread over several runs). Counts are per family; see the `popgen`
/// help text (and [`PopSpec::expected`]) for what each produces in `ss`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopSpec {
    pub family: FamilySel,
    pub listeners: u32,
    pub established: u32,
    pub close_wait: u32,
    pub time_wait: u32,
    pub fin_wait2: u32,
    pub udp_bound: u32,
    pub udp_connected: u32,
    /// First port for `listeners` (consecutive ports); `None` = port 0.
    pub base_port: Option<u16>,
    pub churn: Option<ChurnSpec>,
    /// Exit by just closing (leaves TIME_WAIT etc. behind) instead of the
    /// default clean exit (RST every held socket, destroy own TIME_WAITs).
    pub natural_exit: bool,
}

impl Default for PopSpec {
    fn default() -> Self {
        PopSpec {
            family: FamilySel::V4,
            listeners: 0,
            established: 0,
            close_wait: 0,
            time_wait: 0,
            fin_wait2: 0,
            udp_bound: 0,
            udp_connected: 0,
            base_port: None,
            churn: None,
            natural_exit: false,
        }
    }
}

/// Connections a popgen builds per batch: bounds the transient descriptors
/// (2 per connection) and stays below the listen backlog.
pub const BATCH: u32 = 1000;
/// Descriptors a popgen needs beyond what it holds: one batch of pairs, the
/// batch listener, churn listeners, stdio and slack.
pub const TRANSIENT_FDS: u64 = 2 * BATCH as u64 + 64;
/// Held descriptors per process when [`PopSpec::split`] spreads a spec:
/// with [`TRANSIENT_FDS`] a process stays under ~18,000 descriptors.
pub const HELD_FDS_PER_PROCESS: u64 = 15_500;
/// TIME_WAIT connections hold no descriptor, but a process builds them
/// serially: cap them per process so big counts are built in parallel.
pub const TIME_WAIT_PER_PROCESS: u64 = 40_000;

impl PopSpec {
    /// Parses popgen's command line (without the program name).
    pub fn from_args<I, S>(args: I) -> Result<PopSpec>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut spec = PopSpec::default();
        let mut churn = false;
        let mut rate = None;
        let mut seconds = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg.as_ref().to_owned();
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .map(|v| v.as_ref().to_owned())
                        .with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag.as_str() {
                "--listeners" => spec.listeners = parse_count(&flag, &value()?)?,
                "--established" => spec.established = parse_count(&flag, &value()?)?,
                "--close-wait" => spec.close_wait = parse_count(&flag, &value()?)?,
                "--time-wait" => spec.time_wait = parse_count(&flag, &value()?)?,
                "--fin-wait2" => spec.fin_wait2 = parse_count(&flag, &value()?)?,
                "--udp-bound" => spec.udp_bound = parse_count(&flag, &value()?)?,
                "--udp-connected" => spec.udp_connected = parse_count(&flag, &value()?)?,
                "--v4" => spec.family = FamilySel::V4,
                "--v6" => spec.family = FamilySel::V6,
                "--family" => {
                    spec.family = match value()?.as_str() {
                        "4" | "v4" | "ipv4" => FamilySel::V4,
                        "6" | "v6" | "ipv6" => FamilySel::V6,
                        "both" | "46" => FamilySel::Both,
                        other => bail!("--family: expected 4, 6 or both, got {other:?}"),
                    }
                }
                "--base-port" => {
                    let v = value()?;
                    let p: u16 = v
                        .parse()
                        .with_context(|| format!("--base-port: bad port {v:?}"))?;
                    spec.base_port = (p != 0).then_some(p);
                }
                "--churn" => churn = true,
                "--rate" => {
                    let v = value()?;
                    // "--rate 500/s" and "--rate 500" mean the same.
                    let n = v.strip_suffix("/s").unwrap_or(&v);
                    rate = Some(parse_count("--rate", n)?);
                }
                "--seconds" => {
                    let v = value()?;
                    let s: u64 = v
                        .parse()
                        .with_context(|| format!("--seconds: bad number {v:?}"))?;
                    seconds = Some(s);
                }
                "--natural-exit" => spec.natural_exit = true,
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        if churn {
            let d = ChurnSpec::default();
            spec.churn = Some(ChurnSpec {
                rate: rate.unwrap_or(d.rate),
                seconds: seconds.unwrap_or(d.seconds),
            });
        } else if rate.is_some() || seconds.is_some() {
            bail!("--rate and --seconds only apply with --churn");
        }
        if let Some(p) = spec.base_port
            && u32::from(p) + spec.listeners > 65_536
        {
            bail!(
                "--base-port {p} with {} listeners runs past port 65535",
                spec.listeners
            );
        }
        Ok(spec)
    }

    /// The command line that [`PopSpec::from_args`] parses back to `self`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--family".to_owned(), self.family.arg().to_owned()];
        let counts = [
            ("--listeners", self.listeners),
            ("--established", self.established),
            ("--close-wait", self.close_wait),
            ("--time-wait", self.time_wait),
            ("--fin-wait2", self.fin_wait2),
            ("--udp-bound", self.udp_bound),
            ("--udp-connected", self.udp_connected),
        ];
        for (flag, n) in counts {
            if n > 0 {
                a.push(flag.to_owned());
                a.push(n.to_string());
            }
        }
        if let Some(p) = self.base_port {
            a.push("--base-port".to_owned());
            a.push(p.to_string());
        }
        if let Some(c) = self.churn {
            a.push("--churn".to_owned());
            a.push("--rate".to_owned());
            a.push(c.rate.to_string());
            a.push("--seconds".to_owned());
            a.push(c.seconds.to_string());
        }
        if self.natural_exit {
            a.push("--natural-exit".to_owned());
        }
        a
    }

    /// Descriptors held once built, per family.
    fn held_fds_per_family(&self) -> u64 {
        u64::from(self.listeners)
            + 2 * u64::from(self.established)
            + u64::from(self.close_wait)
            + 2 * u64::from(self.fin_wait2)
            + u64::from(self.udp_bound)
            + u64::from(self.udp_connected)
    }

    /// Descriptors held once the population is built (all families).
    pub fn held_fds(&self) -> u64 {
        self.held_fds_per_family() * self.family.families().len() as u64
    }

    /// Peak descriptors a popgen run of this spec needs.
    pub fn peak_fds(&self) -> u64 {
        self.held_fds() + TRANSIENT_FDS
    }

    /// Sockets this spec adds to `ss`, all families (churn not included).
    pub fn total_sockets(&self) -> u64 {
        self.expected().cells().map(|(_, _, n)| n).sum()
    }

    /// Exact `ss` deltas once `ready` is printed (churn not included).
    /// TIME_WAIT and the FIN_WAIT2 half of `close_wait` are timewait socks:
    /// they expire 60 s (tcp_fin_timeout / TCP_TIMEWAIT_LEN) after creation.
    pub fn expected(&self) -> Counts {
        let mut c = Counts::default();
        for &v in self.family.families() {
            let mut add = |family: Family, state: State, n: u32| {
                c.add(family, state, u64::from(n));
            };
            add(v.tcp(), State::Listen, self.listeners);
            add(v.tcp(), State::Established, 2 * self.established);
            add(v.tcp(), State::CloseWait, self.close_wait);
            add(v.tcp(), State::FinWait2, self.close_wait);
            add(v.tcp(), State::TimeWait, self.time_wait);
            add(v.tcp(), State::FinWait2, self.fin_wait2);
            add(v.tcp(), State::CloseWait, self.fin_wait2);
            add(v.udp(), State::Close, self.udp_bound);
            add(v.udp(), State::Established, self.udp_connected);
        }
        c
    }

    fn is_empty(&self) -> bool {
        self.held_fds_per_family() == 0 && self.time_wait == 0 && self.churn.is_none()
    }

    /// Splits the spec over processes that each hold at most `held_max`
    /// descriptors (and at most [`TIME_WAIT_PER_PROCESS`] TIME_WAITs).
    /// Listener ports stay distinct: each part's `base_port` continues where
    /// the previous part's listeners ended. Churn goes to the first part.
    pub fn split(&self, held_max: u64) -> Result<Vec<PopSpec>> {
        if held_max < 2 {
            bail!("held_max {held_max} is too small to hold a pair");
        }
        if self.held_fds() <= held_max && u64::from(self.time_wait) <= TIME_WAIT_PER_PROCESS {
            return Ok(vec![self.clone()]);
        }
        let mut parts: Vec<PopSpec> = Vec::new();
        let mut next_port = self.base_port.map(u32::from);
        for &fam in self.family.families() {
            let fsel = match fam {
                IpVersion::V4 => FamilySel::V4,
                IpVersion::V6 => FamilySel::V6,
            };
            // (kind index, remaining count, descriptors per unit)
            let mut kinds: [(usize, u64, u64); 7] = [
                (0, self.listeners.into(), 1),
                (1, self.established.into(), 2),
                (2, self.close_wait.into(), 1),
                (3, self.fin_wait2.into(), 2),
                (4, self.udp_bound.into(), 1),
                (5, self.udp_connected.into(), 1),
                (6, self.time_wait.into(), 0),
            ];
            while kinds.iter().any(|k| k.1 > 0) {
                let mut part = PopSpec {
                    family: fsel,
                    natural_exit: self.natural_exit,
                    ..PopSpec::default()
                };
                let mut budget = held_max;
                for k in kinds.iter_mut() {
                    // Cost 0 (TIME_WAIT) holds no descriptor: cap by count.
                    let take = match budget.checked_div(k.2) {
                        Some(fit) => k.1.min(fit),
                        None => k.1.min(TIME_WAIT_PER_PROCESS),
                    };
                    if take == 0 {
                        continue;
                    }
                    budget -= take * k.2;
                    k.1 -= take;
                    let take32 = u32::try_from(take).context("count overflows u32")?;
                    match k.0 {
                        0 => {
                            part.listeners = take32;
                            if let Some(p) = next_port {
                                part.base_port = Some(
                                    u16::try_from(p).context("listener ports run past 65535")?,
                                );
                                next_port = Some(p + take32);
                            }
                        }
                        1 => part.established = take32,
                        2 => part.close_wait = take32,
                        3 => part.fin_wait2 = take32,
                        4 => part.udp_bound = take32,
                        5 => part.udp_connected = take32,
                        _ => part.time_wait = take32,
                    }
                }
                if part.is_empty() {
                    bail!("cannot split {self:?} with held_max {held_max}");
                }
                parts.push(part);
            }
        }
        if let Some(first) = parts.first_mut() {
            first.churn = self.churn;
        }
        Ok(parts)
    }
}

impl fmt::Display for PopSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_args().join(" "))
    }
}

fn parse_count(flag: &str, v: &str) -> Result<u32> {
    v.parse()
        .with_context(|| format!("{flag}: expected a count, got {v:?}"))
}

/// Sums two count tables cell by cell.
pub fn add_counts(a: &Counts, b: &Counts) -> Counts {
    a.merged(b)
}
