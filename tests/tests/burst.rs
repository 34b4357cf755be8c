//! A burst of 10,000 short-lived agent processes: every exec is either reported or counted as
//! lost, and the two add up to exactly what the workload ran.

use custos_tests::{Agentd, Cgroup, Running, Value, unique, workload_path};

const BURST: u64 = 10_000;

/// Runs the burst in an agent cgroup; `during` runs while the burst is under way. Stops agentd
/// and returns the number of exec records whose parent is the workload, the exec losses
/// reported, and every record.
fn burst(mut agentd: Agentd, during: impl FnOnce(&Agentd)) -> (u64, u64, Vec<Value>) {
    let unit = unique("custos-burst");
    let cgroup = Cgroup::create(&format!("system.slice/{unit}.service"));
    let mut cmd = cgroup.command(workload_path());
    cmd.args([
        "pid",
        "wait-line",
        &format!("spawn:{BURST}:/bin/true"),
        "pid",
        "exit:0",
    ]);
    let mut running = Running::spawn(cmd);
    let pid: u32 = running.line().parse().unwrap();
    // The workload's own exec is in before the burst starts, so it cannot be among the losses.
    agentd.wait_for("the workload's exec", |r| {
        r["kind"] == "process.exec" && r["process"]["pid"] == pid
    });
    running.go();
    during(&agentd);
    assert_eq!(running.line(), pid.to_string(), "the burst finished");
    assert_eq!(running.wait(), 0);
    // Stopping drains the ring buffer and polls the loss counters one last time. (Waiting for
    // the workload's exit record instead could wait forever: with a stalled reader that record
    // may be among the losses.)
    let records = agentd.stop();
    let reported = records
        .iter()
        .filter(|r| r["kind"] == "process.exec" && r["process"]["parent_process"]["pid"] == pid)
        .count() as u64;
    let lost: u64 = records
        .iter()
        .filter(|r| r["kind"] == "sensor.loss" && r["loss"]["what"] == "exec")
        .map(|r| r["loss"]["count"].as_u64().unwrap())
        .sum();
    (reported, lost, records)
}

const CONFIG: &str = "[[agent]]\nname = \"burst\"\nselectors = [{ cgroup = \"system.slice/custos-burst-*.service\" }]\n";

#[test]
fn every_exec_is_reported_or_counted() {
    let (reported, lost, _) = burst(Agentd::start(CONFIG), |_| {});
    eprintln!("burst: {reported} exec records reported, {lost} counted as lost");
    assert_eq!(reported + lost, BURST);
}

#[test]
fn losses_are_counted_exactly_when_agentd_falls_behind() {
    // A 1 MiB ring and a consumer stopped for the length of the burst: the ring overflows, so
    // the kernel must count what it drops.
    let agentd = Agentd::start(&format!(
        "[sensor]\nring_buffer_bytes = 1048576\n\n{CONFIG}"
    ));
    let (reported, lost, records) = burst(agentd, |agentd| {
        agentd.signal(libc::SIGSTOP);
        std::thread::sleep(std::time::Duration::from_secs(3));
        agentd.signal(libc::SIGCONT);
    });
    eprintln!(
        "burst with a stalled reader: {reported} exec records reported, {lost} counted as lost"
    );
    assert!(
        lost > 0,
        "the stalled reader should have made the kernel drop records"
    );
    assert_eq!(reported + lost, BURST);
    // Losses of the other kinds are reported too, each with a count.
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "sensor.loss" && r["loss"]["what"] == "fork")
    );
}
