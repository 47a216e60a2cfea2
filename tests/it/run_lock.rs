//! The run-directory lock: a second `vssl train` / `vssl eval` into a directory in use
//! is refused naming the holder's pid and host; a lock left by a killed process on
//! this host, or one another host stopped refreshing, is taken over with a warning.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{run, stderr, tiny_recipe, train, vssl};

#[test]
fn a_live_lock_refuses_and_a_dead_holders_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "[train]\nsteps = 100000\n");
    let out = dir.path().join("run");
    let mut child = vssl(&[
        "train",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let began = Instant::now();
    while !(out.join("lock").exists() && out.join("recipe.resolved.toml").exists()) {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the trainer never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    for args in [
        vec![
            "train",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--resume",
        ],
        vec![
            "eval",
            out.to_str().unwrap(),
            "--protocol",
            "knn",
            "--device",
            "cpu",
        ],
    ] {
        let o = run(&mut vssl(&args));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("in use by pid {pid} on host")),
            "{}",
            stderr(&o)
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(out.join("lock").exists(), "SIGKILL leaves the lock behind");
    let o = train(&recipe, &out, &["--resume", "--stop-after", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("taking over the stale lock of pid {pid}")),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("lock").exists(), "released at exit");
}

#[test]
fn a_lock_from_another_host_is_stale_only_once_it_stops_being_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let lock = out.join("lock");
    std::fs::write(
        &lock,
        r#"{"pid": 4242, "host": "gpu-node-17", "what": "vssl train", "since": 0, "token": "x"}"#,
    )
    .unwrap();
    let o = train(&recipe, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("in use by pid 4242 on host gpu-node-17"),
        "{}",
        stderr(&o)
    );
    // Ten minutes without a refresh: the holder is gone.
    let old = SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options()
        .append(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let o = train(&recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stale lock of pid 4242 on host gpu-node-17"),
        "{}",
        stderr(&o)
    );
    assert!(out.join("model.safetensors").exists());
}
