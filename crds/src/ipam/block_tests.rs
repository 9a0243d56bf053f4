//! Unit and property tests of the block logic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::validation::Validate;

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR parses")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).expect("test time is in range"))
}

fn pod(handle: &str) -> AllocationAttribute {
    AllocationAttribute::for_pod(
        handle,
        "worker-1",
        "default",
        &format!("pod-{handle}"),
        "2024-05-01 12:00:00 +0000 UTC",
    )
}

fn block(cidr: &str) -> IPAMBlock {
    IPAMBlock::new_empty(net(cidr), Some("worker-1"), 7).expect("test block is valid")
}

#[test]
fn new_block_is_empty_named_and_affine() {
    let b = block("10.244.1.64/26");
    assert_eq!(b.metadata.name.as_deref(), Some("10-244-1-64-26"));
    assert_eq!(b.spec.affinity.as_deref(), Some("host:worker-1"));
    assert_eq!(b.node(), Some("worker-1"));
    assert_eq!(b.size(), 64);
    assert_eq!(b.free_count(), 64);
    assert_eq!(b.used_count(), 0);
    assert!(b.is_empty());
    assert_eq!(b.spec.unallocated, (0..64).collect::<Vec<_>>());
    assert!(b.validate().is_ok());
}

#[test]
fn unmasked_or_oversized_blocks_are_refused() {
    let err = IPAMBlock::new_empty(net("10.244.1.65/26"), None, 0).expect_err("unmasked");
    assert_eq!(
        err.to_string(),
        "IPAM block 10.244.1.65/26: spec.cidr is not masked; the block starting there is 10.244.1.64/26"
    );
    assert!(IPAMBlock::new_empty(net("10.0.0.0/16"), None, 0).is_err());
}

#[test]
fn blocks_of_a_pool_in_address_order() {
    let pool = net("10.244.0.0/16");
    assert_eq!(block_count(&pool, 26), Ok(1024));
    assert_eq!(block_cidr(&pool, 26, 0), Ok(net("10.244.0.0/26")));
    assert_eq!(block_cidr(&pool, 26, 5), Ok(net("10.244.1.64/26")));
    assert_eq!(block_cidr(&pool, 26, 1023), Ok(net("10.244.255.192/26")));
    let err = block_cidr(&pool, 26, 1024).expect_err("past the end");
    assert!(err.to_string().contains("has 1024 blocks of /26"), "{err}");

    let blocks: Vec<IpNet> = pool_blocks(&pool, 26).expect("valid block size").collect();
    assert_eq!(blocks.len(), 1024);
    for (i, cidr) in blocks.iter().enumerate() {
        assert_eq!(block_cidr(&pool, 26, i as u128).as_ref(), Ok(cidr));
    }

    let pool6 = net("fd00:10::/64");
    assert_eq!(block_cidr(&pool6, 122, 3), Ok(net("fd00:10::c0/122")));
    let b = IPAMBlock::for_pool(&pool6, 122, 3, "worker-2", 0).expect("valid block");
    assert_eq!(b.metadata.name.as_deref(), Some("fd00-10--c0-122"));
    assert_eq!(b.size(), 64);

    assert!(
        block_count(&pool, 15).is_err(),
        "blocks larger than the pool"
    );
    assert!(
        block_count(&pool, 19).is_err(),
        "blocks over 4096 addresses"
    );
    assert!(block_count(&pool, 33).is_err(), "longer than an address");
    assert_eq!(
        block_cidr_for_address(ip("10.244.1.100"), 26),
        Some(net("10.244.1.64/26"))
    );
}

#[test]
fn addresses_and_ordinals() {
    let b = block("10.244.1.64/26");
    assert_eq!(b.address_of(0), Ok(ip("10.244.1.64")));
    assert_eq!(b.address_of(63), Ok(ip("10.244.1.127")));
    assert!(b.address_of(64).is_err());
    assert_eq!(b.ordinal_of(ip("10.244.1.100")), Ok(36));
    let err = b.ordinal_of(ip("10.244.1.128")).expect_err("outside");
    assert_eq!(
        err.to_string(),
        "IPAM block 10.244.1.64/26: address 10.244.1.128 is not in the block"
    );
    assert!(b.ordinal_of(ip("fd00::1")).is_err());

    let b6 = block("fd00:10::40/122");
    assert_eq!(b6.address_of(5), Ok(ip("fd00:10::45")));
    assert_eq!(b6.ordinal_of(ip("fd00:10::7f")), Ok(63));
}

