//! The one vocabulary of netconn: socket families, kernel states and the
//! count table. The eBPF program, the agent, the CLI and the tests all speak
//! it; nothing here allocates, so the kernel side can use it too.

/// TCP states as numbered in include/net/tcp_states.h.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
/// A request socket (include/net/tcp_states.h); `ss` shows it as SYN_RECV.
pub const TCP_NEW_SYN_RECV: u8 = 12;

/// A socket state. UDP reuses two: CLOSE for unconnected and ESTABLISHED for
/// connected sockets, as the kernel (and /proc/net/udp) report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum State {
    Established = TCP_ESTABLISHED,
    SynSent = TCP_SYN_SENT,
    SynRecv = TCP_SYN_RECV,
    FinWait1 = TCP_FIN_WAIT1,
    FinWait2 = TCP_FIN_WAIT2,
    TimeWait = TCP_TIME_WAIT,
    Close = TCP_CLOSE,
    CloseWait = TCP_CLOSE_WAIT,
    LastAck = TCP_LAST_ACK,
    Listen = TCP_LISTEN,
    Closing = TCP_CLOSING,
    /// Anything else the kernel reports (a future state, say).
    Unknown = 0,
}

impl State {
    /// The twelve states in the order every output lists them.
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

    /// Kernel state number to state; a request socket counts as SYN_RECV,
    /// as `ss` shows it.
    pub const fn from_kernel(n: u8) -> State {
        match n {
            TCP_ESTABLISHED => State::Established,
            TCP_SYN_SENT => State::SynSent,
            TCP_SYN_RECV | TCP_NEW_SYN_RECV => State::SynRecv,
            TCP_FIN_WAIT1 => State::FinWait1,
            TCP_FIN_WAIT2 => State::FinWait2,
            TCP_TIME_WAIT => State::TimeWait,
            TCP_CLOSE => State::Close,
            TCP_CLOSE_WAIT => State::CloseWait,
            TCP_LAST_ACK => State::LastAck,
            TCP_LISTEN => State::Listen,
            TCP_CLOSING => State::Closing,
            _ => State::Unknown,
        }
    }

    /// The name in the stats JSON and the table (`TIME_WAIT`).
    pub const fn name(self) -> &'static str {
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

    /// Inverse of [`State::name`].
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Position in [`State::ALL`].
    pub const fn index(self) -> usize {
        match self {
            State::Unknown => 11,
            s => s as usize - 1,
        }
    }
}

