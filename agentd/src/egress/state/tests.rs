use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use sensor_common::egress::{MODE_ENFORCE, MODE_MONITOR};

use super::*;
use crate::{
    config::{
        Policies,
        egress::{EgressRule, HostPattern, Protocol, parse_cidr},
    },
    egress::kernel::FakeKernel,
};

const A: u32 = 11;
const B: u32 = 22;
const SEC: u64 = 1_000_000_000;

fn cidr(id: u32, text: &str, ports: &[(u16, u16)]) -> EgressRule {
    EgressRule {
        id,
        target: Target::Cidr(parse_cidr(text).unwrap()),
        ports: ports.to_vec(),
        protocol: Protocol::Tcp,
        allow_private: false,
    }
}

fn host(id: u32, pattern: HostPattern, ports: &[(u16, u16)], allow_private: bool) -> EgressRule {
    EgressRule {
        id,
        target: Target::Host(pattern),
        ports: ports.to_vec(),
        protocol: Protocol::Tcp,
        allow_private,
    }
}

fn policy(mode: EgressMode, rules: Vec<EgressRule>) -> EgressPolicy {
    EgressPolicy {
        mode,
        rules,
        source: "test.toml".into(),
    }
}

fn policies(list: &[(u32, EgressPolicy)]) -> Policies {
    Policies {
        by_agent: list.iter().cloned().collect(),
        pending_deny: false,
    }
}

fn state(kernel: FakeKernel) -> EgressState<FakeKernel> {
    EgressState::new(
        kernel,
        BTreeMap::from([(A, 15300), (B, 15301)]),
        Duration::from_secs(10),
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Whether the fake kernel lets `agent` reach `addr` on TCP `port` at `now`, as the eBPF
/// decision would.
fn allows(state: &EgressState<FakeKernel>, agent: u32, addr: &str, port: u16, now: u64) -> bool {
    let Some((_, value)) = state.kernel().lookup(agent, ip_to_v6(ip(addr))) else {
        return false;
    };
    value.rules[..value.count as usize]
        .iter()
        .any(|r| r.allows(port, 6, now))
}

fn api_policy() -> EgressPolicy {
    policy(
        EgressMode::Enforce,
        vec![
            cidr(1, "10.0.0.0/8", &[(443, 443)]),
            host(
                2,
                HostPattern::Exact("api.example.com".into()),
                &[(443, 443), (8000, 8100)],
                false,
            ),
            host(
                3,
                HostPattern::Below("internal.test".into()),
                &[(80, 80)],
                true,
            ),
        ],
    )
}

#[test]
fn applies_cidr_rules_and_settings() {
    let mut s = state(FakeKernel::default());
    let changes = s.apply(&policies(&[(A, api_policy())]), 0).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].old, None);
    let kp = s.kernel().policies[&A];
    assert_eq!(
        (kp.mode, kp.generation, kp.resolver_port),
        (MODE_ENFORCE, 1, 15300)
    );
    assert_eq!(kp.version, version_id(&api_policy().version()));
    assert!(allows(&s, A, "10.1.2.3", 443, 0));
    assert!(!allows(&s, A, "10.1.2.3", 80, 0));
    assert!(!allows(&s, A, "11.1.2.3", 443, 0));
    assert!(
        !allows(&s, B, "10.1.2.3", 443, 0),
        "another agent has no entries"
    );
    let info = s.versions().read().unwrap().get(A, kp.version).unwrap();
    assert_eq!(info.rules[&2], "tcp api.example.com:443,8000-8100");
}

