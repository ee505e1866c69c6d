//! Asking a running agent: connect to its socket, send one typed request,
//! read one typed reply.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use netconn_common::State;

use crate::proto::{
    Alert, Command, ErrorReply, LeaksReply, NamespacesReply, Request, StatsReply, TopReply,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no netconn agent at {0} (start one with `netconn agent`)")]
    NoAgent(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the socket's group")]
    Permission(PathBuf),
    #[error("talking to the agent at {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the agent at {0} sent a malformed reply")]
    Protocol(PathBuf),
    #[error("the agent refused the request: {0}")]
    Agent(String),
}

/// An open connection; reusable for many requests.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    line: String,
}

/// Connect to the agent's socket, mapping the usual failures to what they
/// mean for a user.
pub fn connect_stream(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoAgent(path.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(path.to_path_buf()),
        _ => ClientError::Io(path.to_path_buf(), e),
    })
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = connect_stream(path)?;
        let timeout = Some(Duration::from_secs(10));
        let io = |e| ClientError::Io(path.to_path_buf(), e);
        stream.set_read_timeout(timeout).map_err(io)?;
        stream.set_write_timeout(timeout).map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Send one request, return its reply (an error reply as an error).
    pub fn request<R: DeserializeOwned>(&mut self, request: &Request) -> Result<R, ClientError> {
        let mut bytes =
            serde_json::to_vec(request).map_err(|_| ClientError::Protocol(self.path.clone()))?;
        bytes.push(b'\n');
        let io = |e| ClientError::Io(self.path.clone(), e);
        self.reader.get_mut().write_all(&bytes).map_err(io)?;
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        if n == 0 {
            return Err(ClientError::Protocol(self.path.clone()));
        }
        if let Ok(refusal) = serde_json::from_str::<ErrorReply>(&self.line) {
            return Err(ClientError::Agent(refusal.error));
        }
        serde_json::from_str(&self.line).map_err(|_| ClientError::Protocol(self.path.clone()))
    }

    /// Counts of one namespace (`None`: the agent's own).
    pub fn stats(&mut self, netns: Option<String>) -> Result<StatsReply, ClientError> {
        self.request(&Request::stats(netns))
    }

    /// Counts of every namespace the agent tracks.
    pub fn stats_all(&mut self) -> Result<NamespacesReply, ClientError> {
        self.request(&Request::stats_all())
    }

    /// The leak alerts active in the agent.
    pub fn leaks(&mut self) -> Result<Vec<Alert>, ClientError> {
        let reply: LeaksReply = self.request(&Request::new(Command::Leaks))?;
        Ok(reply.alerts)
    }

    /// Who holds the sockets of `state` in the family group `family`.
    pub fn top(&mut self, state: State, family: &str) -> Result<TopReply, ClientError> {
        self.request(&Request::top(state, family))
    }
}
