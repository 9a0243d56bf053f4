//! A container's `lifecycle.preStop` hook, run as the kubelet runs it when a pod is
//! deleted: before the container is signalled, with the pod's termination grace period as
//! its deadline, and the container's stop getting what is left of that period.
//!
//! An exec hook runs inside the container's own mount and network namespaces (entered
//! through its process), with the container's environment and with `command[0]` resolved
//! the way the container's own program is. A sleep hook waits. httpGet and tcpSocket hooks
//! are logged and skipped.

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::{info, warn};

use super::NodeContext;
use super::container::{environment, image_binary};

/// The least a container gets between SIGTERM and SIGKILL after its preStop hook, even
/// when the hook used the whole grace period (the kubelet grants the same two seconds).
pub const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// What a container's preStop hook asks the node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreStop {
    /// Run this command in the container.
    Exec(Vec<String>),
    /// Wait this long.
    Sleep(Duration),
    /// A handler the node runtime does not run; the text names it.
    Unsupported(&'static str),
}

/// The container's preStop hook, if it has one.
pub fn pre_stop(container: &Container) -> Option<PreStop> {
    let handler = container.lifecycle.as_ref()?.pre_stop.as_ref()?;
    let hook = if let Some(exec) = &handler.exec {
        PreStop::Exec(exec.command.clone().unwrap_or_default())
    } else if let Some(sleep) = &handler.sleep {
        PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        ))
    } else if handler.http_get.is_some() {
        PreStop::Unsupported("httpGet")
    } else if handler.tcp_socket.is_some() {
        PreStop::Unsupported("tcpSocket")
    } else {
        PreStop::Unsupported("a handler with no action")
    };
    Some(hook)
}

/// The program and arguments of an exec hook. In one of Tortie's images `command[0]` is the
/// locally built binary of that name, as for the container's own program; otherwise (and
/// when no such binary exists) the command runs as written, found on the container's PATH.
pub fn exec_argv(
    command: &[String],
    image: &str,
    image_bin_dir: &Path,
) -> Result<Vec<String>, String> {
    let Some((first, rest)) = command.split_first() else {
        return Err("the preStop exec hook has an empty command".into());
    };
    let local = image_binary(image_bin_dir, first);
    let program = if super::is_tortie_image(image) && local.is_file() {
        local.to_string_lossy().into_owned()
    } else {
        first.clone()
    };
    Ok(std::iter::once(program)
        .chain(rest.iter().cloned())
        .collect())
}

/// How long the container's stop may take once its hook has used `spent` of `grace`: the
/// rest of the period, but never less than [`MIN_STOP_GRACE`].
pub fn remaining_grace(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_STOP_GRACE)
}

/// Where and as what a container's hook runs.
#[derive(Clone, Debug)]
pub struct HookTarget {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// The pod.
    pub pod: Arc<Pod>,
    /// The container.
    pub container: Container,
    /// The container's process, whose mount and network namespaces the hook enters.
    pub pid: u32,
    /// The pod's address, for the container's environment.
    pub pod_ip: IpAddr,
}

/// Runs the container's preStop hook, if any, for at most `deadline`. `Err` says what failed,
/// for the pod's events; the container is stopped either way.
pub async fn run_pre_stop(target: &HookTarget, deadline: Duration) -> Result<(), String> {
    let Some(hook) = pre_stop(&target.container) else {
        return Ok(());
    };
    let container = &target.container.name;
    match hook {
        PreStop::Unsupported(kind) => {
            warn!(
                %container,
                kind,
                "preStop hook not run: the node runtime runs exec and sleep hooks only",
            );
            Ok(())
        }
        PreStop::Sleep(length) => {
            info!(%container, ?length, "preStop hook: sleeping");
            tokio::time::sleep(length.min(deadline)).await;
            Ok(())
        }
        PreStop::Exec(command) => {
            info!(%container, ?command, ?deadline, "running preStop hook");
            let result = run_exec(target, &command, deadline).await;
            match &result {
                Ok(()) => info!(%container, "preStop hook finished"),
                Err(message) => warn!(%container, %message, "preStop hook failed"),
            }
            result
        }
    }
}

