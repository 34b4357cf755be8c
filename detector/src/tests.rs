//! The detector end to end on synthetic activity with known answers.

use super::*;

const SEC: u64 = 1_000;

fn settings() -> Settings {
    Settings {
        window_ms: 10 * SEC,
        lifecycle: Lifecycle {
            min_learning_ms: 300 * SEC,
            quiet_ms: 60 * SEC,
            shadow_ms: 0,
            min_windows: 25,
            ..Lifecycle::default()
        },
        incident_gap_ms: 120 * SEC,
        ..Settings::default()
    }
}

fn spec(id: u32, enforce: bool, tier: Tier) -> AgentSpec {
    AgentSpec {
        id,
        name: format!("agent-{id}"),
        fingerprint: "v1".into(),
        enforce,
        tier,
    }
}

/// A coding agent's routine: runs git and the tests, reads and writes its project, calls its
/// API. `i` varies the amounts a little.
fn routine(d: &mut Detector, agent: u32, now: u64, i: u64) -> Vec<Output> {
    let mut out = Vec::new();
    let mut seq = now;
    let mut ev = |d: &mut Detector, o: Observation<'_>| {
        seq += 1;
        out.extend(d.observe(agent, now, Some(seq), o));
    };
    ev(
        d,
        Observation::Exec {
            exe: "/usr/bin/git",
            parent_exe: Some("/usr/bin/python3"),
        },
    );
    for _ in 0..(3 + i % 4) {
        ev(
            d,
            Observation::Open {
                path: "/work/proj/src/main.rs",
                write: false,
                ok: true,
            },
        );
    }
    ev(
        d,
        Observation::Open {
            path: "/work/proj/src/lib.rs",
            write: true,
            ok: true,
        },
    );
    if i.is_multiple_of(2) {
        ev(
            d,
            Observation::Exec {
                exe: "/usr/bin/cargo",
                parent_exe: Some("/usr/bin/python3"),
            },
        );
    }
    ev(
        d,
        Observation::Connect {
            exe: Some("/usr/bin/python3"),
            addr: "192.0.2.10".parse().unwrap(),
            port: 443,
            name: Some("api.example.com"),
            udp: false,
            ok: true,
        },
    );
    out
}

/// Runs the routine every 5 s from `from` to `to`, ticking each second with `cpu` ms per tick.
fn run(d: &mut Detector, agent: u32, from: u64, to: u64, cpu: u64) -> Vec<Output> {
    let mut out = Vec::new();
    let mut t = from;
    let mut i = from / SEC;
    while t < to {
        if t.is_multiple_of(5 * SEC) {
            out.extend(routine(d, agent, t, i));
            i += 1;
        }
        out.extend(d.tick(t, &[(agent, cpu + (i % 3) * 5, true)]));
        t += SEC;
    }
    out
}

