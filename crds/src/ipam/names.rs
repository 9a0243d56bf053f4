//! The object names and strings Calico derives from a block, a node and a container, so
//! that Tortie reads and writes the very objects Calico would.

use std::collections::BTreeMap;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// The network name Calico's CNI configuration uses; pod handles start with it.
pub const POD_NETWORK_NAME: &str = "k8s-pod-network";

/// Prefix of a block's `affinity` when a node owns the block.
pub const HOST_AFFINITY_PREFIX: &str = "host:";

/// Label with a hash of the node name, by which Calico lists a node's affinities (node
/// names can be longer than a label value may be).
pub const LABEL_HOSTNAME_HASH: &str = "projectcalico.org/hostname-hash";

/// Label with the affinity type (`host` or `virtual`).
pub const LABEL_AFFINITY_TYPE: &str = "projectcalico.org/affinity-type";

/// Label with the IP version (`4` or `6`) of the affinity's block.
pub const LABEL_IP_VERSION: &str = "projectcalico.org/ip-version";

/// Longest object name the API server accepts.
const MAX_NAME_LEN: usize = 253;

/// Hex digits of the hash that keeps shortened affinity names apart.
const NAME_HASH_LEN: usize = 11;

/// The object name of the block with this CIDR: `10.244.1.64/26` becomes
/// `10-244-1-64-26`, `fd00:10::/122` becomes `fd00-10---122`.
pub fn block_name(cidr: &IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// The object name of the affinity of `node` for the block `cidr`:
/// `<node>-<block name>`.
///
/// A name that would reach the API server's 253-character limit is shortened as Calico
/// does: the node name is cut so that the result, with `-` and the first 11 hex digits of
/// the SHA-256 of `<node>+<block name>` appended, is 252 characters long.
pub fn affinity_name(node: &str, cidr: &IpNet) -> String {
    let block = block_name(cidr);
    let full = format!("{node}-{block}");
    if full.len() < MAX_NAME_LEN {
        return full;
    }

    // Two `-` separators and the hash are added to the cut node name.
    let keep = (MAX_NAME_LEN - 1).saturating_sub(block.len() + NAME_HASH_LEN + 2);
    let cut = prefix_at_char_boundary(node, keep);
    let digest = Sha256::digest(format!("{node}+{block}").as_bytes());
    let hash = hex(&digest);
    format!("{cut}-{block}-{}", &hash[..NAME_HASH_LEN])
}

/// The labels Calico puts on a BlockAffinity so it can list a node's affinities by
/// label selector.
pub fn affinity_labels(node: &str, affinity_type: &str, cidr: &IpNet) -> BTreeMap<String, String> {
    let version = match cidr {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    };
    BTreeMap::from([
        (LABEL_HOSTNAME_HASH.to_owned(), hostname_hash(node)),
        (LABEL_AFFINITY_TYPE.to_owned(), affinity_type.to_owned()),
        (LABEL_IP_VERSION.to_owned(), version.to_owned()),
    ])
}

/// The value of the hostname-hash label: the SHA3-256 of the node name in unpadded
/// base32 (52 characters, short enough for a label value).
pub fn hostname_hash(node: &str) -> String {
    base32_unpadded(&Sha3_256::digest(node.as_bytes()))
}

/// The handle ID Calico's CNI plugin uses for a pod's addresses:
/// `k8s-pod-network.<containerID>`.
pub fn pod_handle_id(container_id: &str) -> String {
    handle_id(POD_NETWORK_NAME, container_id)
}

/// The handle ID of the addresses of `container_id` on the CNI network `network`.
pub fn handle_id(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The object name of the IPAMHandle for a handle ID: the ID in lower case (object
/// names may not contain upper case letters).
pub fn handle_name(handle_id: &str) -> String {
    handle_id.to_lowercase()
}

/// The `affinity` of a block that `node` owns: `host:<node>`.
pub fn host_affinity(node: &str) -> String {
    format!("{HOST_AFFINITY_PREFIX}{node}")
}

/// The node of a `host:<node>` affinity, or `None` for any other form.
pub fn affinity_node(affinity: &str) -> Option<&str> {
    affinity.strip_prefix(HOST_AFFINITY_PREFIX)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
/// Node names are DNS names (ASCII), so in practice this is a plain byte cut.
fn prefix_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// RFC 4648 base32 with the standard alphabet and no `=` padding.
fn base32_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 0x1f) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR parses")
    }

    #[test]
    fn block_names_replace_dots_colons_and_slash() {
        assert_eq!(block_name(&net("10.244.1.64/26")), "10-244-1-64-26");
        assert_eq!(block_name(&net("fd00:10::/122")), "fd00-10---122");
        assert_eq!(
            block_name(&net("2001:db8:1:2:3:4:5:0/122")),
            "2001-db8-1-2-3-4-5-0-122"
        );
    }

    #[test]
    fn affinity_names_join_node_and_block() {
        assert_eq!(
            affinity_name("worker-1", &net("10.244.1.64/26")),
            "worker-1-10-244-1-64-26"
        );
    }

    #[test]
    fn long_affinity_names_are_cut_to_252_with_a_hash() {
        let node = "n".repeat(250);
        let cidr = net("10.244.1.64/26");
        let name = affinity_name(&node, &cidr);
        assert_eq!(name.len(), 252);
        assert!(name.contains("-10-244-1-64-26-"));
        // The hash part, computed independently with Python's hashlib.
        assert!(name.ends_with("-10-244-1-64-26-fcff46d7722"));
        assert!(name.starts_with(&"n".repeat(225)));

        // Two long names that differ only past the cut still differ.
        let other = format!("{}m", "n".repeat(249));
        assert_ne!(affinity_name(&other, &cidr), name);
    }

    #[test]
    fn name_just_below_the_limit_is_kept_whole() {
        let cidr = net("10.244.1.64/26");
        let node = "a".repeat(MAX_NAME_LEN - 1 - 1 - block_name(&cidr).len());
        let name = affinity_name(&node, &cidr);
        assert_eq!(name.len(), 252);
        assert_eq!(name, format!("{node}-10-244-1-64-26"));
        let longer = affinity_name(&format!("{node}a"), &cidr);
        assert_eq!(longer.len(), 252);
        assert_ne!(longer, format!("{node}a-10-244-1-64-26"));
    }

    #[test]
    fn sha256_and_hex_match_a_known_vector() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        assert_eq!(base32_unpadded(b""), "");
        assert_eq!(base32_unpadded(b"f"), "MY");
        assert_eq!(base32_unpadded(b"fo"), "MZXQ");
        assert_eq!(base32_unpadded(b"foo"), "MZXW6");
        assert_eq!(base32_unpadded(b"foob"), "MZXW6YQ");
        assert_eq!(base32_unpadded(b"fooba"), "MZXW6YTB");
        assert_eq!(base32_unpadded(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn hostname_hash_fits_a_label_value() {
        let hash = hostname_hash(&"x".repeat(253));
        assert_eq!(hash.len(), 52);
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        // Vectors computed independently with Python's hashlib and base64.
        assert_eq!(
            hostname_hash(""),
            "U774N6F7D3LWMUOBI5LKAYOWML2YB72N4Q5UT6UC3AFEXAHYINFA"
        );
        assert_eq!(
            hostname_hash("worker-1"),
            "CPU5J3TPSNHFA66J45DG4Z5C3PSJAZ36LD46JZLYEGZSTAWBUCUA"
        );
    }

    #[test]
    fn affinity_labels_name_type_and_version() {
        let labels = affinity_labels("worker-1", "host", &net("fd00::/122"));
        assert_eq!(labels[LABEL_AFFINITY_TYPE], "host");
        assert_eq!(labels[LABEL_IP_VERSION], "6");
        assert_eq!(labels[LABEL_HOSTNAME_HASH], hostname_hash("worker-1"));
    }

    #[test]
    fn handles_and_affinities() {
        assert_eq!(pod_handle_id("abc123"), "k8s-pod-network.abc123");
        assert_eq!(handle_name("k8s-pod-network.ABC"), "k8s-pod-network.abc");
        assert_eq!(host_affinity("worker-1"), "host:worker-1");
        assert_eq!(affinity_node("host:worker-1"), Some("worker-1"));
        assert_eq!(affinity_node("virtual:vm"), None);
    }
}
