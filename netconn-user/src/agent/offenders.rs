//! `top` requests: who holds the sockets of one state (top local ports,
//! remote endpoints, owning processes), answered with the leak detector's
//! logic (a state-filtered sock_diag dump, then one /proc scan).
//!
//! A dump plus a /proc scan costs milliseconds to tens of them on a busy
//! host, so each (family group, state) answer is reused for [`CACHE_FOR`]:
//! `netconn top` asks every second, and any number of them cost one lookup
//! per state every few seconds. The lookup runs on a blocking thread so the
//! server's single runtime thread keeps answering `stats` meanwhile.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netconn_common::{Family, State};

use super::{
    Agent, alerts,
    leaks::{self, Owners, SocketInfo},
    tracker::Tracker,
};
use crate::{
    kernel::diag::DiagError,
    proto::{Request, TopReply, error_reply},
};

/// How long one breakdown is reused.
const CACHE_FOR: Duration = Duration::from_secs(3);
/// Entries in each list: enough to fill a tall terminal.
const TOP: usize = 10;

/// Recent answers by (family group, state). At most 7 x 12 entries, and
/// expired ones are dropped whenever a lookup runs.
#[derive(Default)]
pub struct OffenderCache(Mutex<HashMap<Key, (Instant, TopReply)>>);

/// (family group, state).
type Key = (&'static str, State);

/// Answer one `top` request: the reply line, or an error line for a bad
/// request (the connection stays open, like for any refused request).
pub async fn answer(request: &Request, agent: &Arc<Agent>) -> String {
    let (state, group, families) = match request.top_query() {
        Ok(query) => query,
        Err(message) => return error_reply(&message),
    };
    let agent = Arc::clone(agent);
    let lookup = tokio::task::spawn_blocking(move || {
        agent.offenders.get(&agent.tracker, state, group, families)
    })
    .await;
    let reply = match lookup {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return error_reply(&format!("listing the sockets: {e}")),
        Err(e) => return error_reply(&format!("internal error: {e}")),
    };
    serde_json::to_string(&reply).unwrap_or_else(|e| error_reply(&format!("internal error: {e}")))
}

impl OffenderCache {
    fn get(
        &self,
        tracker: &Tracker,
        state: State,
        group: &'static str,
        families: &[Family],
    ) -> Result<TopReply, DiagError> {
        // Held through the lookup: clients asking at once for the same
        // breakdown wait for one lookup instead of each making their own.
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((at, reply)) = cache.get(&(group, state))
            && now.saturating_duration_since(*at) < CACHE_FOR
        {
            let mut reply = reply.clone();
            reply.age_ms = now.saturating_duration_since(*at).as_secs_f64() * 1e3;
            return Ok(reply);
        }
        cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_FOR);
        let reply = lookup(tracker.netns(), state, group, families)?;
        cache.insert((group, state), (now, reply.clone()));
        Ok(reply)
    }
}

fn lookup(
    netns: u32,
    state: State,
    group: &'static str,
    families: &[Family],
) -> Result<TopReply, DiagError> {
    let wanted: Vec<(Family, State)> = families.iter().map(|&f| (f, state)).collect();
    // No ages: they cost a map lookup per socket and `top` does not show them.
    let sockets = alerts::sockets_in(None, &wanted)?;
    let inodes = sockets
        .iter()
        .map(|s| s.inode)
        .filter(|&inode| inode != 0)
        .collect();
    let owners = Owners::lookup(&inodes);
    let refs: Vec<&SocketInfo> = sockets.iter().collect();
    Ok(TopReply {
        state: state.name().to_string(),
        family: group.to_string(),
        netns,
        sockets: sockets.len() as u64,
        age_ms: 0.0,
        offenders: leaks::offenders_top(&refs, &owners, TOP),
    })
}