async fn run_exec(
    target: &HookTarget,
    command: &[String],
    deadline: Duration,
) -> Result<(), String> {
    let image = target.container.image.as_deref().unwrap_or_default();
    let argv = exec_argv(command, image, &target.ctx.config.image_bin_dir)?;
    let env = environment(&target.ctx, &target.pod, &target.container, target.pod_ip).await?;
    let pid = target.pid.to_string();
    let child = tokio::process::Command::new("nsenter")
        .args(["--target", &pid, "--mount", "--net", "--"])
        .args(&argv)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("could not run the preStop hook {argv:?}: {error}"))?;
    let output = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Err(_) => {
            return Err(format!(
                "preStop hook {argv:?} still running after the grace period of {}s; it was killed",
                deadline.as_secs()
            ));
        }
        Ok(Err(error)) => return Err(format!("preStop hook {argv:?}: {error}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Err(format!(
        "preStop hook {argv:?} failed ({}): {}",
        output.status,
        text.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, SleepAction,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn with_pre_stop(handler: LifecycleHandler) -> Container {
        Container {
            name: "agent".into(),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(handler),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_hook_is_read_from_the_container() {
        assert_eq!(pre_stop(&Container::default()), None);
        let exec = with_pre_stop(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["tortie-agent".into(), "remove-cni-config".into()]),
            }),
            ..Default::default()
        });
        assert_eq!(
            pre_stop(&exec),
            Some(PreStop::Exec(vec![
                "tortie-agent".into(),
                "remove-cni-config".into()
            ]))
        );
        let sleep = with_pre_stop(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..Default::default()
        });
        assert_eq!(
            pre_stop(&sleep),
            Some(PreStop::Sleep(Duration::from_secs(5)))
        );
        let http = with_pre_stop(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(pre_stop(&http), Some(PreStop::Unsupported("httpGet")));
    }

    #[test]
    fn tortie_images_run_their_local_binary_others_the_command_as_written() {
        let dir = std::env::temp_dir().join(format!("hook-test-{}", super::super::random_id(6)));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        std::fs::write(dir.join("tortie-agent"), b"").expect("the temp dir is writable");
        let command = vec![
            "/usr/local/bin/tortie-agent".to_string(),
            "remove-cni-config".into(),
        ];

        let local = exec_argv(&command, "tortie/agent:dev", &dir);
        let other = exec_argv(&command, "busybox", &dir);
        let missing = exec_argv(
            &["tortie-operator".to_string()],
            "tortie/operator:dev",
            &dir,
        );
        let empty = exec_argv(&[], "tortie/agent:dev", &dir);
        std::fs::remove_dir_all(&dir).expect("the temp dir can be removed");

        let binary = dir.join("tortie-agent").to_string_lossy().into_owned();
        assert_eq!(local, Ok(vec![binary, "remove-cni-config".to_string()]));
        assert_eq!(other, Ok(command));
        assert_eq!(missing, Ok(vec!["tortie-operator".to_string()]));
        assert!(empty.is_err_and(|message| message.contains("empty command")));
    }

    #[test]
    fn the_stop_gets_what_the_hook_left_but_at_least_two_seconds() {
        let grace = Duration::from_secs(30);
        assert_eq!(
            remaining_grace(grace, Duration::from_secs(4)),
            Duration::from_secs(26)
        );
        assert_eq!(remaining_grace(grace, Duration::ZERO), grace);
        assert_eq!(
            remaining_grace(grace, Duration::from_secs(29)),
            MIN_STOP_GRACE
        );
        assert_eq!(
            remaining_grace(grace, Duration::from_secs(45)),
            MIN_STOP_GRACE
        );
        assert_eq!(
            remaining_grace(Duration::ZERO, Duration::ZERO),
            MIN_STOP_GRACE
        );
    }
}