#[test]
fn allocation_follows_calicos_order_and_shares_owner_entries() {
    let mut b = block("10.244.1.64/26");
    let a = b.allocate(3, &pod("a")).expect("room for 3");
    assert_eq!(
        a,
        vec![ip("10.244.1.64"), ip("10.244.1.65"), ip("10.244.1.66")]
    );
    let c = b.allocate(2, &pod("c")).expect("room for 2");
    assert_eq!(c, vec![ip("10.244.1.67"), ip("10.244.1.68")]);
    let more_a = b.allocate(1, &pod("a")).expect("room for 1");
    assert_eq!(more_a, vec![ip("10.244.1.69")]);

    assert_eq!(b.spec.attributes.len(), 2, "one entry per owner");
    assert_eq!(
        b.spec.allocations[..6],
        [Some(0), Some(0), Some(0), Some(1), Some(1), Some(0)]
    );
    assert_eq!(b.spec.unallocated[0], 6);
    assert_eq!(b.used_count(), 6);
    assert_eq!(b.free_count(), 58);
    assert_eq!(b.spec.sequence_number_for_allocation["5"], 7);
    assert_eq!(
        b.addresses_of_handle("a"),
        vec![
            ip("10.244.1.64"),
            ip("10.244.1.65"),
            ip("10.244.1.66"),
            ip("10.244.1.69")
        ]
    );
    let owner = b
        .owner_of(ip("10.244.1.67"))
        .expect("in block")
        .expect("held");
    assert_eq!(owner.handle(), Some("c"));
    assert_eq!(owner.secondary[ATTRIBUTE_POD], "pod-c");
    assert!(!b.is_empty());
}

#[test]
fn released_addresses_go_to_the_back_of_the_queue() {
    let mut b = block("10.244.1.64/28");
    b.allocate(4, &pod("a")).expect("room");
    b.allocate(2, &pod("c")).expect("room");

    let holder = b
        .release_address(ip("10.244.1.65"), &Release::Immediate)
        .expect("in block");
    assert_eq!(holder.as_deref(), Some("a"));
    assert_eq!(
        b.spec.unallocated,
        vec![6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1]
    );
    assert!(!b.spec.sequence_number_for_allocation.contains_key("1"));

    // Releasing again is not an error and changes nothing.
    let before = b.clone();
    let again = b
        .release_address(ip("10.244.1.65"), &Release::Immediate)
        .expect("in block");
    assert_eq!(again, None);
    assert_eq!(b, before);

    // The next allocation does not reuse the released address while others are free.
    assert_eq!(
        b.allocate(1, &pod("d")).expect("room"),
        vec![ip("10.244.1.70")]
    );
}

#[test]
fn releasing_a_handle_removes_its_entry_and_renumbers_the_rest() {
    let mut b = block("10.244.1.64/28");
    b.allocate(2, &pod("a")).expect("room");
    b.allocate(2, &pod("c")).expect("room");
    b.allocate(1, &pod("a")).expect("room");

    let released = b
        .release_handle("a", &Release::Immediate)
        .expect("consistent");
    assert_eq!(
        released,
        vec![ip("10.244.1.64"), ip("10.244.1.65"), ip("10.244.1.68")]
    );
    assert_eq!(b.spec.attributes.len(), 1);
    assert_eq!(b.spec.attributes[0].handle(), Some("c"));
    assert_eq!(b.spec.allocations[2], Some(0));
    assert_eq!(b.spec.allocations[3], Some(0));
    assert_eq!(
        &b.spec.unallocated[b.spec.unallocated.len() - 3..],
        &[0, 1, 4]
    );

    assert_eq!(b.release_handle("a", &Release::Immediate), Ok(vec![]));
    b.release_handle("c", &Release::Immediate)
        .expect("consistent");
    assert!(b.is_empty());
    assert!(b.spec.attributes.is_empty());
    assert_eq!(b.free_count(), 16);
}

#[test]
fn specific_addresses() {
    let mut b = block("10.244.1.64/28");
    b.allocate_address(ip("10.244.1.70"), &pod("a"))
        .expect("free");
    assert!(!b.spec.unallocated.contains(&6));
    assert_eq!(b.spec.allocations[6], Some(0));

    let err = b
        .allocate_address(ip("10.244.1.70"), &pod("c"))
        .expect_err("taken");
    assert_eq!(
        err.to_string(),
        "IPAM block 10.244.1.64/28: address 10.244.1.70 is already allocated to handle Some(\"a\")"
    );
    let err = b
        .allocate_address(ip("10.244.1.80"), &pod("c"))
        .expect_err("outside");
    assert!(matches!(err, BlockError::NotInBlock { .. }));

    // Automatic allocation skips the taken address.
    let got = b.allocate(7, &pod("c")).expect("room");
    assert_eq!(got.last(), Some(&ip("10.244.1.71")));
}

