//! The pure part of the check: filters, items and thresholds over a
//! [`Counts`], giving the one-line report and its status.

use std::fmt::Write as _;

use netconn_common::{Counts, Family, State};

use super::{CheckArgs, CheckError, Status, range::Range};

/// The status of one reported item: a TCP state, or `none` for UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ItemStatus {
    Tcp(State),
    None,
}

impl ItemStatus {
    /// Upper-case name with underscores, as used in perfdata labels.
    fn name(self) -> &'static str {
        match self {
            ItemStatus::Tcp(state) => state.name(),
            ItemStatus::None => "NONE",
        }
    }
}

/// The `--conn-type` word for a family (not `Family::name`: `tcp` is IPv4).
fn type_word(family: Family) -> &'static str {
    match family {
        Family::Tcp4 => "tcp",
        Family::Tcp6 => "tcp6",
        Family::Udp4 => "udp",
        Family::Udp6 => "udp6",
    }
}

fn is_udp(family: Family) -> bool {
    matches!(family, Family::Udp4 | Family::Udp6)
}

/// Which (type, status) items the check looks at. `None` in a field means
/// "no filter" (not given, or `all` among the values).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    types: Option<Vec<Family>>,
    statuses: Option<Vec<ItemStatus>>,
    /// The values as given, for the "no connections" message.
    type_label: String,
    status_label: String,
}

/// Parse one flag's values; `None` when unfiltered. Every value is validated
/// even after an `all`, so typos never pass silently.
fn parse_values<T>(
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
    err: impl Fn(String) -> CheckError,
) -> Result<(Option<Vec<T>>, String), CheckError> {
    let mut parsed = Vec::new();
    let mut all = values.is_empty();
    for value in values {
        if value == "all" {
            all = true;
        } else {
            parsed.push(parse(value).ok_or_else(|| err(value.clone()))?);
        }
    }
    if all {
        Ok((None, "all".to_string()))
    } else {
        Ok((Some(parsed), values.join(",")))
    }
}

impl Filter {
    pub fn from_args(args: &CheckArgs) -> Result<Filter, CheckError> {
        let (types, type_label) = parse_values(
            &args.conn_type,
            |v| match v {
                "tcp" => Some(Family::Tcp4),
                "tcp6" => Some(Family::Tcp6),
                "udp" => Some(Family::Udp4),
                "udp6" => Some(Family::Udp6),
                _ => None,
            },
            CheckError::UnknownConnType,
        )?;
        let (statuses, status_label) = parse_values(
            &args.conn_status,
            |v| {
                let state = match v {
                    "none" => return Some(ItemStatus::None),
                    "close" => State::Close,
                    "close_wait" => State::CloseWait,
                    "closing" => State::Closing,
                    "established" => State::Established,
                    "fin_wait1" => State::FinWait1,
                    "fin_wait2" => State::FinWait2,
                    "last_ack" => State::LastAck,
                    "listen" => State::Listen,
                    "syn_recv" => State::SynRecv,
                    "syn_sent" => State::SynSent,
                    "time_wait" => State::TimeWait,
                    _ => return None,
                };
                Some(ItemStatus::Tcp(state))
            },
            CheckError::UnknownConnStatus,
        )?;
        Ok(Filter {
            types,
            statuses,
            type_label,
            status_label,
        })
    }

    fn matches(&self, family: Family, status: ItemStatus) -> bool {
        let type_ok = self.types.as_ref().is_none_or(|t| t.contains(&family));
        let status_ok = match (&self.statuses, status) {
            (None, _) => true,
            // No --conn-status value names UNKNOWN: only an unfiltered check
            // reports it.
            (Some(_), ItemStatus::Tcp(State::Unknown)) => false,
            (Some(s), status) => s.contains(&status),
        };
        type_ok && status_ok
    }

    /// `No connections of type "..." in status "..." found.`
    pub fn empty_message(&self) -> String {
        format!(
            "No connections of type \"{}\" in status \"{}\" found.",
            self.type_label, self.status_label
        )
    }
}

/// One reported line item.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Item {
    family: Family,
    status: ItemStatus,
    count: u64,
}

/// The non-zero items that pass `filter`, sorted by count descending.
///
/// Tie order: by type `tcp`, `tcp6`, `udp`, `udp6` (i.e. [`Family::ALL`]),
/// then by state in [`State::ALL`] order (ESTABLISHED, SYN_SENT, SYN_RECV,
/// FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN,
/// CLOSING, UNKNOWN). UDP families have the single item NONE, the sum of all
/// their states. Built in that order and sorted stably, so ties keep it.
fn items(counts: &Counts, filter: &Filter) -> Vec<Item> {
    let mut items = Vec::new();
    for family in Family::ALL {
        if is_udp(family) {
            let count = counts.family_total(family);
            items.push(Item {
                family,
                status: ItemStatus::None,
                count,
            });
        } else {
            for state in State::ALL {
                items.push(Item {
                    family,
                    status: ItemStatus::Tcp(state),
                    count: counts.get(family, state),
                });
            }
        }
    }
    items.retain(|i| i.count > 0 && filter.matches(i.family, i.status));
    items.sort_by_key(|i| std::cmp::Reverse(i.count));
    items
}

/// Parse an optional threshold flag.
fn parse_threshold(flag: &'static str, value: Option<&str>) -> Result<Option<Range>, CheckError> {
    value
        .map(|v| {
            v.parse().map_err(|source| CheckError::InvalidRange {
                flag,
                value: v.to_string(),
                source,
            })
        })
        .transpose()
}

/// Run the check on `counts`: the output line (no trailing newline) and the
/// state whose [`Status::code`] is the exit code.
///
/// Does not look at `args.version`; the caller handles that first.
pub fn evaluate(counts: &Counts, args: &CheckArgs) -> Result<(String, Status), CheckError> {
    // Validate everything before looking at the data, so a bad argument is
    // reported even when nothing matches.
    let filter = Filter::from_args(args)?;
    let warning = parse_threshold("warning", args.warning.as_deref())?;
    let critical = parse_threshold("critical", args.critical.as_deref())?;

    let items = items(counts, &filter);
    let mut status = Status::Ok;
    let mut text = String::new();
    let mut perfdata = String::new();
    if items.is_empty() {
        text = filter.empty_message();
    }
    for (n, item) in items.iter().enumerate() {
        let value = item.count as f64;
        // CRIT is tested first so an item breaching both is CRITICAL.
        let item_status = if critical.is_some_and(|r| r.alerts(value)) {
            Status::Critical
        } else if warning.is_some_and(|r| r.alerts(value)) {
            Status::Warning
        } else {
            Status::Ok
        };
        status = status.max(item_status);

        let word = type_word(item.family);
        let name = item.status.name();
        if n > 0 {
            text.push_str(", ");
            perfdata.push(' ');
        }
        let _ = write!(text, "{word} {}: {}", name.replace('_', " "), item.count);
        if item_status != Status::Ok {
            let _ = write!(text, " [{}]", item_status.name());
        }
        let _ = write!(perfdata, "'{word}_{name}'={}", item.count);
    }

    if args.always_ok {
        text.push_str(" (always ok)");
        status = Status::Ok;
    }
    if !args.no_perfdata && !perfdata.is_empty() {
        text.push('|');
        text.push_str(&perfdata);
    }
    Ok((text, status))
}
