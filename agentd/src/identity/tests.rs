use std::path::Path;

use sensor_common::identity::HOW_DIRECT;

use super::{maps::FakeMaps, *};
use crate::config::Config;

fn identity(config: &str, root: &Path) -> Identity {
    let config = Config::parse(config, "t.toml").unwrap();
    Identity::new(Registry::new(&config), root.to_owned())
}

/// The `n`th selector of the configuration (in order), as the kernel maps hold it.
fn sel(identity: &Identity, n: usize) -> AgentRef {
    identity.registry().selectors()[n].agent_ref()
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[test]
fn sync_binds_matching_cgroups_and_clears_pending() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("system.slice/agent-a.service")).unwrap();
    std::fs::create_dir_all(root.path().join("system.slice/other.service")).unwrap();
    let mut id = identity(
        "[[agent]]\nname = \"a\"\nselectors = [{ cgroup = \"system.slice/agent-*.service\" }, { uid = 4242 }]\n",
        root.path(),
    );
    let mut maps = FakeMaps {
        pending: vec![1, 2],
        ..FakeMaps::default()
    };
    let changes = id.sync(&mut maps).unwrap();
    let bound = ino(&root.path().join("system.slice/agent-a.service"));
    assert_eq!(maps.cgroups.len(), 1);
    assert_eq!(maps.cgroups[&bound], sel(&id, 0));
    assert!(maps.pending.is_empty());
    assert_eq!(maps.uids[&4242], sel(&id, 1));
    assert_eq!(
        changes,
        vec![IdentityChange::CgroupBound {
            selector_id: sel(&id, 0).selector_id,
            agent_id: sel(&id, 0).agent_id,
            cgroup_id: bound,
            path: "system.slice/agent-a.service".into()
        }]
    );
}

/// Maps re-adopted from an earlier run with another configuration: what the new one does not
/// declare is removed, what it does is kept.
#[test]
fn sync_removes_an_earlier_configurations_selectors() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("a")).unwrap();
    let mut id = identity(
        "[[agent]]\nname = \"a\"\nselectors = [{ cgroup = \"a\" }, { gid = 7 }]\n",
        root.path(),
    );
    let stale = AgentRef {
        agent_id: 99,
        selector_id: 99,
    };
    let mut maps = FakeMaps::default();
    maps.cgroups.insert(12345, stale);
    maps.uids.insert(1000, stale);
    maps.gids.insert(8, stale);
    maps.exes.insert(
        InodeId {
            dev: 1,
            ino: 2,
            ..Default::default()
        },
        ExeRule::default(),
    );
    id.sync(&mut maps).unwrap();
    assert_eq!(maps.cgroups.len(), 1);
    assert!(!maps.cgroups.contains_key(&12345));
    assert!(maps.uids.is_empty() && maps.exes.is_empty());
    assert_eq!(maps.gids.keys().collect::<Vec<_>>(), vec![&7]);
}

#[test]
fn mkdir_and_rmdir() {
    let root = tempfile::tempdir().unwrap();
    let mut id = identity(
        "[[agent]]\nname = \"k\"\nselectors = [{ cgroup = \"kubepods.slice/**/cri-containerd-*.scope\" }]\n",
        root.path(),
    );
    let mut maps = FakeMaps {
        pending: vec![77, 78],
        ..FakeMaps::default()
    };
    let path = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope";
    let change = id.on_mkdir(&mut maps, 77, path).unwrap();
    assert!(matches!(
        change,
        Some(IdentityChange::CgroupBound { cgroup_id: 77, .. })
    ));
    assert_eq!(maps.pending, vec![78]);
    assert!(
        id.on_mkdir(&mut maps, 78, "/kubepods.slice/kubepods-pod1.slice")
            .unwrap()
            .is_none()
    );
    assert!(maps.pending.is_empty());
    assert_eq!(
        id.cgroup_path(77),
        Some("kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope")
    );
    let change = id.on_rmdir(&mut maps, 77);
    assert!(matches!(
        change,
        Some(IdentityChange::CgroupUnbound { cgroup_id: 77, .. })
    ));
    assert!(maps.cgroups.is_empty());
    assert!(id.on_rmdir(&mut maps, 78).is_none());
}

