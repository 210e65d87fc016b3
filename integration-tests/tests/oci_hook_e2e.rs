//! The OCI hook without any container manager: runc runs a bundle whose
//! config carries the hook, on a loop device, with fio from the first
//! instant. The hook decides from the bundle's annotations and the policy,
//! exactly as under Podman, CRI-O or containerd's base runtime spec.

use std::time::{Duration, Instant};

use iogate_core::{CgroupFs, CgroupVersion, Device, Limits};
use iogate_testbed::containerd_daemon::remove_cgroup_tree;
use iogate_testbed::fio::{self, Job, Measured, Rw};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::loop_disk::LoopDisk;
use iogate_testbed::oci_image;
use iogate_testbed::runc_bundle::Bundle;
use serde_json::json;

#[test]
fn runc_bundle_is_throttled_from_its_first_io() {
    iogate_testbed::require_root();
    let _lock = HostLock::acquire().unwrap();
    let image = oci_image::build_test_image(&oci_image::default_image_dir()).unwrap();
    let disk = LoopDisk::new(512).unwrap();
    let (maj, min) = disk.major_minor().unwrap();
    let data = disk.subdir("bundle").unwrap();
    let hook = iogate_testbed::workspace_binary("iogate-oci-hook").unwrap();
    let log = data.join("hook.log");
    let parent = format!("/iogate-hook-e2e-{}", std::process::id());
    let job = Job::new("fio", Rw::RandRead, 5);
    job.prepare(&data).unwrap();

    let hooks = json!({ "createRuntime": [{
        "path": hook,
        "args": ["iogate-oci-hook", "--log", log],
        "env": [format!("DATA_MOUNT={}", disk.mount_point().display()), "CONTAINER_IOPS_LIMIT=400"]
    }]});
    // Podman-style: the container's own annotations carry the request.
    let annotations = json!({ "iogate.io/read-iops": "150" });
    let bundle =
        Bundle::new(&image.rootfs, &job.command("/data"), &data, hooks, annotations, &format!("{parent}/c1")).unwrap();
    let out = bundle.run_detached().unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(out.status.success(), "runc run failed: {}", String::from_utf8_lossy(&out.stderr));
        let pid = bundle.pid().unwrap();
        assert!(pid > 0, "the container is not running: {}", bundle.output());
        let cgroups = CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio");
        let cg = cgroups.cgroup_of_pid(pid).unwrap();
        let got = cgroups.read_limits(&cg, Device::new(maj, min)).unwrap();
        assert_eq!(got, Limits { read_iops: Some(150), write_iops: Some(400), ..Limits::UNLIMITED });

        // Idempotent: the same hook run again on the running container
        // changes nothing, and says so.
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"{}","status":"running","pid":{pid},"bundle":"{}"}}"#,
            bundle.id,
            bundle.path().display()
        );
        let mut again = std::process::Command::new(&hook)
            .env("DATA_MOUNT", disk.mount_point())
            .env("CONTAINER_IOPS_LIMIT", "400")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut again.stdin.take().unwrap(), state.as_bytes()).unwrap();
        let out = again.wait_with_output().unwrap();
        let line = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && line.contains(&format!("{} already has 7:", cg)), "second run: {line}");
        assert_eq!(cgroups.read_limits(&cg, Device::new(maj, min)).unwrap(), got);

        // Wait for fio to finish (the container stops on its own).
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = Measured::read(&job, &data).unwrap();
        eprintln!("runc bundle: limit 150 read IOPS, measured {:.1}, per second {:?}", m.iops, m.per_second);
        assert!(fio::within(m.iops, 150.0, 10.0), "measured {:.1} IOPS, limit 150", m.iops);
        assert!(m.per_second[0] <= 165.0, "first second at {:.1} IOPS: not throttled from the start", m.per_second[0]);
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("read-iops=150 (iogate.io/read-iops)"), "{logged}");
    });
    drop(bundle);
    remove_cgroup_tree(&parent);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// Podman with `--hooks-dir` pointing at the shipped hooks.d file (only the