/// The four tracked socket families, in output order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Tcp4, Family::Tcp6, Family::Udp4, Family::Udp6];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Tcp4 => "tcp4",
            Family::Tcp6 => "tcp6",
            Family::Udp4 => "udp4",
            Family::Udp6 => "udp6",
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The TCP family of a kernel-side family index ([`crate::FAMILY_INET`]
    /// or [`crate::FAMILY_INET6`]).
    pub const fn tcp_of(family_index: u8) -> Family {
        if family_index == crate::FAMILY_INET {
            Family::Tcp4
        } else {
            Family::Tcp6
        }
    }

    pub const fn is_tcp(self) -> bool {
        matches!(self, Family::Tcp4 | Family::Tcp6)
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The seven groups of the stats JSON: each family, then the sums.
pub const GROUPS: [(&str, &[Family]); 7] = [
    ("tcp4", &[Family::Tcp4]),
    ("tcp6", &[Family::Tcp6]),
    ("udp4", &[Family::Udp4]),
    ("udp6", &[Family::Udp6]),
    ("tcp", &[Family::Tcp4, Family::Tcp6]),
    ("udp", &[Family::Udp4, Family::Udp6]),
    ("all", &Family::ALL),
];

/// Socket counts per family and state. Plain data: cheap to copy and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counts {
    cells: [[u64; 12]; 4],
}

impl Counts {
    pub const fn get(&self, family: Family, state: State) -> u64 {
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

    /// Every socket counted.
    pub fn total(&self) -> u64 {
        self.cells.iter().flatten().sum()
    }

    /// Sum of `state` over `families`.
    pub fn sum(&self, families: &[Family], state: State) -> u64 {
        families.iter().map(|&f| self.get(f, state)).sum()
    }

    /// Every (family, state, count) cell, zeros included, in output order.
    pub fn cells(&self) -> impl Iterator<Item = (Family, State, u64)> + '_ {
        Family::ALL
            .into_iter()
            .flat_map(move |f| State::ALL.into_iter().map(move |s| (f, s, self.get(f, s))))
    }
}

/// The stats JSON shape: `{"tcp4": {"ESTABLISHED": n, ...}, ..., "all": {...}}`,
/// seven keys with all twelve states each. Reading takes the four family
/// keys (the sums are derived) and ignores other keys such as `meta`.
#[cfg(feature = "serde")]
mod json {
    use super::{Counts, Family, GROUPS, State};
    use serde::{
        Deserialize, Deserializer, Serialize, Serializer,
        de::{self, IgnoredAny, MapAccess, Visitor},
        ser::SerializeMap,
    };

    struct StateRow<'a>(&'a Counts, &'a [Family]);

    impl Serialize for StateRow<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(State::ALL.len()))?;
            for state in State::ALL {
                map.serialize_entry(state.name(), &self.0.sum(self.1, state))?;
            }
            map.end()
        }
    }

    impl Serialize for Counts {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(GROUPS.len()))?;
            for (key, families) in GROUPS {
                map.serialize_entry(key, &StateRow(self, families))?;
            }
            map.end()
        }
    }

    struct Row([u64; 12]);

    impl<'de> Deserialize<'de> for Row {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Row;
                fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                    f.write_str("an object of state counts")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                    let mut row = [None; 12];
                    while let Some(key) = map.next_key::<std::string::String>()? {
                        let state = State::from_name(&key).ok_or_else(|| {
                            de::Error::custom(format_args!("unknown state {key}"))
                        })?;
                        row[state.index()] = Some(map.next_value::<u64>()?);
                    }
                    let mut out = [0; 12];
                    for (i, n) in row.into_iter().enumerate() {
                        out[i] = n.ok_or_else(|| {
                            de::Error::custom(format_args!(
                                "missing state {}",
                                State::ALL[i].name()
                            ))
                        })?;
                    }
                    Ok(Row(out))
                }
            }
            d.deserialize_map(V)
        }
    }

    impl<'de> Deserialize<'de> for Counts {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counts, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Counts;
                fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                    f.write_str("a stats object (tcp4, tcp6, udp4, udp6, ...)")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                    let mut seen = [false; 4];
                    let mut counts = Counts::default();
                    while let Some(key) = map.next_key::<std::string::String>()? {
                        match Family::from_name(&key) {
                            Some(f) => {
                                counts.cells[f.index()] = map.next_value::<Row>()?.0;
                                seen[f.index()] = true;
                            }
                            None => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    if let Some(i) = seen.iter().position(|s| !s) {
                        return Err(de::Error::missing_field(Family::ALL[i].name()));
                    }
                    Ok(counts)
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_states_map_like_ss() {
        assert_eq!(State::from_kernel(TCP_NEW_SYN_RECV), State::SynRecv);
        assert_eq!(State::from_kernel(99), State::Unknown);
        for (i, s) in State::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(State::from_name(s.name()), Some(*s));
        }
        for f in Family::ALL {
            assert_eq!(Family::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn counts_sum_and_total() {
        let mut c = Counts::default();
        c.add(Family::Tcp4, State::Listen, 3);
        c.add(Family::Tcp6, State::Listen, 2);
        c.add(Family::Udp4, State::Close, 5);
        assert_eq!(c.sum(&[Family::Tcp4, Family::Tcp6], State::Listen), 5);
        assert_eq!(c.total(), 10);
        assert_eq!(c.merged(&c).total(), 20);
        assert_eq!(c.cells().count(), 48);
    }
}
