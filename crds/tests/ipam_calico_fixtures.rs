//! Objects in the exact shape Calico writes them read the same here and are written
//! back without losing a field, so a cluster can move between Calico and Tortie.

use std::net::IpAddr;

use serde_json::Value;
use tortie_crds::ipam::{
    AffinityState, BlockAffinity, IPAMBlock, IPAMConfig, IPAMHandle, Release, VmAddressPersistence,
    names,
};
use tortie_crds::validation::Validate;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture file is readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

/// Deserializes `raw` and serializes it back, expecting the very same JSON.
fn round_trip<T>(raw: &Value) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let object: T = serde_json::from_value(raw.clone()).expect("fixture deserializes");
    let written = serde_json::to_value(&object).expect("object serializes");
    assert_eq!(&written, raw, "written back differently");
    object
}

#[test]
fn calico_block_reads_the_same() {
    let raw = fixture("calico-ipamblock.json");
    let block: IPAMBlock = round_trip(&raw);
    assert!(block.validate().is_ok(), "{:?}", block.validate());
    assert!(block.check().is_ok());

    assert_eq!(block.metadata.name.as_deref(), Some("10-244-1-64-26"));
    assert_eq!(names::block_name(&block.cidr()), "10-244-1-64-26");
    assert_eq!(block.node(), Some("worker-1"));
    assert_eq!(block.size(), 64);
    assert_eq!(block.used_count(), 4);
    assert_eq!(block.cooldown_count(), 1);
    assert_eq!(block.free_count(), 59);
    assert!(!block.is_empty());

    assert_eq!(
        block.addresses_of_handle("k8s-pod-network.3f9a1c0e7b2d"),
        vec![ip("10.244.1.65"), ip("10.244.1.67")]
    );
    assert_eq!(
        block.addresses_of_handle("k8s-pod-network.8e1d4b7a9c30"),
        vec![ip("10.244.1.66")]
    );
    assert_eq!(
        block.addresses_of_handle("ipip-tunnel-addr-worker-1"),
        vec![ip("10.244.1.64")]
    );
    let coredns = block
        .owner_of(ip("10.244.1.66"))
        .expect("in block")
        .expect("held");
    assert_eq!(coredns.secondary["pod"], "coredns-5d78c9869d-4tq8z");
    assert_eq!(
        coredns.alternate_owner_attrs["pod"],
        "coredns-5d78c9869d-old00"
    );
    assert_eq!(block.owner_of(ip("10.244.1.68")), Ok(None), "in cooldown");
    assert_eq!(block.owner_of(ip("10.244.1.70")), Ok(None), "free");
}

#[test]
fn calico_block_continues_in_calicos_order() {
    let raw = fixture("calico-ipamblock.json");
    let mut block: IPAMBlock = serde_json::from_value(raw).expect("fixture deserializes");

    // The front of the free queue is ordinal 5; ordinal 6, released earlier, is last.
    let owner = tortie_crds::ipam::AllocationAttribute::for_pod(
        names::pod_handle_id("c0ffee"),
        "worker-1",
        "default",
        "api-0",
        "2024-05-01 12:10:00 +0000 UTC",
    );
    assert_eq!(
        block.allocate(2, &owner),
        Ok(vec![ip("10.244.1.69"), ip("10.244.1.71")])
    );

    // An immediate release also ends the cooldown of ordinal 4 (as Calico does with
    // ipCooldownSeconds 0); both go to the back of the queue in ascending order, and the
    // cooldown marker, now unreferenced, is dropped. The pod keeps its entry: it still
    // holds 10.244.1.65.
    block
        .release_address(ip("10.244.1.67"), &Release::Immediate)
        .expect("in block");
    assert_eq!(block.cooldown_count(), 0);
    assert_eq!(block.spec.attributes.len(), 4);
    assert_eq!(
        &block.spec.unallocated[block.spec.unallocated.len() - 3..],
        &[6, 3, 4]
    );

    // Releasing the pod with a single address drops its entry and renumbers the rest.
    let freed = block
        .release_handle("k8s-pod-network.8e1d4b7a9c30", &Release::Immediate)
        .expect("consistent");
    assert_eq!(freed, vec![ip("10.244.1.66")]);
    assert!(block.check().is_ok());
    assert_eq!(block.spec.attributes.len(), 3);
    assert_eq!(
        block.spec.allocations[5],
        Some(2),
        "the new pod's entry moved up"
    );
    assert_eq!(block.spec.unallocated.last(), Some(&2));
}

#[test]
fn calico_affinity_reads_the_same() {
    let raw = fixture("calico-blockaffinity.json");
    let affinity: BlockAffinity = round_trip(&raw);
    assert!(affinity.validate().is_ok());
    assert_eq!(affinity.spec.state, AffinityState::Confirmed);
    assert!(!affinity.spec.deleted.0);

    // What Tortie would write for the same claim is the same object.
    let ours = BlockAffinity::for_node("worker-1", affinity.spec.cidr, AffinityState::Confirmed);
    assert_eq!(ours.metadata.name, affinity.metadata.name);
    assert_eq!(ours.metadata.labels, affinity.metadata.labels);
    assert_eq!(ours.spec, affinity.spec);
}

#[test]
fn calico_handle_reads_the_same() {
    let raw = fixture("calico-ipamhandle.json");
    let handle: IPAMHandle = round_trip(&raw);
    assert!(handle.validate().is_ok());
    assert_eq!(handle.spec.total(), 2);
    assert_eq!(
        handle.metadata.name.as_deref(),
        Some(names::handle_name(&handle.spec.handle_id).as_str())
    );
}

#[test]
fn calico_config_reads_the_same() {
    let raw = fixture("calico-ipamconfig.json");
    let config: IPAMConfig = round_trip(&raw);
    assert!(config.validate().is_ok());
    assert!(config.spec.auto_allocate_blocks);
    assert_eq!(config.spec.block_limit(), Some(20));
    assert_eq!(config.spec.cooldown_seconds(), 60);
    assert_eq!(
        config.spec.kube_virt_vm_address_persistence,
        Some(VmAddressPersistence::Enabled)
    );
}

#[test]
fn go_nulls_read_as_empty() {
    // Go writes nil slices and maps as null; an empty block straight after creation
    // has no attributes yet.
    let raw = serde_json::json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPAMBlock",
        "metadata": { "name": "10-244-2-0-30" },
        "spec": {
            "cidr": "10.244.2.0/30",
            "affinity": "host:worker-2",
            "allocations": [null, null, null, null],
            "unallocated": [0, 1, 2, 3],
            "attributes": null,
            "sequenceNumber": 5,
            "sequenceNumberForAllocation": null,
            "deleted": false,
            "strictAffinity": false
        }
    });
    let block: IPAMBlock = serde_json::from_value(raw).expect("nulls are accepted");
    assert!(block.spec.attributes.is_empty());
    assert!(block.spec.sequence_number_for_allocation.is_empty());
    assert!(block.is_empty());
    assert!(block.check().is_ok());
}