#[test]
fn a_full_block_says_so() {
    let mut b = block("10.244.1.64/30");
    b.allocate(3, &pod("a")).expect("room");
    let before = b.clone();
    let err = b.allocate(2, &pod("c")).expect_err("only one free");
    assert_eq!(
        err.to_string(),
        "IPAM block 10.244.1.64/30: block full: 2 addresses requested but only 1 free; \
         allocate from another block"
    );
    assert_eq!(b, before, "a refused allocation changes nothing");
    assert_eq!(b.allocate_up_to(2, &pod("c")), Ok(vec![ip("10.244.1.67")]));
    assert_eq!(b.allocate_up_to(2, &pod("c")), Ok(vec![]));
}

#[test]
fn reserved_addresses_are_skipped_but_keep_their_place() {
    let mut b = block("10.244.1.64/29");
    let got = b
        .allocate_up_to_skipping(2, &pod("a"), |a| a == ip("10.244.1.64"))
        .expect("consistent");
    assert_eq!(got, vec![ip("10.244.1.65"), ip("10.244.1.66")]);
    assert_eq!(b.spec.unallocated, vec![0, 3, 4, 5, 6, 7]);
}

#[test]
fn cooldown_keeps_addresses_out_of_use_until_it_passes() {
    let mut b = block("10.244.1.64/29");
    b.allocate(2, &pod("a")).expect("room");
    let release = Release::Cooldown {
        now: at(1_000),
        cooldown_seconds: 30,
    };

    assert_eq!(
        b.release_address(ip("10.244.1.64"), &release),
        Ok(Some("a".to_owned()))
    );
    assert_eq!(b.cooldown_count(), 1);
    assert_eq!(b.used_count(), 1);
    assert_eq!(b.free_count(), 6);
    assert_eq!(b.spec.attributes.len(), 2);
    assert_eq!(b.spec.attributes[1].released_at, Some(at(1_000)));
    assert_eq!(b.owner_of(ip("10.244.1.64")), Ok(None));
    assert!(!b.is_empty());
    assert!(b.check().is_ok());

    let err = b
        .allocate_address(ip("10.244.1.64"), &pod("c"))
        .expect_err("cooling down");
    assert!(matches!(err, BlockError::InCooldown { .. }), "{err}");
    assert_eq!(b.release_address(ip("10.244.1.64"), &release), Ok(None));

    assert_eq!(b.finish_cooldowns(&at(1_010), 30), Ok(false));
    assert_eq!(b.cooldown_count(), 1);
    assert_eq!(b.finish_cooldowns(&at(1_031), 30), Ok(true));
    assert_eq!(b.cooldown_count(), 0);
    assert_eq!(b.spec.attributes.len(), 1);
    assert_eq!(b.spec.unallocated.last(), Some(&0));

    // A zero cooldown frees at once, like Calico with ipCooldownSeconds 0.
    let zero = Release::Cooldown {
        now: at(2_000),
        cooldown_seconds: 0,
    };
    b.release_handle("a", &zero).expect("consistent");
    assert!(b.is_empty());
    assert!(b.spec.attributes.is_empty());
}

#[test]
fn windows_reservations_do_not_make_a_block_used() {
    let mut b = block("10.244.1.64/29");
    b.allocate_address(
        ip("10.244.1.64"),
        &AllocationAttribute::new(WINDOWS_RESERVED_HANDLE, BTreeMap::new()),
    )
    .expect("free");
    assert!(b.is_empty());
    b.allocate(1, &pod("a")).expect("room");
    assert!(!b.is_empty());
}

#[test]
fn handles_with_carriage_return_junk_match_their_clean_form() {
    let mut b = block("10.244.1.64/29");
    b.allocate(
        1,
        &AllocationAttribute::new("abc\r\nnoise", BTreeMap::new()),
    )
    .expect("room");
    assert_eq!(b.addresses_of_handle("abc"), vec![ip("10.244.1.64")]);
    assert_eq!(
        b.release_handle("abc", &Release::Immediate),
        Ok(vec![ip("10.244.1.64")])
    );
}