fn alerts(out: &[Output]) -> Vec<&Alert> {
    out.iter()
        .filter_map(|o| match o {
            Output::Alert(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn actions(out: &[Output]) -> Vec<&Action> {
    out.iter()
        .filter_map(|o| match o {
            Output::Action(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn stages(out: &[Output]) -> Vec<Stage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stage { transition, .. } => Some(transition.to),
            _ => None,
        })
        .collect()
}

/// A detector whose agent 1 learned the routine and is stable (enforcing when asked).
fn trained(enforce: bool, tier: Tier) -> (Detector, u64) {
    let mut d = Detector::new(settings(), Normaliser::default(), None);
    let out = d.configure(&[spec(1, enforce, tier)], 0);
    assert_eq!(stages(&out), vec![Stage::Learning]);
    let out = run(&mut d, 1, 0, 400 * SEC, 20);
    assert!(alerts(&out).is_empty(), "learning raises nothing");
    let expect = if enforce {
        vec![Stage::Stable, Stage::Enforcing]
    } else {
        vec![Stage::Stable]
    };
    assert_eq!(stages(&out), expect);
    (d, 400 * SEC)
}

#[test]
fn benign_activity_after_learning_raises_nothing() {
    let (mut d, t) = trained(true, Tier::Low);
    let (_, summary, _) = &d.status()[0];
    assert!(summary.model.is_some(), "{:?}", summary.model_note);
    let out = run(&mut d, 1, t, t + 600 * SEC, 20);
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    assert!(actions(&out).is_empty());
}

#[test]
fn credential_read_is_high_and_contained_at_once() {
    let (mut d, t) = trained(true, Tier::Medium);
    let out = d.observe(
        1,
        t,
        Some(9_000),
        Observation::Open {
            path: "/root/.ssh/id_ed25519",
            write: false,
            ok: true,
        },
    );
    let a = alerts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].severity, Severity::High);
    assert_eq!(a[0].evidence, vec![9_000]);
    assert!(
        a[0].findings
            .iter()
            .any(|f| f.signal == Signal::New(Category::Sensitive) && f.item == "read:/.ssh/")
    );
    let acts = actions(&out);
    assert_eq!(acts.len(), 1);
    assert_eq!((acts[0].step, acts[0].mode), (Step::Quarantine, Mode::Act));
    // The exfiltration that follows joins the same incident; a medium-trust agent stops at
    // quarantine.
    let out = d.observe(
        1,
        t + 100,
        Some(9_001),
        Observation::Connect {
            exe: Some("/usr/bin/curl"),
            addr: "203.0.113.7".parse().unwrap(),
            port: 8443,
            name: None,
            udp: false,
            ok: true,
        },
    );
    assert!(alerts(&out).is_empty(), "already alerted at High");
    assert!(actions(&out).is_empty());
    let (_, _, incident) = &d.status()[0];
    let incident = incident.expect("open");
    assert_eq!(incident.evidence, vec![9_000, 9_001]);
    assert_eq!(incident.contained, Some(Step::Quarantine));
}

#[test]
fn corroborated_novelty_escalates_and_climbs_the_ladder() {
    let (mut d, t) = trained(true, Tier::Low);
    // Download: a new destination alone is worth a look, not containment.
    let out = d.observe(
        1,
        t,
        Some(1),
        Observation::Connect {
            exe: Some("/usr/bin/python3"),
            addr: "198.51.100.3".parse().unwrap(),
            port: 80,
            name: None,
            udp: false,
            ok: true,
        },
    );
    let a = alerts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].severity, Severity::Medium);
    assert!(actions(&out).is_empty());
    // ... and execute: the agent runs what it wrote. Two independent kinds of novelty: High.
    let mut out = d.observe(
        1,
        t + 10,
        Some(2),
        Observation::Open {
            path: "/tmp/x1",
            write: true,
            ok: true,
        },
    );
    out.extend(d.observe(
        1,
        t + 20,
        Some(3),
        Observation::Exec {
            exe: "/tmp/x1",
            parent_exe: Some("/usr/bin/python3"),
        },
    ));
    let a = alerts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].severity, a[0].previous),
        (Severity::High, Some(Severity::Medium))
    );
    // Writing to a new directory already corroborated the new destination; running what
    // was written joins the incident.
    let status = d.status();
    let incident = status[0].2.expect("open");
    assert!(
        incident
            .findings
            .iter()
            .any(|f| f.signal == Signal::New(Category::WrittenExec) && f.item == "/tmp")
    );
    let acts = actions(&out);
    assert_eq!((acts.len(), acts[0].step), (1, Step::Quarantine));
    // It keeps going (reads a credential): the next step, freeze, the low tier's limit.
    let out = d.observe(
        1,
        t + 30,
        Some(4),
        Observation::Open {
            path: "/home/u/.aws/credentials",
            write: false,
            ok: true,
        },
    );
    assert_eq!(actions(&out)[0].step, Step::Freeze);
    let out = d.observe(
        1,
        t + 40,
        Some(5),
        Observation::Open {
            path: "/proc/1/environ",
            write: false,
            ok: true,
        },
    );
    assert!(actions(&out).is_empty(), "freeze is the low tier's limit");
    // Release closes the incident; the next finding opens a new one.
    let closed = d.release(1).expect("open incident");
    assert!(matches!(closed, Output::Closed { incident: 1, .. }));
    let out = d.observe(1, t + 50, Some(6), Observation::Listen { port: 4444 });
    assert_eq!(alerts(&out)[0].incident, 2);
}

