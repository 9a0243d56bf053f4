//! The plugins' side of the IPAM socket: a small blocking HTTP/1.1 client, so that a
//! plugin run per pod starts no async runtime and opens no API connection.
//!
//! One request per connection (`Connection: close`): the answer ends where the agent
//! closes the connection, and the plugin exits right after anyway.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{
    AllocateRequest, AllocateResponse, CheckRequest, CheckResponse, ErrorBody, MAX_RESPONSE_BYTES,
    PATH_ALLOCATE, PATH_CHECK, PATH_RELEASE, PATH_STATUS, ReleaseRequest, ReleaseResponse,
    StatusResponse,
};

/// How long the plugin waits for the agent's answer. An allocation that claims a block
/// makes a handful of API calls; this leaves room for a slow API server while staying
/// well inside the runtime's own CNI timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest response head (status line and headers) the client reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (no agent, or it is restarting).
    #[error("the Tortie agent is not listening on {socket}: {source}")]
    NotListening {
        /// The socket path.
        socket: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error("the connection to the Tortie agent on {socket} failed: {source}")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The answer is not what the protocol says.
    #[error("the Tortie agent on {socket} answered with {problem}")]
    BadResponse {
        /// The socket path.
        socket: PathBuf,
        /// What is wrong with the answer.
        problem: String,
    },
    /// The agent refused or failed the request, with a CNI error code.
    #[error("{}", .0.msg)]
    Agent(ErrorBody),
}

/// A connection-per-call client of the agent's IPAM socket.
#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    /// A client of the agent listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another answer timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Allocates addresses.
    pub fn allocate(&self, request: &AllocateRequest) -> Result<AllocateResponse, ClientError> {
        self.call("POST", PATH_ALLOCATE, Some(request))
    }

    /// Releases a handle's addresses.
    pub fn release(&self, request: &ReleaseRequest) -> Result<ReleaseResponse, ClientError> {
        self.call("POST", PATH_RELEASE, Some(request))
    }

    /// Reads a handle's addresses.
    pub fn check(&self, request: &CheckRequest) -> Result<CheckResponse, ClientError> {
        self.call("POST", PATH_CHECK, Some(request))
    }

    /// Asks whether the agent can allocate.
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call::<(), _>("GET", PATH_STATUS, None)
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        let body = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|error| self.bad(format!("an unencodable request: {error}")))?,
            None => Vec::new(),
        };
        let (status, answer) = self.exchange(method, path, &body)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&answer).map_err(|error| {
                self.bad(format!(
                    "status {status} and a body that is not a {path} answer: {error}"
                ))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&answer) {
            Ok(error) => Err(ClientError::Agent(error)),
            Err(_) => Err(self.bad(format!(
                "status {status} without an error body: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))),
        }
    }

    /// Sends one request and returns the status code and body of the answer.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::NotListening {
                socket: self.socket.clone(),
                source,
            })?;
        let io = |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;

        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: tortie-agent\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if method != "GET" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).map_err(io)?;
        stream.write_all(body).map_err(io)?;
        stream.flush().map_err(io)?;

        let mut raw = Vec::new();
        stream
            .take((MAX_HEAD_BYTES + MAX_RESPONSE_BYTES + 1) as u64)
            .read_to_end(&mut raw)
            .map_err(io)?;
        parse_response(&raw).map_err(|problem| self.bad(problem))
    }

    fn bad(&self, problem: String) -> ClientError {
        ClientError::BadResponse {
            socket: self.socket.clone(),
            problem,
        }
    }
}

/// Splits an HTTP/1.1 response read to its end into status and body, undoing chunked
/// transfer coding.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| {
            if raw.is_empty() {
                "no answer (the connection closed)".to_owned()
            } else {
                "an incomplete HTTP head".to_owned()
            }
        })?;
    if head_end > MAX_HEAD_BYTES {
        return Err("an HTTP head over 16 KiB".to_owned());
    }
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| "a head that is not text".to_owned())?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("a malformed status line {status_line:?}"))?;

    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a malformed header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }

    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        if body.len() < length {
            return Err(format!(
                "a body cut short ({} of {length} bytes)",
                body.len()
            ));
        }
        body[..length].to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(format!("a body over {MAX_RESPONSE_BYTES} bytes"));
    }
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("a chunk without a size line")?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "a chunk size that is not text")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("a chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 || body.len() + size > MAX_RESPONSE_BYTES {
            return Err("a chunk cut short or too large".to_owned());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sized_response() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(raw), Ok((200, b"{}".to_vec())));
    }

    #[test]
    fn reads_a_chunked_response() {
        let raw = b"HTTP/1.1 507 Insufficient Storage\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Ok((507, b"{\"a\":1}".to_vec())));
    }

    #[test]
    fn refuses_broken_responses() {
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}").is_err());
        assert!(parse_response(b"SSH-2.0 hello\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn no_agent_is_not_listening_naming_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("ipam.sock");
        let error = AgentClient::new(&socket)
            .status()
            .expect_err("nobody listens");
        assert!(matches!(error, ClientError::NotListening { .. }), "{error}");
        assert!(error.to_string().contains(&socket.display().to_string()));
    }
}