#[test]
fn a_change_switches_generation_and_deletes_the_old_entries() {
    let mut s = state(FakeKernel::default());
    s.apply(&policies(&[(A, api_policy())]), 0).unwrap();
    let old_version = s.kernel().policies[&A].version;
    let narrower = policy(
        EgressMode::Monitor,
        vec![cidr(1, "10.9.0.0/16", &[(22, 22)])],
    );
    let changes = s.apply(&policies(&[(A, narrower.clone())]), 0).unwrap();
    assert_eq!(
        changes[0].old.as_deref(),
        Some(hex::encode(api_policy().version()).as_str())
    );
    assert_eq!(
        changes[0].new.as_deref(),
        Some(hex::encode(narrower.version()).as_str())
    );
    let kp = s.kernel().policies[&A];
    assert_eq!((kp.mode, kp.generation), (MODE_MONITOR, 2));
    assert!(
        s.kernel().entries.keys().all(|k| k.generation == 2),
        "old generation deleted"
    );
    assert!(!allows(&s, A, "10.1.2.3", 443, 0));
    assert!(allows(&s, A, "10.9.2.3", 22, 0));
    // Records decided under the old version can still be described.
    assert!(s.versions().read().unwrap().get(A, old_version).is_some());
    // Applying the same policies again changes nothing.
    assert!(s.apply(&policies(&[(A, narrower)]), 0).unwrap().is_empty());
}

#[test]
fn a_failed_apply_leaves_the_old_policy_in_force() {
    let mut s = state(FakeKernel {
        capacity: 3,
        ..Default::default()
    });
    s.apply(&policies(&[(A, api_policy())]), 0).unwrap();
    let before = s.kernel().clone();
    let big = policy(
        EgressMode::Enforce,
        (1..=5)
            .map(|i| cidr(i, &format!("192.0.2.{i}"), &[(80, 80)]))
            .collect(),
    );
    let err = s
        .apply(&policies(&[(A, big), (B, api_policy())]), 0)
        .unwrap_err();
    assert!(matches!(err, ApplyError::Map(_)), "{err}");
    assert_eq!(s.kernel().policies, before.policies);
    assert_eq!(
        s.kernel().entries,
        before.entries,
        "partial writes are removed"
    );
    assert!(allows(&s, A, "10.1.2.3", 443, 0));
}

#[test]
fn pins_follow_names_classes_and_agents() {
    let mut s = state(FakeKernel::default());
    s.apply(
        &policies(&[(A, api_policy()), (B, policy(EgressMode::Enforce, vec![]))]),
        0,
    )
    .unwrap();
    let decision = s.name(A, "api.example.com").unwrap();
    assert_eq!(decision.rules, vec![2]);
    assert!(!s.name(A, "evil.example.com").unwrap().allowed());
    assert_eq!(s.name(A, "db.internal.test").unwrap().rules, vec![3]);

    let out = s
        .pin(
            A,
            "api.example.com",
            &[
                (ip("93.184.216.34"), 30),
                (ip("10.0.0.7"), 30),
                (ip("169.254.169.254"), 30),
            ],
            0,
        )
        .unwrap();
    let pinned: Vec<(String, bool)> = out.iter().map(|o| (o.ip.to_string(), o.pinned)).collect();
    assert_eq!(
        pinned,
        vec![
            ("93.184.216.34".into(), true),
            ("10.0.0.7".into(), false),
            ("169.254.169.254".into(), false)
        ],
        "a public name pins neither private nor metadata addresses"
    );
    assert!(allows(&s, A, "93.184.216.34", 443, 0));
    assert!(allows(&s, A, "93.184.216.34", 8050, 0));
    assert!(!allows(&s, A, "93.184.216.34", 80, 0));
    assert!(
        !allows(&s, B, "93.184.216.34", 443, 0),
        "a pin allows only the agent that resolved"
    );
    // The CIDR rule still covers 10.0.0.7, so it is reachable on 443 anyway (not through the
    // name's other ports).
    assert!(allows(&s, A, "10.0.0.7", 443, 0));
    assert!(!allows(&s, A, "10.0.0.7", 8050, 0));

    // An internal name may pin private addresses, never link-local ones.
    let out = s
        .pin(
            A,
            "db.internal.test",
            &[(ip("10.20.0.5"), 5), (ip("fe80::1"), 5)],
            0,
        )
        .unwrap();
    assert_eq!(
        out.iter().map(|o| o.pinned).collect::<Vec<_>>(),
        vec![true, false]
    );
    assert!(allows(&s, A, "10.20.0.5", 80, 0));
    assert!(
        allows(&s, A, "10.20.0.5", 443, 0),
        "the covering CIDR rule's range is kept"
    );

    // TTL + grace: allowed until 30 s + 10 s, then the kernel check and the gc drop it.
    assert!(allows(&s, A, "93.184.216.34", 443, 39 * SEC));
    assert!(!allows(&s, A, "93.184.216.34", 443, 40 * SEC));
    let lapsed = s.expire(40 * SEC);
    assert!(lapsed.contains(&(A, ip("93.184.216.34"))));
    assert!(
        s.kernel()
            .lookup(A, ip_to_v6(ip("93.184.216.34")))
            .is_none()
    );
    assert_eq!(s.pin_count(A), 0);
}

