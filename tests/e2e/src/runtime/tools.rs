//! The small programs the runtime runs inside pods: the test server that stands in for any
//! image that is not Tortie's, the client that probes and connects, and `whoami`, which
//! shows what a pod process sees (environment, service-account identity).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

/// How long the test server waits for a client to speak before it answers anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(300);

/// Serves on every port: a client that sends an HTTP request gets `200 OK` with the pod's
/// name as the body; a client that sends nothing gets the name and a newline. Runs until
/// killed; with no ports it just waits.
pub fn pod_server(name: &str, ports: &[u16]) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for port in ports {
        let listener = TcpListener::bind(("0.0.0.0", *port))?;
        listeners.push(listener);
    }
    eprintln!("pod-server {name}: listening on TCP ports {ports:?}");
    let mut threads = Vec::new();
    for listener in listeners {
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || answer(stream, &name));
            }
        }));
    }
    if threads.is_empty() {
        loop {
            std::thread::park();
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn answer(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(FIRST_BYTES_WAIT));
    let mut buffer = [0_u8; 1024];
    let read = stream.read(&mut buffer).unwrap_or(0);
    let request = String::from_utf8_lossy(&buffer[..read]);
    let is_http = ["GET ", "HEAD ", "POST ", "PUT "]
        .iter()
        .any(|m| request.starts_with(m));
    let reply = if is_http {
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{name}\n",
            name.len() + 1
        )
    } else {
        format!("{name}\n")
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// Connects, sends nothing, and returns what the server says until it closes.
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let mut stream = open(host, port, timeout)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|error| format!("reading from {host}:{port}: {error}"))?;
    Ok(reply)
}

/// An HTTP GET: success on a status from 200 to 399, as the kubelet's httpGet probe.
pub fn probe_http(host: &str, port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    let mut stream = open(host, port, timeout)?;
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\
         User-Agent: kube-probe/tortie-node-runtime\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("sending to {host}:{port}: {error}"))?;
    let mut reply = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let status_line = text.lines().next().unwrap_or_default().to_string();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {host}:{port}{path}: {status_line:?}"))?;
    if (200..400).contains(&code) {
        Ok(status_line)
    } else {
        Err(format!(
            "HTTP probe of {host}:{port}{path} failed with statuscode: {code}"
        ))
    }
}

/// A TCP connect, as the kubelet's tcpSocket probe.
pub fn probe_tcp(host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    open(host, port, timeout).map(|_| format!("connected to {host}:{port}"))
}

fn open(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let address: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("{host}:{port}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| format!("connecting to {address}: {error}"))
}

/// The environment variables `whoami` prints (the downward API and the API server's address).
pub const WHOAMI_VARIABLES: [&str; 8] = [
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_UID",
    "NODE_NAME",
    "POD_IP",
    "HOST_IP",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Prints `env NAME=value` for [`WHOAMI_VARIABLES`], then asks the API server who it is with
/// the in-cluster configuration (service-account token, CA and `KUBERNETES_SERVICE_*`) and
/// prints `identity <user>`; then serves `200 OK` on `health_port` (for a readiness probe)
/// until killed. Never prints the token.
pub async fn whoami(health_port: u16) -> Result<(), String> {
    for name in WHOAMI_VARIABLES {
        println!("env {name}={}", std::env::var(name).unwrap_or_default());
    }
    let identity = loop {
        match ask_identity().await {
            Ok(identity) => break identity,
            Err(error) => {
                println!("identity-error {error}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    println!("identity {identity}");
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", health_port))
        .await
        .map_err(|error| format!("health port {health_port}: {error}"))?;
    println!("serving health on port {health_port}");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buffer = [0_u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .await;
        });
    }
}

async fn ask_identity() -> Result<String, String> {
    let config =
        kube::Config::incluster_env().map_err(|error| format!("in-cluster config: {error}"))?;
    let client = kube::Client::try_from(config).map_err(|error| format!("client: {error}"))?;
    let reviews: Api<SelfSubjectReview> = Api::all(client);
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|error| format!("SelfSubjectReview: {error}"))?;
    review
        .status
        .and_then(|status| status.user_info)
        .and_then(|user| user.username)
        .ok_or_else(|| "SelfSubjectReview answered without a user".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_server_answers_plain_and_http_clients_with_its_name() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, "web-1");
            }
        });
        let timeout = Duration::from_secs(2);
        assert_eq!(
            connect("127.0.0.1", port, timeout).as_deref(),
            Ok("web-1\n")
        );
        let status = probe_http("127.0.0.1", port, "/healthz", timeout).expect("HTTP 200");
        assert!(status.contains("200"), "{status}");
        assert!(probe_tcp("127.0.0.1", port, timeout).is_ok());
    }

    #[test]
    fn a_closed_port_fails_the_probes() {
        let port = {
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
            listener.local_addr().expect("bound").port()
        };
        let timeout = Duration::from_secs(1);
        assert!(probe_tcp("127.0.0.1", port, timeout).is_err());
        assert!(probe_http("127.0.0.1", port, "/", timeout).is_err());
    }
}
