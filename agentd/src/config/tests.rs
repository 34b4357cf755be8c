use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml")
}

fn error(text: &str) -> ConfigError {
    parse(text).expect_err("configuration should be refused")
}

#[test]
fn embedded_default_is_valid() {
    let config = Config::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME).unwrap();
    assert_eq!(config.mode, SensorMode::Agents);
    assert_eq!(config.agents.len(), 1);
    assert_eq!(
        config.agents[0].spiffe_id,
        "spiffe://custos.local/agent/demo"
    );
}

#[test]
fn a_full_configuration() {
    let config = parse(
        r#"
[sensor]
mode = "host"
ring_buffer_bytes = 65536

[output]
events = "/tmp/x.jsonl"
stdout = true

[identity]
trust_domain = "example.org"

[[agent]]
name = "coder"
owner = "team@example.org"
scopes = ["repo:read", "change:author"]
trust_tier = "medium"
selectors = [
  { cgroup = "/system.slice/coder-*.service" },
  { executable = "/usr/local/bin/coder", sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
  { uid = 1001 },
  { gid = 1002 },
]
"#,
    )
    .unwrap();
    assert_eq!(config.mode, SensorMode::Host);
    assert_eq!(config.ring_buffer_bytes, 65536);
    assert!(config.stdout);
    let agent = &config.agents[0];
    assert_eq!(agent.spiffe_id, "spiffe://example.org/agent/coder");
    assert_eq!(agent.trust_tier, TrustTier::Medium);
    assert_eq!(agent.selectors.len(), 4);
    match &agent.selectors[0] {
        SelectorKind::Cgroup { pattern, matcher } => {
            // The leading slash is optional.
            assert_eq!(pattern, "system.slice/coder-*.service");
            assert!(matcher.is_match("system.slice/coder-1.service"));
            // `*` stays within one component.
            assert!(!matcher.is_match("system.slice/coder-1.service/child"));
            assert!(!matcher.is_match("system.slice/x/coder-1.service"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match &agent.selectors[1] {
        SelectorKind::Executable {
            sha256: Some(sha), ..
        } => assert_eq!(sha[0], 0xba),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn double_star_spans_components() {
    let config = parse(
        "[[agent]]\nname = \"k\"\nselectors = [{ cgroup = \"kubepods.slice/**/cri-containerd-*.scope\" }]\n",
    )
    .unwrap();
    let SelectorKind::Cgroup { matcher, .. } = &config.agents[0].selectors[0] else {
        panic!()
    };
    assert!(matcher.is_match(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-ab.scope"
    ));
}

#[test]
fn syntax_errors_have_a_line() {
    let err = error("[sensor]\nmode = \n");
    assert_eq!(err.file, "test.toml");
    assert_eq!(err.line, Some(2));
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let err = error("[sensor]\nmode = \"agents\"\nmodee = \"host\"\n");
    assert_eq!(err.line, Some(3));
    assert!(err.message.contains("unknown field `modee`"), "{err}");
}

#[test]
fn bad_mode_names_field_and_line() {
    let err = error("[sensor]\n\nmode = \"everything\"\n");
    assert_eq!(err.field, "sensor.mode");
    assert_eq!(err.line, Some(3));
    assert!(
        err.to_string()
            .starts_with("test.toml:3:8: field `sensor.mode`"),
        "{err}"
    );
}

#[test]
fn ring_buffer_must_be_a_power_of_two() {
    let err = error("[sensor]\nring_buffer_bytes = 100000\n");
    assert_eq!(err.field, "sensor.ring_buffer_bytes");
    assert_eq!(err.line, Some(2));
}

#[test]
fn bad_glob() {
    let err = error("[[agent]]\nname = \"a\"\nselectors = [{ cgroup = \"system.slice/[oops\" }]\n");
    assert_eq!(err.field, "agent[0].selectors[0].cgroup");
    assert_eq!(err.line, Some(3));
    assert!(err.message.contains("invalid glob"), "{err}");
}

#[test]
fn bad_sha256() {
    let err = error(
        "[[agent]]\nname = \"a\"\nselectors = [{ executable = \"/bin/true\", sha256 = \"abc\" }]\n",
    );
    assert_eq!(err.field, "agent[0].selectors[0].sha256");
}

#[test]
fn relative_executable() {
    let err = error("[[agent]]\nname = \"a\"\nselectors = [{ executable = \"bin/true\" }]\n");
    assert_eq!(err.field, "agent[0].selectors[0].executable");
}

#[test]
fn selector_with_two_kinds() {
    let err = error("[[agent]]\nname = \"a\"\nselectors = [{ uid = 1, gid = 2 }]\n");
    assert_eq!(err.field, "agent[0].selectors[0]");
    assert!(err.message.contains("exactly one"), "{err}");
}

#[test]
fn sha256_without_executable() {
    let err = error(&format!(
        "[[agent]]\nname = \"a\"\nselectors = [{{ uid = 1, sha256 = \"{}\" }}]\n",
        "0".repeat(64)
    ));
    assert_eq!(err.field, "agent[0].selectors[0].sha256");
}

#[test]
fn agent_without_selectors() {
    let err = error("[[agent]]\nname = \"lonely\"\n");
    assert_eq!(err.field, "agent[0].selectors");
    assert_eq!(err.line, Some(2));
}

#[test]
fn duplicate_agent_names() {
    let err = error(
        "[[agent]]\nname = \"a\"\nselectors = [{ uid = 1 }]\n\n[[agent]]\nname = \"a\"\nselectors = [{ uid = 2 }]\n",
    );
    assert_eq!(err.field, "agent[1].name");
    assert_eq!(err.line, Some(6));
}

#[test]
fn one_selector_in_two_agents() {
    let err = error(
        "[[agent]]\nname = \"a\"\nselectors = [{ uid = 1 }]\n\n[[agent]]\nname = \"b\"\nselectors = [{ uid = 1 }]\n",
    );
    assert_eq!(err.field, "agent[1].selectors[0]");
    assert!(
        err.message.contains("also declared by agent \"a\""),
        "{err}"
    );
}

#[test]
fn bad_names_tiers_and_ids() {
    assert_eq!(
        error("[[agent]]\nname = \"a b\"\nselectors = [{ uid = 1 }]\n").field,
        "agent[0].name"
    );
    assert_eq!(
        error("[[agent]]\nname = \"a\"\ntrust_tier = \"max\"\nselectors = [{ uid = 1 }]\n").field,
        "agent[0].trust_tier"
    );
    assert_eq!(
        error("[[agent]]\nname = \"a\"\nselectors = [{ uid = -1 }]\n").field,
        "agent[0].selectors[0].uid"
    );
    assert_eq!(
        error("[identity]\ntrust_domain = \"Example.ORG\"\n").field,
        "identity.trust_domain"
    );
    assert_eq!(
        error("[output]\nevents = \"relative.jsonl\"\n").field,
        "output.events"
    );
}

#[test]
fn unreadable_file() {
    let err = Config::load(Path::new("/nonexistent/agentd.toml")).unwrap_err();
    assert_eq!(err.file, "/nonexistent/agentd.toml");
    assert!(err.message.contains("cannot read"), "{err}");
}

#[test]
fn log_settings() {
    let config = parse("[log]\ndir = \"/srv/log\"\nkey = \"/srv/keys/log.key\"\nretention_days = 0\nsegment_mib = 8\n").unwrap();
    assert_eq!(config.log.dir, PathBuf::from("/srv/log"));
    assert_eq!(config.log.retention_age, None);
    assert_eq!(config.log.segment_bytes, 8 << 20);
    assert_eq!(parse("").unwrap().log, LogSettings::default());
    let err = error("[log]\ndir = \"/srv/log\"\nkey = \"/srv/log/k\"\n");
    assert_eq!((err.field.as_str(), err.line), ("log.key", Some(3)));
    assert_eq!(
        error("[log]\ncheckpoint_interval_ms = 0\n").field,
        "log.checkpoint_interval_ms"
    );
    assert_eq!(error("[log]\norigin = \"a b\"\n").field, "log.origin");
}

#[test]
fn api_settings_are_validated() {
    let config = Config::parse(
        "[api]\nsocket = \"/run/x/agentd.sock\"\nsocket_group = \"root\"\nsubscriber_window = 32\n[api.tcp]\nlisten = \"127.0.0.1:7443\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nclient = [{ identity = \"spiffe://t/auditor\", role = \"reader\" }, { identity = \"ops\", role = \"operator\" }]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(config.api.socket_group, Some(("root".into(), 0)));
    assert_eq!(config.api.subscriber_window, 32);
    assert_eq!(
        config.api.role_of(&["x".into(), "ops".into()]),
        Some(("ops", crate::config::api::Role::Operator))
    );
    assert_eq!(config.api.role_of(&["nobody".into()]), None);

    let refused = |text: &str, field: &str| {
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.line.is_some(), "{err}");
    };
    refused("[api]\nsocket = \"relative.sock\"\n", "api.socket");
    refused(
        "[api]\nsocket_group = \"no-such-group-here\"\n",
        "api.socket_group",
    );
    refused("[api]\nsubscriber_window = 1\n", "api.subscriber_window");
    refused(
        "[api.tcp]\nlisten = \"nowhere\"\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\nclient = [{ identity = \"a\", role = \"reader\" }]\n",
        "api.tcp.listen",
    );
    refused(
        "[api.tcp]\nlisten = \"127.0.0.1:1\"\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\nclient = [{ identity = \"a\", role = \"admin\" }]\n",
        "api.tcp.client[0].role",
    );
    refused(
        "[api.tcp]\nlisten = \"127.0.0.1:1\"\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n",
        "api.tcp.client",
    );
}

#[test]
fn detector_settings_are_validated() {
    use crate::config::detector::Detection;
    use ::detector::incident::Step;

    let config = Config::parse(
        "[detector]\nwindow_seconds = 10\nquiet_seconds = 60\ndry_run = true\n[detector.ladder]\nlow = \"kill\"\n[detector.webhook]\nurl = \"http://127.0.0.1:9/x\"\n[[agent]]\nname = \"a\"\ndetection = \"enforce\"\nselectors = [{ uid = 1 }]\n",
        "t.toml",
    )
    .unwrap();
    let d = &config.detector;
    assert!(d.enabled);
    assert_eq!(d.detector.window_ms, 10_000);
    assert_eq!(d.detector.lifecycle.quiet_ms, 60_000);
    assert!(d.detector.dry_run);
    assert_eq!(d.detector.ladder.low, Step::Kill);
    assert_eq!(d.detector.ladder.medium, Step::Quarantine, "default kept");
    assert_eq!(d.webhook.as_ref().map(|w| w.attempts), Some(5));
    assert_eq!(config.agents[0].detection, Detection::Enforce);
    assert_eq!(
        d.baselines_path(std::path::Path::new("/s")),
        std::path::PathBuf::from("/s/detector/baselines.json")
    );
    // The default: monitor.
    let config = Config::parse(
        "[[agent]]\nname = \"a\"\nselectors = [{ uid = 1 }]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(config.agents[0].detection, Detection::Monitor);

    let refused = |text: &str, field: &str| {
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.line.is_some(), "{err}");
    };
    refused(
        "[detector]\nwindow_seconds = 0\n",
        "detector.window_seconds",
    );
    refused(
        "[detector.ladder]\nmedium = \"nuke\"\n",
        "detector.ladder.medium",
    );
    refused(
        "[detector]\nbaselines = \"rel.json\"\n",
        "detector.baselines",
    );
    refused(
        "[detector.webhook]\nurl = \"ftp://x\"\n",
        "detector.webhook.url",
    );
    refused(
        "[detector.webhook]\nurl = \"https://siem.example\"\n",
        "detector.webhook.ca",
    );
    refused(
        "[[agent]]\nname = \"a\"\ndetection = \"always\"\nselectors = [{ uid = 1 }]\n",
        "agent[0].detection",
    );
    refused("[detector]\nsurprise = 1\n", "");
}
