//! Readiness and liveness probes (httpGet, tcpSocket, exec), run in the pod's network
//! namespace: httpGet and tcpSocket through this binary's `probe` subcommand, exec inside
//! the container's own mount and network namespaces.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

/// The state of one probe of one container run.
#[derive(Clone, Debug, Default)]
pub struct ProbeTracker {
    probe: Option<Probe>,
    next_due: Option<Instant>,
    successes: i32,
    failures: i32,
    in_flight: bool,
    /// The probe's verdict once a threshold was reached; `None` before.
    pub passing: Option<bool>,
}

impl ProbeTracker {
    /// A tracker for `probe` (none: never due, never passing).
    pub fn new(probe: Option<Probe>) -> Self {
        ProbeTracker {
            probe,
            ..Default::default()
        }
    }

    /// True when the container has this probe.
    pub fn is_set(&self) -> bool {
        self.probe.is_some()
    }

    /// Starts over for a new run of the container: first check after the initial delay.
    pub fn reset(&mut self, now: Instant) {
        let delay = self.field(|p| p.initial_delay_seconds, 0);
        *self = ProbeTracker::new(self.probe.take());
        self.next_due = Some(now + seconds(delay));
    }

    /// Forgets the container run: no probe is due until the next [`ProbeTracker::reset`].
    pub fn stop(&mut self) {
        *self = ProbeTracker::new(self.probe.take());
    }

    /// The probe to run now, if one is due; marks it in flight until [`ProbeTracker::record`].
    pub fn start_if_due(&mut self, now: Instant) -> Option<Probe> {
        let due = self.next_due.is_some_and(|at| now >= at);
        if !due || self.in_flight {
            return None;
        }
        self.in_flight = true;
        self.next_due = Some(now + seconds(self.field(|p| p.period_seconds, 10)));
        self.probe.clone()
    }

    /// Counts one result; true when the verdict changed.
    pub fn record(&mut self, ok: bool) -> bool {
        self.in_flight = false;
        let before = self.passing;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.field(|p| p.success_threshold, 1) {
                self.passing = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.field(|p| p.failure_threshold, 3) {
                self.passing = Some(false);
            }
        }
        before != self.passing
    }

    fn field(&self, get: impl Fn(&Probe) -> Option<i32>, default: i32) -> i32 {
        self.probe.as_ref().and_then(get).unwrap_or(default).max(0)
    }
}

/// Where a probe runs.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The pod's network namespace; `None` for hostNetwork.
    pub netns: Option<String>,
    /// The container's process (exec probes enter its namespaces).
    pub pid: u32,
    /// The pod's address, the default host of httpGet and tcpSocket.
    pub pod_ip: IpAddr,
    /// This binary.
    pub self_binary: PathBuf,
    /// Where Tortie's image binaries are, for exec probes of Tortie's images.
    pub image_bin_dir: Option<PathBuf>,
}

/// Runs a probe once; `Err` carries what failed.
pub async fn run(probe: &Probe, container: &Container, target: &ProbeTarget) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds.unwrap_or(1).max(1));
    let in_netns = |mut argv: Vec<String>| {
        if let Some(netns) = &target.netns {
            let mut prefixed: Vec<String> =
                ["ip", "netns", "exec", netns].map(str::to_string).to_vec();
            prefixed.append(&mut argv);
            argv = prefixed;
        }
        argv
    };
    let argv: Vec<String> = if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the node runtime; use HTTP".into());
        }
        let port = resolve_port(&http.port, container)?;
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.to_string());
        in_netns(vec![
            target.self_binary.to_string_lossy().into_owned(),
            "probe".into(),
            "http".into(),
            "--host".into(),
            host,
            "--port".into(),
            port.to_string(),
            "--path".into(),
            http.path.clone().unwrap_or_else(|| "/".into()),
            "--timeout-seconds".into(),
            timeout.as_secs().to_string(),
        ])
    } else if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)?;
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.to_string());
        in_netns(vec![
            target.self_binary.to_string_lossy().into_owned(),
            "probe".into(),
            "tcp".into(),
            "--host".into(),
            host,
            "--port".into(),
            port.to_string(),
            "--timeout-seconds".into(),
            timeout.as_secs().to_string(),
        ])
    } else if let Some(exec) = &probe.exec {
        let mut command = exec.command.clone().unwrap_or_default();
        let Some(first) = command.first_mut() else {
            return Err("exec probe has an empty command".into());
        };
        if let Some(dir) = &target.image_bin_dir {
            let local = super::container::image_binary(dir, first);
            if local.is_file() {
                *first = local.to_string_lossy().into_owned();
            }
        }
        let mut argv: Vec<String> = [
            "nsenter",
            "--target",
            &target.pid.to_string(),
            "--mount",
            "--net",
            "--",
        ]
        .map(str::to_string)
        .to_vec();
        argv.append(&mut command);
        argv
    } else {
        return Err(
            "the probe has no httpGet, tcpSocket or exec handler (gRPC probes are not supported)"
                .into(),
        );
    };

    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("could not run the probe ({}): {error}", argv[0]))?;
    match tokio::time::timeout(timeout + Duration::from_secs(1), child.wait_with_output()).await {
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
        Ok(Err(error)) => Err(format!("probe failed to run: {error}")),
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let text = format!(
                "{} {}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Err(format!("probe failed ({}): {}", output.status, text.trim()))
        }
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(number) => number,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    format!(
                        "the probe's port {name:?} is not a named port of container {:?}",
                        container.name
                    )
                })?,
        },
    };
    u16::try_from(number).map_err(|_| format!("the probe's port {number} is not a TCP port"))
}

fn seconds(value: i32) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn thresholds_decide_the_verdict() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(5),
            initial_delay_seconds: Some(3),
            ..Default::default()
        };
        let mut tracker = ProbeTracker::new(Some(probe));
        let now = Instant::now();
        assert!(
            tracker.start_if_due(now).is_none(),
            "not due before a reset"
        );
        tracker.reset(now);
        assert!(tracker.start_if_due(now).is_none(), "initial delay");
        let later = now + Duration::from_secs(3);
        assert!(tracker.start_if_due(later).is_some());
        assert!(
            tracker
                .start_if_due(later + Duration::from_secs(10))
                .is_none(),
            "one in flight at a time"
        );
        assert!(tracker.record(true), "first success passes");
        assert_eq!(tracker.passing, Some(true));
        assert!(!tracker.record(false), "one failure is below the threshold");
        assert!(tracker.record(false));
        assert_eq!(tracker.passing, Some(false));
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let container = Container {
            name: "agent".into(),
            ports: Some(vec![ContainerPort {
                name: Some("health".into()),
                container_port: 9099,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("health".into()), &container),
            Ok(9099)
        );
        assert_eq!(resolve_port(&IntOrString::Int(80), &container), Ok(80));
        assert!(resolve_port(&IntOrString::String("metrics".into()), &container).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &container).is_err());
    }
}
