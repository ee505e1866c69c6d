//! A minimal HTTP/1 client for the tests (the agent's metrics endpoint and
//! the Prometheus API), no dependency: one request per connection, or
//! [`Client`] for many over one kept-alive connection.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub struct HttpResponse {
    pub status: u16,
    /// Header lines, names lowercased: (name, value).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Send `raw` as is and read the reply until the server closes. For
/// malformed requests; [`get`] builds a proper one.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .with_context(|| format!("reading the reply from {addr}"))?;
    parse(&reply)
}

/// `METHOD path` with `Connection: close`, optional extra header lines.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes())
}

pub fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    request(addr, "GET", path, &[])
}

fn parse(reply: &[u8]) -> Result<HttpResponse> {
    let Some(split) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "no complete HTTP head in {:?}",
            String::from_utf8_lossy(reply)
        );
    };
    let mut response = parse_head(&reply[..split])?;
    let raw_body = &reply[split + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)?
    } else {
        raw_body.to_vec()
    };
    response.body = String::from_utf8(body).context("body is not UTF-8")?;
    Ok(response)
}

/// Status line and headers; the body is left empty.
fn parse_head(head: &[u8]) -> Result<HttpResponse> {
    let head = String::from_utf8_lossy(head).to_string();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: String::new(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One kept-alive connection. A test that compares socket counts with `ss`
/// must not make a connection per request: each would leave a TIME_WAIT
/// socket behind in the namespace it counts.
pub struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connect (in the caller's network namespace; the socket stays there).
    pub fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            addr,
            reader: BufReader::new(stream),
        })
    }

    pub fn get(&mut self, path: &str) -> Result<HttpResponse> {
        let addr = self.addr;
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        self.reader.get_mut().write_all(raw.as_bytes())?;
        let mut head = Vec::new();
        loop {
            let before = head.len();
            let n = self.reader.read_until(b'\n', &mut head)?;
            if n == 0 {
                bail!("{addr} closed the connection");
            }
            if &head[before..] == b"\r\n" {
                break;
            }
        }
        let mut reply = parse_head(&head)?;
        let length = reply
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0u8; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break body;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let Some(length) = length else {
                bail!("reply without length on a kept-alive connection");
            };
            let mut body = vec![0u8; length];
            self.reader.read_exact(&mut body)?;
            body
        };
        reply.body = String::from_utf8(body).context("body is not UTF-8")?;
        Ok(reply)
    }
}

/// Percent-encode a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