#[test]
fn pins_survive_a_policy_change_only_for_names_still_allowed() {
    let mut s = state(FakeKernel::default());
    s.apply(&policies(&[(A, api_policy())]), 0).unwrap();
    s.pin(A, "api.example.com", &[(ip("93.184.216.34"), 60)], 0)
        .unwrap();
    s.pin(A, "x.internal.test", &[(ip("10.30.0.1"), 60)], 0)
        .unwrap();
    let mut next = api_policy();
    next.rules.retain(|r| r.id != 3);
    s.apply(&policies(&[(A, next)]), SEC).unwrap();
    assert!(allows(&s, A, "93.184.216.34", 443, SEC));
    assert!(!allows(&s, A, "10.30.0.1", 80, SEC));
}

#[test]
fn restart_adopts_the_kernel_state_without_rewriting_it() {
    let mut first = state(FakeKernel::default());
    first
        .apply(&policies(&[(A, api_policy()), (B, api_policy())]), 0)
        .unwrap();
    first
        .pin(A, "api.example.com", &[(ip("93.184.216.34"), 60)], 0)
        .unwrap();
    let kernel = first.kernel().clone();

    // Same policy for A, a changed one for B.
    let mut second = state(kernel.clone());
    assert_eq!(second.adopt(), 2);
    let changed = policy(
        EgressMode::Enforce,
        vec![cidr(1, "10.0.0.0/8", &[(22, 22)])],
    );
    let changes = second
        .apply(&policies(&[(A, api_policy()), (B, changed)]), SEC)
        .unwrap();
    let a = changes.iter().find(|c| c.agent == A).unwrap();
    assert!(a.adopted);
    let b = changes.iter().find(|c| c.agent == B).unwrap();
    assert!(!b.adopted);
    assert_eq!(
        b.old.as_deref().map(str::len),
        Some(16),
        "the old version is known by its id"
    );
    assert_eq!(
        second.kernel().policies[&A],
        kernel.policies[&A],
        "A untouched"
    );
    let a_entries = |k: &FakeKernel| {
        k.entries
            .iter()
            .filter(|(k, _)| k.agent == A)
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        a_entries(second.kernel()),
        a_entries(&kernel),
        "A's entries untouched, pin included"
    );
    assert!(allows(&second, A, "93.184.216.34", 443, SEC));
    assert_eq!(second.kernel().policies[&B].generation, 2);
    assert!(
        second
            .kernel()
            .entries
            .keys()
            .all(|k| k.agent != B || k.generation == 2)
    );
    // The re-adopted pin still lapses.
    second.expire(100 * SEC);
    assert!(!allows(&second, A, "93.184.216.34", 443, 100 * SEC));
}

