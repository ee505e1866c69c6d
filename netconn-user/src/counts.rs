//! The count table: sockets per (family, state), and its two renderings
//! (the `stats --json` shape and the human table).
//!
//! This is the vocabulary every other module speaks: the kernel counters, the
//! netlink refresh and the agent's answers all end up as a [`Counts`].

use std::fmt::Write as _;

/// TCP states in kernel numbering (include/net/tcp_states.h). UDP reuses two
/// of them: CLOSE (7) for unconnected and ESTABLISHED (1) for connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum State {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// Anything the kernel reports that is none of the above (for example
    /// TCP_NEW_SYN_RECV leaking through, or a future state).
    Unknown = 0,
}

impl State {
    /// The 12 states in the order the JSON lists them.
    pub const ALL: [State; 12] = [
        State::Established,
        State::SynSent,
        State::SynRecv,
        State::FinWait1,
        State::FinWait2,
        State::TimeWait,
        State::Close,
        State::CloseWait,
        State::LastAck,
        State::Listen,
        State::Closing,
        State::Unknown,
    ];

    /// Kernel state number to state. TCP_NEW_SYN_RECV (12) is a request
    /// socket, which `ss` shows as SYN_RECV.
    pub fn from_kernel(n: u8) -> State {
        match n {
            1 => State::Established,
            2 => State::SynSent,
            3 | 12 => State::SynRecv,
            4 => State::FinWait1,
            5 => State::FinWait2,
            6 => State::TimeWait,
            7 => State::Close,
            8 => State::CloseWait,
            9 => State::LastAck,
            10 => State::Listen,
            11 => State::Closing,
            _ => State::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Established => "ESTABLISHED",
            State::SynSent => "SYN_SENT",
            State::SynRecv => "SYN_RECV",
            State::FinWait1 => "FIN_WAIT1",
            State::FinWait2 => "FIN_WAIT2",
            State::TimeWait => "TIME_WAIT",
            State::Close => "CLOSE",
            State::CloseWait => "CLOSE_WAIT",
            State::LastAck => "LAST_ACK",
            State::Listen => "LISTEN",
            State::Closing => "CLOSING",
            State::Unknown => "UNKNOWN",
        }
    }

    /// Position in [`State::ALL`].
    pub fn index(self) -> usize {
        match self {
            State::Unknown => 11,
            s => s as usize - 1,
        }
    }
}

/// The four tracked socket families, in JSON order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Tcp4, Family::Tcp6, Family::Udp4, Family::Udp6];

    pub fn name(self) -> &'static str {
        match self {
            Family::Tcp4 => "tcp4",
            Family::Tcp6 => "tcp6",
            Family::Udp4 => "udp4",
            Family::Udp6 => "udp6",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Socket counts per family and state. Plain data: cheap to copy and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    cells: [[u64; 12]; 4],
}

impl Counts {
    pub fn get(&self, family: Family, state: State) -> u64 {
        self.cells[family.index()][state.index()]
    }

    pub fn set(&mut self, family: Family, state: State, n: u64) {
        self.cells[family.index()][state.index()] = n;
    }

    pub fn add(&mut self, family: Family, state: State, n: u64) {
        self.cells[family.index()][state.index()] += n;
    }

    /// Cell-wise sum.
    pub fn merged(mut self, other: &Counts) -> Counts {
        for (row, other_row) in self.cells.iter_mut().zip(other.cells.iter()) {
            for (cell, other_cell) in row.iter_mut().zip(other_row.iter()) {
                *cell += other_cell;
            }
        }
        self
    }

    /// Total of one family over all states.
    pub fn family_total(&self, family: Family) -> u64 {
        self.cells[family.index()].iter().sum()
    }

    /// The seven-key JSON object of `stats --json` (`tcp4`, `tcp6`, `udp4`,
    /// `udp6`, `tcp`, `udp`, `all`), every state present, zeros included.
    pub fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let groups: [(&str, &[Family]); 7] = [
            ("tcp4", &[Family::Tcp4]),
            ("tcp6", &[Family::Tcp6]),
            ("udp4", &[Family::Udp4]),
            ("udp6", &[Family::Udp6]),
            ("tcp", &[Family::Tcp4, Family::Tcp6]),
            ("udp", &[Family::Udp4, Family::Udp6]),
            ("all", &Family::ALL),
        ];
        let mut out = serde_json::Map::new();
        for (key, families) in groups {
            let mut states = serde_json::Map::new();
            for state in State::ALL {
                let n: u64 = families.iter().map(|&f| self.get(f, state)).sum();
                states.insert(state.name().to_string(), n.into());
            }
            out.insert(key.to_string(), states.into());
        }
        out
    }

    /// Parse the seven-key object back (only the four family keys are read;
    /// the sums are derived). Used by clients of the agent.
    pub fn from_json(value: &serde_json::Value) -> Option<Counts> {
        let mut counts = Counts::default();
        for family in Family::ALL {
            let states = value.get(family.name())?;
            for state in State::ALL {
                counts.set(family, state, states.get(state.name())?.as_u64()?);
            }
        }
        Some(counts)
    }

    /// Human table: one row per state, one column per family plus totals.
    /// States that are zero everywhere are left out to keep it short.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "STATE", "tcp4", "tcp6", "udp4", "udp6", "total"
        );
        for state in State::ALL {
            let row: Vec<u64> = Family::ALL.iter().map(|&f| self.get(f, state)).collect();
            let total: u64 = row.iter().sum();
            if total == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
                state.name(),
                row[0],
                row[1],
                row[2],
                row[3],
                total
            );
        }
        let totals: Vec<u64> = Family::ALL.iter().map(|&f| self.family_total(f)).collect();
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "total",
            totals[0],
            totals[1],
            totals[2],
            totals[3],
            totals.iter().sum::<u64>()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_seven_keys_with_all_twelve_states_and_sums() {
        let mut c = Counts::default();
        c.set(Family::Tcp4, State::Listen, 3);
        c.set(Family::Tcp6, State::Listen, 2);
        c.set(Family::Udp4, State::Close, 5);
        let json = c.json();
        assert_eq!(json.len(), 7);
        for (_, states) in &json {
            assert_eq!(states.as_object().map(|o| o.len()), Some(12));
        }
        assert_eq!(json["tcp"]["LISTEN"], 5);
        assert_eq!(json["all"]["LISTEN"], 5);
        assert_eq!(json["udp"]["CLOSE"], 5);
        assert_eq!(json["all"]["UNKNOWN"], 0);
        let back = Counts::from_json(&serde_json::Value::Object(json)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn kernel_states_map_like_ss() {
        assert_eq!(State::from_kernel(12), State::SynRecv);
        assert_eq!(State::from_kernel(99), State::Unknown);
        for (i, s) in State::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