#[test]
fn monitor_dry_run_and_rate_limit_only_log() {
    let cred = Observation::Open {
        path: "/etc/shadow",
        write: false,
        ok: true,
    };
    // Stable, not enforcing: what would be done is logged.
    let (mut d, t) = trained(false, Tier::Low);
    let out = d.observe(1, t, Some(1), cred);
    assert_eq!(actions(&out)[0].mode, Mode::Monitor);
    let out = d.observe(1, t, Some(2), Observation::Listen { port: 1 });
    assert!(actions(&out).is_empty(), "logged once per step");

    let (mut d, t) = trained(true, Tier::Low);
    d.settings.dry_run = true;
    let out = d.observe(1, t, Some(1), cred);
    assert_eq!(actions(&out)[0].mode, Mode::DryRun);

    let (mut d, t) = trained(true, Tier::Low);
    d.settings.max_actions_per_hour = 0;
    let out = d.observe(1, t, Some(1), cred);
    assert_eq!(actions(&out)[0].mode, Mode::RateLimited);
}

#[test]
fn learning_alerts_only_on_sensitive_resources() {
    let mut d = Detector::new(settings(), Normaliser::default(), None);
    d.configure(&[spec(1, true, Tier::Low)], 0);
    let out = d.observe(
        1,
        0,
        Some(1),
        Observation::Connect {
            exe: Some("/usr/bin/nc"),
            addr: "203.0.113.1".parse().unwrap(),
            port: 1,
            name: None,
            udp: false,
            ok: true,
        },
    );
    assert!(alerts(&out).is_empty());
    let out = d.observe(
        1,
        0,
        Some(2),
        Observation::Open {
            path: "/root/.ssh/id_rsa",
            write: false,
            ok: true,
        },
    );
    let a = alerts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].severity, Severity::Medium);
    assert_eq!(a[0].stage, Stage::Learning);
    assert!(actions(&out).is_empty(), "never contained while learning");
}

#[test]
fn unusual_windows_alert_and_sustained_ones_contain() {
    let (mut d, t) = trained(true, Tier::Medium);
    // Same routine, but the agent's processes burn a whole CPU.
    let out = run(&mut d, 1, t, t + 40 * SEC, 1_000);
    let a = alerts(&out);
    assert!(!a.is_empty(), "a CPU-bound window is unusual");
    assert_eq!(a[0].severity, Severity::Medium);
    assert!(
        a[0].findings[0].item.contains("cpu_ms"),
        "{}",
        a[0].findings[0].item
    );
    assert_eq!(a.last().unwrap().severity, Severity::High, "sustained");
    assert_eq!(actions(&out)[0].step, Step::Quarantine);
}

#[test]
fn quiet_incidents_close_contained_ones_wait_for_release() {
    let (mut d, t) = trained(true, Tier::Low);
    d.observe(1, t, Some(1), Observation::Listen { port: 9 });
    let out = run(&mut d, 1, t, t + 200 * SEC, 20);
    assert!(out.iter().any(|o| matches!(o, Output::Closed { .. })));
    d.observe(
        1,
        t + 200 * SEC,
        Some(2),
        Observation::Open {
            path: "/etc/gshadow",
            write: false,
            ok: true,
        },
    );
    let out = run(&mut d, 1, t + 201 * SEC, t + 600 * SEC, 20);
    assert!(!out.iter().any(|o| matches!(o, Output::Closed { .. })));
    assert!(d.release(1).is_some());
}

#[test]
fn a_new_version_learns_again_and_profiles_survive_a_restart() {
    let (d, t) = trained(true, Tier::Low);
    let saved = d.saved();
    let text = serde_json::to_string(&saved).unwrap();
    let saved: Saved = serde_json::from_str(&text).unwrap();
    saved.check().unwrap();

    // Same version after a restart: still enforcing, still knows the routine.
    let mut d = Detector::new(settings(), Normaliser::default(), Some(saved.clone()));
    let out = d.configure(&[spec(1, true, Tier::Low)], t);
    assert!(stages(&out).is_empty());
    assert_eq!(d.status()[0].1.stage, Stage::Enforcing);
    let out = run(&mut d, 1, t, t + 100 * SEC, 20);
    assert!(alerts(&out).is_empty());

    // A new executable hash: a successor profile, learning, knowing the old items.
    let mut d = Detector::new(settings(), Normaliser::default(), Some(saved));
    let mut v2 = spec(1, true, Tier::Low);
    v2.fingerprint = "v2".into();
    let out = d.configure(&[v2], t);
    assert_eq!(stages(&out), vec![Stage::Learning]);
    let summary = &d.status()[0].1;
    assert_eq!(summary.stage, Stage::Learning);
    assert!(
        summary
            .items
            .iter()
            .any(|(c, n)| *c == Category::Exe && *n == 2)
    );
}
