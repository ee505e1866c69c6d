//! Asking a running agent: connect to its socket, send one request line,
//! read one reply line.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
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

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoAgent(path.to_path_buf())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Permission(path.to_path_buf()),
            _ => ClientError::Io(path.to_path_buf(), e),
        })?;
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

    /// Send one request object, return the reply object.
    pub fn request(
        &mut self,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let mut bytes = request.to_string().into_bytes();
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
        let reply: serde_json::Value = serde_json::from_str(&self.line)
            .map_err(|_| ClientError::Protocol(self.path.clone()))?;
        if let Some(message) = reply.get("error").and_then(|e| e.as_str()) {
            return Err(ClientError::Agent(message.to_string()));
        }
        Ok(reply)
    }

    pub fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        self.request(&serde_json::json!({ "cmd": "stats" }))
    }

    /// The leak alerts active in the agent.
    pub fn leaks(&mut self) -> Result<Vec<crate::leaks::Alert>, ClientError> {
        let reply = self.request(&serde_json::json!({ "cmd": "leaks" }))?;
        serde_json::from_value(reply["alerts"].clone())
            .map_err(|_| ClientError::Protocol(self.path.clone()))
    }
}