#[test]
fn inconsistent_blocks_are_not_changed() {
    let mut b = block("10.244.1.64/29");
    b.spec.unallocated.push(3);
    let err = b
        .allocate(1, &pod("a"))
        .expect_err("ordinal 3 queued twice");
    assert!(err.to_string().contains("lists ordinal 3 twice"), "{err}");

    let mut b = block("10.244.1.64/29");
    b.spec.allocations[2] = Some(4);
    b.spec.unallocated.retain(|&o| o != 2);
    let err = b
        .release_address(ip("10.244.1.66"), &Release::Immediate)
        .expect_err("dangling index");
    assert!(err.to_string().contains("points at attribute 4"), "{err}");

    let errors = b
        .validate()
        .expect_err("validation sees it too")
        .to_string();
    assert!(
        errors.contains("spec.allocations[2]: points at attribute 4"),
        "{errors}"
    );
}

#[test]
fn write_counter_is_recorded_per_allocation() {
    let mut b = block("10.244.1.64/29");
    b.allocate(1, &pod("a")).expect("room");
    b.note_write();
    b.allocate(1, &pod("a")).expect("room");
    assert_eq!(b.spec.sequence_number, 8);
    assert_eq!(b.spec.sequence_number_for_allocation["0"], 7);
    assert_eq!(b.spec.sequence_number_for_allocation["1"], 8);
}

#[test]
fn block_name_must_match_cidr() {
    let mut b = block("10.244.1.64/26");
    b.metadata.name = Some("my-block".to_owned());
    let text = b.validate().expect_err("wrong name").to_string();
    assert!(
        text.contains("metadata.name: must be \"10-244-1-64-26\""),
        "{text}"
    );
}

/// One step of a random workload against a block of 16 addresses.
#[derive(Debug, Clone)]
enum Step {
    Allocate { count: usize, owner: u8 },
    AllocateAddress { ordinal: usize, owner: u8 },
    ReleaseAddress { ordinal: usize },
    ReleaseHandle { owner: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..6, 0u8..4).prop_map(|(count, owner)| Step::Allocate { count, owner }),
        (0usize..16, 0u8..4).prop_map(|(ordinal, owner)| Step::AllocateAddress { ordinal, owner }),
        (0usize..16).prop_map(|ordinal| Step::ReleaseAddress { ordinal }),
        (0u8..4).prop_map(|owner| Step::ReleaseHandle { owner }),
    ]
}

fn handle(owner: u8) -> String {
    format!("k8s-pod-network.{owner}")
}

/// Checks every invariant that must hold between steps.
fn assert_invariants(b: &IPAMBlock, expected: &BTreeMap<usize, u8>) {
    assert!(b.check().is_ok(), "{:?}", b.check());
    assert!(b.validate().is_ok());

    let allocated = b.spec.allocations.iter().flatten().count();
    assert_eq!(allocated + b.spec.unallocated.len(), b.size());
    assert_eq!(b.used_count() + b.free_count(), b.size());

    let referenced: BTreeSet<usize> = b.spec.allocations.iter().flatten().copied().collect();
    assert_eq!(
        referenced,
        (0..b.spec.attributes.len()).collect::<BTreeSet<_>>()
    );
    let distinct: BTreeSet<_> = b.spec.attributes.iter().map(|a| format!("{a:?}")).collect();
    assert_eq!(
        distinct.len(),
        b.spec.attributes.len(),
        "owner entries are shared"
    );

    let held: BTreeMap<usize, String> = b
        .allocations()
        .map(|(address, owner)| {
            let ordinal = b.ordinal_of(address).expect("held address is in the block");
            (ordinal, owner.handle().unwrap_or_default().to_owned())
        })
        .collect();
    let wanted: BTreeMap<usize, String> = expected
        .iter()
        .map(|(&o, &owner)| (o, handle(owner)))
        .collect();
    assert_eq!(held, wanted);
    let recorded: BTreeSet<String> = b
        .spec
        .sequence_number_for_allocation
        .keys()
        .cloned()
        .collect();
    let ordinals: BTreeSet<String> = expected.keys().map(usize::to_string).collect();
    assert_eq!(recorded, ordinals);
}