#[test]
fn executable_bound_only_when_the_hash_matches() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    std::fs::write(&tool, b"abc").unwrap();
    let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let config = format!(
        "[[agent]]\nname = \"a\"\nselectors = [{{ executable = \"{}\", sha256 = \"{good}\" }}]\n",
        tool.display()
    );
    let mut id = identity(&config, dir.path());
    let mut maps = FakeMaps::default();
    let selector = sel(&id, 0).selector_id;
    let change = id.check_exe(&mut maps, selector).unwrap();
    assert!(
        matches!(change, IdentityChange::ExeBound { .. }),
        "{change:?}"
    );
    let stamp = exe::stamp(&tool).unwrap();
    assert_eq!(maps.exes[&stamp.inode].agent, sel(&id, 0));
    assert_eq!(maps.exes[&stamp.inode].ctime_sec, stamp.ctime_sec);

    // The file changes: the binding goes, and the refusal says why.
    std::fs::write(&tool, b"abd").unwrap();
    let change = id.check_exe(&mut maps, selector).unwrap();
    match change {
        IdentityChange::ExeRefused {
            reason,
            actual_sha256: Some(_),
            ..
        } => {
            assert!(reason.contains("the configuration expects"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(maps.exes.is_empty());

    // A missing file is refused, not an error.
    std::fs::remove_file(&tool).unwrap();
    assert!(matches!(
        id.check_exe(&mut maps, selector).unwrap(),
        IdentityChange::ExeRefused {
            actual_sha256: None,
            ..
        }
    ));
}

#[test]
fn resolution_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    std::fs::write(&tool, b"x").unwrap();
    let config = format!(
        "[[agent]]\nname = \"by-cgroup\"\nselectors = [{{ cgroup = \"a.slice/*.scope\" }}]\n\
         [[agent]]\nname = \"by-exe\"\nselectors = [{{ executable = \"{}\" }}]\n\
         [[agent]]\nname = \"by-uid\"\nselectors = [{{ uid = 1000 }}]\n\
         [[agent]]\nname = \"by-gid\"\nselectors = [{{ gid = 2000 }}]\n",
        tool.display()
    );
    let mut id = identity(&config, dir.path());
    let mut maps = FakeMaps::default();
    let exe_selector = sel(&id, 1).selector_id;
    id.check_exe(&mut maps, exe_selector).unwrap();
    let exe = Some(exe::stamp(&tool).unwrap().inode);
    let agent = |n: usize| sel(&id, n).agent_id;
    let agent_of = |facts: ProcessFacts<'_>, parent: Option<&Binding>| {
        id.resolve(&facts, parent)
            .map(|(agent, how)| (agent.agent_id, how))
    };
    // A descendant of a matching cgroup belongs to the agent, and cgroup beats everything.
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "a.slice/x.scope/child",
                exe,
                uid: 1000,
                gid: 2000
            },
            None
        ),
        Some((agent(0), HOW_DIRECT))
    );
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "b",
                exe,
                uid: 1000,
                gid: 2000
            },
            None
        ),
        Some((agent(1), HOW_DIRECT))
    );
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "b",
                exe: None,
                uid: 1000,
                gid: 2000
            },
            None
        ),
        Some((agent(2), HOW_DIRECT))
    );
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "b",
                exe: None,
                uid: 1,
                gid: 2000
            },
            None
        ),
        Some((agent(3), HOW_DIRECT))
    );
    let parent = Binding {
        agent: sel(&id, 2),
        how: HOW_DIRECT,
        _pad: 0,
        start_ns: 1,
    };
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "b",
                exe: None,
                uid: 1,
                gid: 1
            },
            Some(&parent)
        ),
        Some((agent(2), HOW_INHERITED))
    );
    assert_eq!(
        agent_of(
            ProcessFacts {
                cgroup: "b",
                exe: None,
                uid: 1,
                gid: 1
            },
            None
        ),
        None
    );
}

#[test]
fn running_processes_inherit_from_bound_parents() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity(
        "[[agent]]\nname = \"a\"\nselectors = [{ cgroup = \"agent.scope\" }]\n",
        dir.path(),
    );
    let proc = |pid, ppid, cgroup: &str| ProcSnapshot {
        pid,
        ppid,
        start_ns: pid as u64 * 1_000_000_000,
        uid: 0,
        gid: 0,
        cgroup: cgroup.into(),
        exe: None,
        comm: String::new(),
        exe_path: None,
        cmdline: String::new(),
    };
    // 10 runs in the agent's cgroup; 11 is its child that moved out; 12 is unrelated.
    let procs = vec![
        proc(10, 1, "agent.scope"),
        proc(11, 10, "elsewhere"),
        proc(12, 1, "elsewhere"),
    ];
    let mut maps = FakeMaps::default();
    let bound = id.bind_running(&mut maps, &procs).unwrap();
    assert_eq!(bound[&10].how, HOW_DIRECT);
    assert_eq!(bound[&11].how, HOW_INHERITED);
    assert!(!bound.contains_key(&12));
    assert_eq!(maps.bindings.len(), 2);
    assert_eq!(maps.bindings[&11].start_ns, 11_000_000_000);
}
