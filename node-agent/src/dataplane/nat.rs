//! Masquerading of pod traffic that leaves the pools, in one nftables table owned by Tortie.
//!
//! The ruleset is rendered as `nft` text and loaded with one `nft -f -`, which the kernel
//! applies as one transaction. Why text through `nft` rather than the `nftables` crate's
//! JSON: both drive the same binary the same way (one process, one transaction); text keeps
//! the rendered ruleset readable in logs and in tests, and does not tie the agent to the
//! JSON schema version of the installed `nft`. Only the table named [`TABLE`] of family
//! `ip` is ever created, replaced or deleted.

use std::process::Stdio;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

use super::NatSpec;

/// The nftables table Tortie owns (family `ip`).
pub const TABLE: &str = "tortie-nat";

/// Errors loading the NAT ruleset.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// `nft` could not be started.
    #[error("cannot run nft ({source}); install the nftables package in the agent's image")]
    Spawn {
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// `nft` rejected the ruleset.
    #[error("nft rejected the {TABLE} table: {stderr}")]
    Rejected {
        /// What nft printed.
        stderr: String,
    },
}

/// The `nft -f` input that makes Tortie's table exactly what `spec` asks for, or removes it
/// when no pool masquerades.
///
/// Creating the table before deleting it makes the delete succeed whether or not the table
/// existed, and the whole file is one transaction, so packets never see a half-built table.
pub fn render(spec: &NatSpec) -> String {
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    if spec.outgoing_pools.is_empty() {
        return out;
    }

    // Merged up front: an interval set refuses overlapping elements.
    let outgoing = Ipv4Net::aggregate(&spec.outgoing_pools);
    let mut all = spec.all_pools.clone();
    // A masquerading pool is a pool even if the caller forgot to list it in both places.
    all.extend(spec.outgoing_pools.iter().copied());
    let all = Ipv4Net::aggregate(&all);

    out.push_str(&format!("table ip {TABLE} {{\n"));
    out.push_str(&render_set("nat-outgoing-pools", &outgoing));
    out.push_str(&render_set("all-pools", &all));
    out.push_str(concat!(
        "\tchain postrouting {\n",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        "\t\tip saddr @nat-outgoing-pools ip daddr != @all-pools masquerade\n",
        "\t}\n",
        "}\n",
    ));
    out
}

fn render_set(name: &str, cidrs: &[Ipv4Net]) -> String {
    let elements: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    format!(
        "\tset {name} {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
        elements.join(", ")
    )
}

/// Loads the ruleset for `spec` in the calling thread's network namespace.
pub async fn apply(spec: &NatSpec) -> Result<(), NatError> {
    run_nft(&render(spec)).await
}

/// Removes Tortie's table, if there is one.
pub async fn remove() -> Result<(), NatError> {
    run_nft(&render(&NatSpec::default())).await
}

async fn run_nft(ruleset: &str) -> Result<(), NatError> {
    tracing::trace!(ruleset, "Loading nftables ruleset");
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NatError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|source| NatError::Spawn { source })?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| NatError::Spawn { source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NatError::Rejected {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn no_masquerading_pool_removes_the_table() {
        assert_eq!(
            render(&NatSpec::default()),
            "table ip tortie-nat\ndelete table ip tortie-nat\n"
        );
    }

    #[test]
    fn renders_sets_and_one_rule() {
        let spec = NatSpec {
            outgoing_pools: vec![net("10.244.0.0/16")],
            all_pools: vec![
                net("10.244.0.0/16"),
                net("10.96.0.0/12"),
                net("10.244.7.0/24"),
            ],
        };
        assert_eq!(
            render(&spec),
            "table ip tortie-nat\n\
             delete table ip tortie-nat\n\
             table ip tortie-nat {\n\
             \tset nat-outgoing-pools {\n\
             \t\ttype ipv4_addr\n\
             \t\tflags interval\n\
             \t\telements = { 10.244.0.0/16 }\n\
             \t}\n\
             \tset all-pools {\n\
             \t\ttype ipv4_addr\n\
             \t\tflags interval\n\
             \t\telements = { 10.96.0.0/12, 10.244.0.0/16 }\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr @nat-outgoing-pools ip daddr != @all-pools masquerade\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn an_outgoing_pool_missing_from_all_pools_is_still_excluded_as_destination() {
        let spec = NatSpec {
            outgoing_pools: vec![net("10.244.0.0/16")],
            all_pools: vec![],
        };
        assert!(render(&spec).contains("set all-pools {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16 }"));
    }
}