fn run(cidr: &str, steps: &[Step]) {
    let mut b = IPAMBlock::new_empty(net(cidr), Some("worker-1"), 1).expect("valid block");
    let mut expected: BTreeMap<usize, u8> = BTreeMap::new();

    for step in steps {
        match *step {
            Step::Allocate { count, owner } => {
                let free = b.free_count();
                match b.allocate(count, &pod(&handle(owner))) {
                    Ok(addresses) => {
                        assert_eq!(addresses.len(), count);
                        for address in addresses {
                            let ordinal = b.ordinal_of(address).expect("in block");
                            assert!(
                                expected.insert(ordinal, owner).is_none(),
                                "ordinal {ordinal} handed out twice"
                            );
                        }
                    }
                    Err(BlockError::Full { free: f, .. }) => assert!(f < count && f == free),
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            Step::AllocateAddress { ordinal, owner } => {
                let address = b.address_of(ordinal).expect("ordinal in block");
                let result = b.allocate_address(address, &pod(&handle(owner)));
                if let Some(&holder) = expected.get(&ordinal) {
                    assert_eq!(
                        result,
                        Err(BlockError::AlreadyAllocated {
                            block: b.cidr(),
                            address,
                            holder: Some(handle(holder)),
                        })
                    );
                } else {
                    assert_eq!(result, Ok(()));
                    expected.insert(ordinal, owner);
                }
            }
            Step::ReleaseAddress { ordinal } => {
                let address = b.address_of(ordinal).expect("ordinal in block");
                let holder = b.release_address(address, &Release::Immediate);
                assert_eq!(holder, Ok(expected.remove(&ordinal).map(handle)));
                assert_eq!(b.owner_of(address), Ok(None));
                assert!(
                    b.spec.unallocated.contains(&ordinal),
                    "released address is free"
                );
            }
            Step::ReleaseHandle { owner } => {
                let released = b
                    .release_handle(&handle(owner), &Release::Immediate)
                    .expect("consistent block");
                let mine: Vec<usize> = expected
                    .iter()
                    .filter(|&(_, &o)| o == owner)
                    .map(|(&ordinal, _)| ordinal)
                    .collect();
                let released: Vec<usize> = released
                    .into_iter()
                    .map(|a| b.ordinal_of(a).expect("in block"))
                    .collect();
                assert_eq!(released, mine);
                for ordinal in mine {
                    expected.remove(&ordinal);
                }
            }
        }
        assert_invariants(&b, &expected);
    }

    for owner in 0..4 {
        b.release_handle(&handle(owner), &Release::Immediate)
            .expect("consistent block");
    }
    assert!(b.is_empty());
    assert_eq!(b.free_count(), b.size());
    assert!(b.spec.attributes.is_empty());
    assert!(b.spec.allocations.iter().all(Option::is_none));
    assert!(b.spec.sequence_number_for_allocation.is_empty());
    let queued: BTreeSet<usize> = b.spec.unallocated.iter().copied().collect();
    assert_eq!(queued, (0..b.size()).collect::<BTreeSet<_>>());
}

proptest! {
    #[test]
    fn random_workloads_keep_the_block_consistent_v4(steps in prop::collection::vec(step(), 0..60)) {
        run("10.244.1.64/28", &steps);
    }

    #[test]
    fn random_workloads_keep_the_block_consistent_v6(steps in prop::collection::vec(step(), 0..60)) {
        run("fd00:10::30/124", &steps);
    }

    #[test]
    fn cooled_down_blocks_return_to_empty(
        steps in prop::collection::vec((0usize..5, 0u8..4, any::<bool>()), 0..30),
    ) {
        let mut b = block("10.244.1.64/28");
        for (i, &(count, owner, release)) in steps.iter().enumerate() {
            let now = at(1_000 + i as i64);
            if release {
                b.release_handle(&handle(owner), &Release::Cooldown { now, cooldown_seconds: 60 })
                    .expect("consistent block");
            } else {
                let _ = b.allocate(count, &pod(&handle(owner)));
            }
            prop_assert!(b.check().is_ok());
            let in_use = b.spec.allocations.iter().flatten().count();
            prop_assert_eq!(in_use, b.used_count() + b.cooldown_count());
            prop_assert_eq!(in_use + b.free_count(), b.size());
        }
        for owner in 0..4 {
            b.release_handle(&handle(owner), &Release::Cooldown { now: at(5_000), cooldown_seconds: 60 })
                .expect("consistent block");
        }
        b.finish_cooldowns(&at(5_061), 60).expect("consistent block");
        prop_assert!(b.is_empty());
        prop_assert_eq!(b.free_count(), 16);
        prop_assert!(b.spec.attributes.is_empty());
    }

    #[test]
    fn blocks_survive_a_json_round_trip(steps in prop::collection::vec(step(), 0..30)) {
        let mut b = block("10.244.1.64/28");
        for step in &steps {
            if let Step::Allocate { count, owner } = *step {
                let _ = b.allocate(count, &pod(&handle(owner)));
            }
        }
        let json = serde_json::to_string(&b).expect("block serializes");
        let back: IPAMBlock = serde_json::from_str(&json).expect("block parses");
        prop_assert_eq!(back, b);
    }
}