#[test]
fn removed_policies_and_stray_entries_are_cleared() {
    let mut first = state(FakeKernel::default());
    first
        .apply(&policies(&[(A, api_policy()), (B, api_policy())]), 0)
        .unwrap();
    let mut kernel = first.kernel().clone();
    // A stray entry of a dead generation, as an interrupted switch would leave.
    let stray = EntryKey {
        agent: A,
        generation: 7,
        net: parse_cidr("10.0.0.0/8").unwrap(),
    };
    kernel.entries.insert(stray, Default::default());
    let mut second = state(kernel);
    second.adopt();
    let changes = second.apply(&policies(&[(A, api_policy())]), 0).unwrap();
    assert!(changes.iter().any(|c| c.agent == B && c.new.is_none()));
    assert!(!second.kernel().policies.contains_key(&B));
    assert!(
        second
            .kernel()
            .entries
            .keys()
            .all(|k| k.agent == A && k.generation == 1)
    );
    let changes = second.apply(&policies(&[]), 0).unwrap();
    assert_eq!(changes.len(), 1);
    assert!(second.kernel().entries.is_empty() && second.kernel().policies.is_empty());
}

#[test]
fn pending_deny_is_written_when_it_changes() {
    let mut s = state(FakeKernel::default());
    let mut p = policies(&[(A, api_policy())]);
    p.pending_deny = true;
    s.apply(&p, 0).unwrap();
    assert!(s.kernel().pending_deny);
    p.pending_deny = false;
    s.apply(&p, 0).unwrap();
    assert!(!s.kernel().pending_deny);
}

#[test]
fn a_clean_stop_releases_monitored_agents_dns_only() {
    let mut s = state(FakeKernel::default());
    let monitored = policy(EgressMode::Monitor, vec![]);
    s.apply(&policies(&[(A, api_policy()), (B, monitored)]), 0)
        .unwrap();
    s.release_monitored();
    assert_eq!(
        s.kernel().policies[&A].resolver_port,
        15300,
        "enforced: still redirected"
    );
    assert_eq!(s.kernel().policies[&B].resolver_port, 0);
    assert_eq!(
        s.kernel().policies[&B].mode,
        MODE_MONITOR,
        "still decided and recorded"
    );
    // The next run restores the port while adopting the policy as it is.
    let mut next = state(s.kernel().clone());
    next.adopt();
    let changes = next
        .apply(
            &policies(&[(A, api_policy()), (B, policy(EgressMode::Monitor, vec![]))]),
            0,
        )
        .unwrap();
    assert!(changes.iter().all(|c| c.adopted));
    assert_eq!(next.kernel().policies[&B].resolver_port, 15301);
}

fn quarantine(by: &str) -> Option<Quarantine> {
    Some(Quarantine {
        reason: "test".into(),
        by: by.into(),
        since_ms: 1,
    })
}

#[test]
fn quarantine_holds_with_and_without_a_policy_and_across_reloads() {
    let mut s = state(FakeKernel::default());
    let a = policy(
        EgressMode::Monitor,
        vec![cidr(1, "192.0.2.0/24", &[(443, 443)])],
    );
    s.apply(&policies(&[(A, a.clone())]), 0).unwrap();

    // An agent with a policy: the flag joins its policy entry (monitor mode too).
    assert!(s.set_quarantine(A, quarantine("op")).unwrap());
    assert!(!s.set_quarantine(A, quarantine("op")).unwrap(), "already");
    assert_eq!(s.kernel().policies[&A].quarantined, 1);
    assert_eq!(s.kernel().policies[&A].mode, MODE_MONITOR);
    assert_eq!(s.quarantine_of(A).unwrap().by, "op");

    // An agent without a policy gets a quarantine-only entry.
    assert!(s.set_quarantine(B, quarantine("op")).unwrap());
    assert_eq!(s.kernel().policies[&B].mode, MODE_NONE);
    assert_eq!(s.kernel().policies[&B].quarantined, 1);

    // A reload that changes A's policy and gives B one keeps both quarantined.
    let a2 = policy(
        EgressMode::Enforce,
        vec![cidr(1, "198.51.100.0/24", &[(443, 443)])],
    );
    s.apply(&policies(&[(A, a2), (B, a.clone())]), 0).unwrap();
    assert_eq!(s.kernel().policies[&A].quarantined, 1);
    assert_eq!(s.kernel().policies[&B].quarantined, 1);
    assert_eq!(s.kernel().policies[&B].mode, MODE_MONITOR);

    // Removing every policy keeps the quarantines, as quarantine-only entries.
    s.apply(&policies(&[]), 0).unwrap();
    assert_eq!(s.kernel().policies[&A].mode, MODE_NONE);
    assert_eq!(s.kernel().policies[&A].quarantined, 1);

    // A restart adopts them from the kernel.
    let kernel = s.kernel().clone();
    let mut next = state(kernel);
    next.adopt();
    next.apply(&policies(&[(A, a)]), 0).unwrap();
    assert!(next.quarantine_of(A).is_some() && next.quarantine_of(B).is_some());
    assert_eq!(next.kernel().policies[&A].quarantined, 1);
    assert_eq!(next.kernel().policies[&A].mode, MODE_MONITOR);

    // Release: A keeps its policy, B's entry goes.
    assert!(next.set_quarantine(A, None).unwrap());
    assert!(next.set_quarantine(B, None).unwrap());
    assert!(!next.set_quarantine(B, None).unwrap(), "already released");
    assert_eq!(next.kernel().policies[&A].quarantined, 0);
    assert!(!next.kernel().policies.contains_key(&B));
}