/// binary path and environment filled in): same guarantee, no NRI anywhere.
#[test]
fn podman_with_the_shipped_hooks_d_file() {
    iogate_testbed::require_root();
    if !std::path::Path::new("/usr/bin/podman").exists() {
        panic!("expected podman at /usr/bin/podman (scripts/install-deps.sh installs it)");
    }
    let _lock = HostLock::acquire().unwrap();
    let image = oci_image::build_test_image(&oci_image::default_image_dir()).unwrap();
    let disk = LoopDisk::new(512).unwrap();
    let (maj, min) = disk.major_minor().unwrap();
    let data = disk.subdir("podman").unwrap();
    let work = tempfile::tempdir().unwrap();
    let hook = iogate_testbed::workspace_binary("iogate-oci-hook").unwrap();
    let log = work.path().join("hook.log");

    let shipped = iogate_testbed::repo_root().join("oci-hook/config/hooks.d/iogate.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&shipped).unwrap()).unwrap();
    spec["hook"]["path"] = json!(hook);
    spec["hook"]["args"] = json!(["iogate-oci-hook", "--log", log]);
    spec["hook"]["env"] = json!([format!("DATA_MOUNT={}", disk.mount_point().display())]);
    let hooks_dir = work.path().join("hooks.d");
    std::fs::create_dir(&hooks_dir).unwrap();
    std::fs::write(hooks_dir.join("iogate.json"), serde_json::to_vec(&spec).unwrap()).unwrap();

    let parent = format!("/iogate-podman-{}", std::process::id());
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("runroot"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "/usr/sbin/runc"])
            .arg("--hooks-dir")
            .arg(&hooks_dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let job = Job::new("fio", Rw::RandRead, 5);
    job.prepare(&data).unwrap();
    let result = std::panic::catch_unwind(|| {
        let (ok, _, err) = podman(&["load", "-i", image.tarball.to_str().unwrap()]);
        assert!(ok, "podman load: {err}");
        let volume = format!("{}:/data", data.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            "iogate-podman",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
            // This machine's root lacks CAP_SYS_RESOURCE: podman's default rlimits would fail in runc.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--annotation",
            "iogate.io/read-iops=120",
            "-v",
            &volume,
            oci_image::REFERENCE,
        ];
        let cmd = job.command("/data");
        args.extend(cmd.iter().map(String::as_str));
        let (ok, _, err) = podman(&args);
        assert!(ok, "podman run: {err}");
        let (_, pid, _) = podman(&["inspect", "-f", "{{.State.Pid}}", "iogate-podman"]);
        let pid: u32 = pid.parse().unwrap_or_else(|_| panic!("podman inspect pid: {pid:?}"));
        if pid == 0 {
            let (_, out, err) = podman(&["logs", "iogate-podman"]);
            panic!(
                "the podman container is not running; logs: {out} {err}; hook log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let cgroups = CgroupFs::new(CgroupVersion::V1, "/sys/fs/cgroup/blkio");
        let cg = cgroups.cgroup_of_pid(pid).unwrap();
        let got = cgroups.read_limits(&cg, Device::new(maj, min)).unwrap();
        assert_eq!(got, Limits { read_iops: Some(120), write_iops: Some(500), ..Limits::UNLIMITED });
        let (ok, code, err) = podman(&["wait", "iogate-podman"]);
        assert!(ok && code == "0", "fio in podman: exit {code} {err}");
        let m = Measured::read(&job, &data).unwrap();
        eprintln!("podman: limit 120 read IOPS, measured {:.1}, per second {:?}", m.iops, m.per_second);
        assert!(fio::within(m.iops, 120.0, 10.0), "measured {:.1} IOPS, limit 120", m.iops);
        assert!(m.per_second[0] <= 132.0, "first second at {:.1} IOPS: not throttled from the start", m.per_second[0]);
    });
    let _ = podman(&["rm", "--force", "--all"]);
    let _ = podman(&["system", "reset", "--force"]);
    remove_cgroup_tree(&parent);
    // podman keeps its conmon cgroups under /libpod_parent.
    remove_cgroup_tree("/libpod_parent");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
