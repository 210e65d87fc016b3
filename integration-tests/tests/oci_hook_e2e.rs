//! The OCI hook without any container manager: runc runs a bundle whose
//! config carries the hook, on a loop device, with fio from the first
//! instant. The hook decides from the bundle's annotations and the policy,
//! exactly as under Podman, CRI-O or containerd's base runtime spec.

use std::time::{Duration, Instant};

use iogate_core::{CgroupFs, CgroupVersion, Device, Limits};
use iogate_integration_tests::containerd_daemon::remove_cgroup_tree;
use iogate_integration_tests::fio::{self, Job, Measured, Rw};
use iogate_integration_tests::host_lock::HostLock;
use iogate_integration_tests::loop_disk::LoopDisk;
use iogate_integration_tests::oci_image;
use iogate_integration_tests::runc_bundle::Bundle;
use serde_json::json;

#[test]
fn runc_bundle_is_throttled_from_its_first_io() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root (runc, loop devices, cgroups)");
        return;
    }
    let _lock = HostLock::acquire().unwrap();
    let image = oci_image::build_test_image(&oci_image::default_image_dir()).unwrap();
    let disk = LoopDisk::new(512).unwrap();
    let (maj, min) = disk.major_minor().unwrap();
    let data = disk.subdir("bundle").unwrap();
    let hook = iogate_integration_tests::workspace_binary("iogate-oci-hook").unwrap();
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
