//! What the agent reports: the `NodeNetworkConfig` status (what generation is applied, and
//! the last error) and the Node's `NetworkUnavailable` condition.
//!
//! The status is computed by a pure function from the last applied outcome and the status
//! written before, and written only when it differs, so steady-state resyncs cost the API
//! server nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tortie_crds::node_network_config::{
    NodeNetworkConfig, NodeNetworkConfigStatus, NodeNetworkConfigSummary, OwnedBlock,
};
use tracing::{debug, info, warn};

use super::health::Health;

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "tortie-agent";

/// The condition type of the NodeNetworkConfig status the agent owns.
pub const READY: &str = "Ready";

/// Reason of a Ready condition that is True.
pub const REASON_PROGRAMMED: &str = "Programmed";

/// Reason of a Ready condition that is False.
pub const REASON_APPLY_FAILED: &str = "ApplyFailed";

/// The Node condition the agent clears once the node is programmed.
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// Reason of the agent's `NetworkUnavailable=False`.
pub const REASON_TORTIE_IS_UP: &str = "TortieIsUp";

/// Longest wait between attempts to write status while the API server refuses.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The result of one attempt to apply a generation of the node config.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `metadata.generation` of the config that was applied.
    pub generation: Option<i64>,
    /// What was programmed, or the error that stopped it.
    pub result: Result<Programmed, String>,
    /// The config's blocks, for the summary column.
    pub blocks: Vec<OwnedBlock>,
    /// BGP sessions the config asks for; `None` when it runs no BGP.
    pub bgp_sessions: Option<usize>,
    /// The status the object carried when it was read; what is compared against before
    /// the agent has written anything itself.
    pub seen_status: Option<NodeNetworkConfigStatus>,
}

/// Counts of what a successful apply programmed, for the condition message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programmed {
    /// Blocks routed locally (blackholes).
    pub blocks: usize,
    /// Routes to other nodes.
    pub routes: usize,
}

/// The status after `outcome`, given the status written before. Timestamps move only when
/// what they describe changes: `appliedAt` when a new generation is applied, a condition's
/// `lastTransitionTime` when its status flips.
pub fn next_status(
    previous: Option<&NodeNetworkConfigStatus>,
    outcome: &Outcome,
    now: Timestamp,
) -> NodeNetworkConfigStatus {
    let previous_ready = previous.and_then(|status| ready_condition(status));
    let previous_observed = previous.and_then(|status| status.observed_generation);

    let (observed_generation, applied_at, status, reason, message, error) = match &outcome.result {
        Ok(programmed) => {
            let same_generation = previous_observed == outcome.generation
                && previous_ready.is_some_and(|ready| ready.status == "True");
            let applied_at = previous
                .and_then(|status| status.applied_at.clone())
                .filter(|_| same_generation)
                .unwrap_or(Time(now));
            let message = format!(
                "The node is programmed as generation {} says: {} local {}, {} {} to other \
                 nodes",
                generation_text(outcome.generation),
                programmed.blocks,
                plural(programmed.blocks, "block", "blocks"),
                programmed.routes,
                plural(programmed.routes, "route", "routes"),
            );
            (
                outcome.generation,
                Some(applied_at),
                "True",
                REASON_PROGRAMMED,
                message,
                None,
            )
        }
        Err(error) => (
            previous_observed,
            previous.and_then(|status| status.applied_at.clone()),
            "False",
            REASON_APPLY_FAILED,
            format!(
                "Generation {} could not be applied: {error}",
                generation_text(outcome.generation)
            ),
            Some(error.clone()),
        ),
    };

    let last_transition_time = previous_ready
        .filter(|ready| ready.status == status)
        .map(|ready| ready.last_transition_time.clone())
        .unwrap_or(Time(now));
    let ready = Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: outcome.generation,
        last_transition_time,
    };
    let bgp = outcome.bgp_sessions.map(|total| (0, total));

    NodeNetworkConfigStatus {
        observed_generation,
        applied_at,
        conditions: vec![ready],
        // Known limitation: this agent runs no BGP speaker yet, so it reports no sessions;
        // the summary counts none of them as up.
        bgp_sessions: Vec::new(),
        error,
        summary: Some(NodeNetworkConfigSummary::new(
            &outcome.blocks,
            bgp,
            observed_generation,
            outcome.generation,
        )),
    }
}

/// The `Ready` condition of a status.
pub fn ready_condition(status: &NodeNetworkConfigStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|condition| condition.type_ == READY)
}

/// Whether two statuses say the same thing, ignoring conditions the agent does not own.
fn same_report(a: &NodeNetworkConfigStatus, b: &NodeNetworkConfigStatus) -> bool {
    a.observed_generation == b.observed_generation
        && a.applied_at == b.applied_at
        && a.error == b.error
        && a.summary == b.summary
        && ready_condition(a) == ready_condition(b)
}

fn generation_text(generation: Option<i64>) -> String {
    generation.map_or_else(|| "-".to_owned(), |g| g.to_string())
}

fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 { one } else { many }
}

