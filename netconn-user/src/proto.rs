//! The agent's wire protocol on its Unix socket: one JSON object per line
//! each way. Requests: `{"cmd":"stats"}`, `{"cmd":"ping"}`, and
//! `{"cmd":"watch","filter":{...},"alerts":false}`, `{"cmd":"leaks"}`. Replies: the stats
//! object (seven count keys plus `meta`), `{"pong":true}`, a stream of
//! event lines for `watch`, or `{"error":"..."}` for anything the agent
//! cannot serve.

use serde::Deserialize;

use crate::stream::Filter;

/// The agent's socket when neither `--socket` nor `NETCONN_SOCKET` is given.
pub const DEFAULT_SOCKET: &str = "/run/netconn.sock";

/// Longest request line accepted; longer ones get an error and the
/// connection is closed (there is no way to find the next request in it).
pub const MAX_REQUEST: usize = 4096;

/// A request line. A struct rather than an internally tagged enum: serde
/// ignores `deny_unknown_fields` on unit variants, and unknown fields must
/// be refused, not silently dropped.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub cmd: Command,
    /// `watch` only: which transitions to send.
    #[serde(default)]
    pub filter: Filter,
    /// `watch` only: send leak alerts instead of transitions.
    #[serde(default)]
    pub alerts: bool,
}

#[derive(Debug, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Stats,
    Ping,
    Watch,
    /// The leak alerts active now: `{"alerts":[...]}`.
    Leaks,
}

pub fn error_reply(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_requests_and_rejects_others() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).ok(),
            Some(Request {
                cmd: Command::Stats,
                filter: Filter::default(),
                alerts: false,
            })
        );
        let watch: Request =
            serde_json::from_str(r#"{"cmd":"watch","filter":{"port":[80]},"alerts":true}"#)
                .unwrap();
        assert_eq!(watch.filter.port, vec![80]);
        assert!(watch.alerts);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"drop_tables"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stats","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>("stats").is_err());
    }
}