fn journalled(kernel: FakeKernel, dir: &std::path::Path) -> EgressState<FakeKernel> {
    let mut s = state(kernel);
    s.keep_quarantines_in(
        dir.to_owned(),
        BTreeMap::from([(A, "alpha".to_owned()), (B, "beta".to_owned())]),
    );
    s
}

#[test]
fn saved_quarantines_come_back_only_into_new_maps() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = journalled(FakeKernel::default(), dir.path());
    first.set_quarantine(A, quarantine("op")).unwrap();
    // A quarantine of an agent since removed from the configuration stays in the file.
    crate::egress::held::save(
        dir.path(),
        &[
            crate::egress::held::Held {
                agent: "alpha".into(),
                reason: "why".into(),
                by: "op".into(),
                since_ms: 1,
            },
            crate::egress::held::Held {
                agent: "gone".into(),
                reason: "old".into(),
                by: "op".into(),
                since_ms: 2,
            },
        ],
    )
    .unwrap();

    // New maps: alpha is put back; B, quarantined in the earlier run's maps, too.
    let mut fresh = journalled(FakeKernel::default(), dir.path());
    let back = fresh.restore_quarantines(true, &[B]);
    assert_eq!(back.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![A, B]);
    assert_eq!(fresh.kernel().policies[&A].quarantined, 1);
    assert_eq!(fresh.kernel().policies[&B].quarantined, 1);
    assert_eq!(fresh.quarantine_of(A).unwrap().reason, "why");
    let saved = crate::egress::held::load(dir.path()).unwrap();
    assert!(saved.iter().any(|h| h.agent == "gone"), "{saved:?}");
    assert!(saved.iter().any(|h| h.agent == "beta"), "{saved:?}");

    // Adopted maps: the kernel is the truth. Release B in the kernel only (as if agentd died
    // before saving): the file's B is dropped, not put back.
    let mut kernel = fresh.kernel().clone();
    kernel.policies.remove(&B);
    let mut adopted = journalled(kernel, dir.path());
    adopted.adopt();
    let back = adopted.restore_quarantines(false, &[]);
    assert!(back.is_empty(), "{back:?}");
    assert!(adopted.quarantine_of(B).is_none());
    assert_eq!(
        adopted.quarantine_of(A).unwrap().reason,
        "why",
        "details from the file"
    );
    let saved = crate::egress::held::load(dir.path()).unwrap();
    assert!(!saved.iter().any(|h| h.agent == "beta"), "{saved:?}");
}

#[test]
fn an_unreadable_journal_is_moved_aside_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::egress::held::FILE), "{not json").unwrap();
    let mut s = journalled(FakeKernel::default(), dir.path());
    assert!(s.restore_quarantines(true, &[]).is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".bad-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(aside[0].path()).unwrap(),
        "{not json"
    );
}