/// Writes the status of each new outcome, and clears the Node's `NetworkUnavailable` after
/// the first successful one. Retries with backoff while the API server refuses; a newer
/// outcome replaces one not yet written. Returns when `outcomes`' sender is dropped or
/// `stop` fires.
pub async fn run_writer(
    client: kube::Client,
    node_name: String,
    mut outcomes: watch::Receiver<Option<Outcome>>,
    health: Health,
    mut stop: watch::Receiver<bool>,
) {
    let configs: Api<NodeNetworkConfig> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let mut written: Option<NodeNetworkConfigStatus> = None;
    let mut node_marked = false;
    let mut retry = Duration::from_secs(1);
    let mut pending = false;

    loop {
        if !pending {
            tokio::select! {
                changed = outcomes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        let Some(outcome) = outcomes.borrow_and_update().clone() else {
            pending = false;
            continue;
        };

        let mut failed = false;
        if outcome.result.is_ok() && !node_marked {
            match mark_network_available(&nodes, &node_name).await {
                Ok(()) => {
                    node_marked = true;
                    info!(node = %node_name, "Node marked NetworkUnavailable=False");
                }
                Err(error) => {
                    warn!(node = %node_name, %error, "Could not set the Node's NetworkUnavailable condition");
                    failed = true;
                }
            }
        }

        let previous = written.as_ref().or(outcome.seen_status.as_ref());
        let status = next_status(previous, &outcome, Timestamp::now());
        if previous.is_some_and(|previous| same_report(previous, &status)) {
            debug!(node = %node_name, "Status unchanged");
            written = Some(status);
        } else {
            match write_status(&configs, &node_name, &status).await {
                Ok(()) => {
                    debug!(node = %node_name, ?status.observed_generation, "Status written");
                    health.status_written();
                    written = Some(status);
                }
                Err(error) => {
                    warn!(node = %node_name, %error, "Could not write the NodeNetworkConfig status");
                    failed = true;
                }
            }
        }

        pending = failed;
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                changed = outcomes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            retry = (retry * 2).min(MAX_RETRY);
        } else {
            retry = Duration::from_secs(1);
        }
    }
}

/// Server-side apply of the status, owned by [`FIELD_MANAGER`].
async fn write_status(
    configs: &Api<NodeNetworkConfig>,
    name: &str,
    status: &NodeNetworkConfigStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "tortie.dev/v1alpha1",
        "kind": "NodeNetworkConfig",
        "metadata": { "name": name },
        "status": status,
    });
    configs
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Sets `NetworkUnavailable=False` on the Node. A strategic merge patch merges conditions
/// by type, so the kubelet's and other controllers' conditions are left as they are.
async fn mark_network_available(nodes: &Api<Node>, name: &str) -> Result<(), kube::Error> {
    let now = Time(Timestamp::now());
    let patch = json!({
        "status": {
            "conditions": [{
                "type": NETWORK_UNAVAILABLE,
                "status": "False",
                "reason": REASON_TORTIE_IS_UP,
                "message": "Tortie has programmed this node's routes and installed its CNI \
                            configuration",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid timestamp")
    }

    fn outcome(generation: i64, result: Result<Programmed, String>) -> Outcome {
        Outcome {
            generation: Some(generation),
            result,
            blocks: vec![OwnedBlock {
                cidr: "10.244.1.0/26".into(),
                pool: "default".into(),
            }],
            bgp_sessions: None,
            seen_status: None,
        }
    }

    const PROGRAMMED: Programmed = Programmed {
        blocks: 1,
        routes: 2,
    };

    #[test]
    fn a_first_success_reports_ready_and_the_summary() {
        let status = next_status(None, &outcome(3, Ok(PROGRAMMED)), at(0));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.applied_at, Some(Time(at(0))));
        assert_eq!(status.error, None);
        let ready = ready_condition(&status).expect("Ready condition");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason, "Programmed");
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(
            ready.message,
            "The node is programmed as generation 3 says: 1 local block, 2 routes to other nodes"
        );
        let summary = status.summary.expect("summary");
        assert_eq!(summary.applied.as_deref(), Some("3/3"));
        assert_eq!(summary.blocks.as_deref(), Some("10.244.1.0/26"));
        assert_eq!(summary.bgp.as_deref(), Some("off"));
    }

    #[test]
    fn resyncs_of_the_same_generation_change_nothing() {
        let first = next_status(None, &outcome(3, Ok(PROGRAMMED)), at(0));
        let again = next_status(Some(&first), &outcome(3, Ok(PROGRAMMED)), at(90));
        assert_eq!(first, again);
        assert!(same_report(&first, &again));
    }

    #[test]
    fn a_failure_keeps_the_applied_generation_and_names_the_error() {
        let first = next_status(None, &outcome(3, Ok(PROGRAMMED)), at(0));
        let failed = next_status(
            Some(&first),
            &outcome(
                4,
                Err("spec.routes[0].via: \"x\" is not an IP address".into()),
            ),
            at(10),
        );
        assert_eq!(failed.observed_generation, Some(3));
        assert_eq!(failed.applied_at, Some(Time(at(0))));
        assert_eq!(
            failed.error.as_deref(),
            Some("spec.routes[0].via: \"x\" is not an IP address")
        );
        let ready = ready_condition(&failed).expect("Ready condition");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "ApplyFailed");
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(ready.last_transition_time, Time(at(10)));
        assert!(
            ready
                .message
                .starts_with("Generation 4 could not be applied: spec.routes[0]")
        );
        assert_eq!(
            failed.summary.clone().and_then(|s| s.applied).as_deref(),
            Some("3/4")
        );

        let fixed = next_status(Some(&failed), &outcome(5, Ok(PROGRAMMED)), at(20));
        assert_eq!(fixed.observed_generation, Some(5));
        assert_eq!(fixed.applied_at, Some(Time(at(20))));
        assert_eq!(fixed.error, None);
        let ready = ready_condition(&fixed).expect("Ready condition");
        assert_eq!(ready.last_transition_time, Time(at(20)));
    }

    #[test]
    fn bgp_sessions_are_counted_in_the_summary() {
        let mut with_bgp = outcome(1, Ok(PROGRAMMED));
        with_bgp.bgp_sessions = Some(2);
        let status = next_status(None, &with_bgp, at(0));
        assert_eq!(
            status.summary.and_then(|s| s.bgp).as_deref(),
            Some("0/2 up")
        );
    }
}
