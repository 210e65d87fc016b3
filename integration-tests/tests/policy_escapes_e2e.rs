//! The escapes of issue 11, closed, on real containerd 2.1 with the iogate
//! NRI plugin: names a tenant chooses never exclude, a partial ceiling lifts
//! only the knob it names, typos warn; and with the compatibility switch on,
//! the old keyword behaviour returns, loudly. `explain`, given the plugin's
//! own policy file, predicts each of these decisions.

use std::process::Command;

use iogate_core::Limits;
use iogate_testbed::containerd_daemon::Version;
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::require_root;
use iogate_testbed::scenarios::policy::{limits, limits_of_new};
use iogate_testbed::stack::{Stack, StackOptions};
use serde_json::Value;

/// The issue's setup: defaults 500/500, only `batch`'s read ceiling raised.
const POLICY: &str = r#"
[defaults]
read-iops = 500
write-iops = 500
[ceilings.namespaces.batch]
read-iops = "5k"
"#;

/// The four pods that escaped by naming under the keyword rule.
const NAMED: [(&str, &str); 4] =
    [("mesh", "istio-proxy"), ("my-pause-app", "app"), ("db-x", "xpsmdbx"), ("gw", "apisix-but-not-really")];

/// `iogate-nri-plugin explain` with the plugin's policy file; its JSON.
fn explain(stack: &Stack, env: &[(&str, &str)], args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("iogate.toml");
    std::fs::write(&config, stack.policy_text()).unwrap();
    let out = Command::new(iogate_testbed::workspace_binary("iogate-nri-plugin").unwrap())
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("IOGATE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "explain {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What explain says the data disk gets, as the cgroup would hold it.
fn explained_limits(x: &Value, stack: &Stack) -> Limits {
    if x["action"] != "limit" {
        return Limits::UNLIMITED;
    }
    let d = x["devices"].as_array().unwrap().iter().find(|d| d["device"] == stack.device.to_string()).unwrap();
    let knob = |k: &str| d[k].as_u64();
    Limits {
        read_iops: knob("read_iops"),
        write_iops: knob("write_iops"),
        read_bps: knob("read_bps"),
        write_bps: knob("write_bps"),
    }
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn tenant_escapes_are_closed_on_containerd_2_1() {
    require_root();
    let lock = HostLock::acquire().unwrap();
    let mut stack = Stack::start(&lock, StackOptions::external(Version::V2_1, POLICY)).unwrap();
    let default = limits(500, 500);

    // Escape by naming: each gets the defaults, and nothing is excluded.
    for (pod, ctr) in NAMED {
        assert_eq!(limits_of_new(&mut stack, "shop", pod, ctr, &[]), default, "shop/{pod} container {ctr}");
        let x = explain(&stack, &[], &["--namespace", "shop", "--pod", pod, "--container", ctr]);
        assert_eq!(x["action"], "limit", "{x}");
        assert_eq!(explained_limits(&x, &stack), default, "explain shop/{pod} {ctr}: {x}");
        assert_eq!(x["warnings"], serde_json::json!([]), "{x}");
    }
    // A real exclusion (the default: namespace kube-system), loud.
    assert_eq!(limits_of_new(&mut stack, "kube-system", "dns", "coredns", &[]), Limits::UNLIMITED);
    let x = explain(&stack, &[], &["--namespace", "kube-system", "--pod", "dns", "--container", "coredns"]);
    assert_eq!(
        (&x["action"], &x["reason"]),
        (&"exclude".into(), &"namespace kube-system is in exclude.namespaces".into())
    );
    let log = stack.plugin_log();
    let excluded = lines_with(&log, "no limits: excluded");
    assert_eq!(excluded.len(), 1, "a WARN only where an exclusion applied: {excluded:#?}");
    assert!(excluded[0].contains(" WARN ") && excluded[0].contains("kube-system/dns"), "{}", excluded[0]);

    // The partial ceiling: batch may read more, never write more.
    for asked in ["max", "100k"] {
        let ann = [("iogate.io/write-iops", asked)];
        let got = limits_of_new(&mut stack, "batch", &format!("write-{}", asked.to_lowercase()), "app", &ann);
        assert_eq!(got, default, "batch asking write-iops {asked}");
        let a = format!("iogate.io/write-iops={asked}");
        let x = explain(&stack, &[], &["--namespace", "batch", "--pod", "w", "--container", "app", "--annotation", &a]);
        assert_eq!(explained_limits(&x, &stack), default, "{x}");
        assert_eq!(x["knobs"]["write_iops"]["source"], "ceiling", "{x}");
    }
    let got = limits_of_new(&mut stack, "batch", "reader", "app", &[("iogate.io/read-iops", "4k")]);
    assert_eq!(got, limits(4000, 500), "the named knob is lifted");
    let log = stack.plugin_log();
    assert!(
        log.contains("ceiling for namespace batch") && log.contains("riops=5000 wiops=500 rbps=max wbps=max"),
        "{log}"
    );

    // Typos warn: a container the pod does not have, a value with a space.
    let got = limits_of_new(&mut stack, "shop", "typo-name", "db", &[("iogate.io/write-iops.dbb", "100")]);
    assert_eq!(got, default);
    let got = limits_of_new(&mut stack, "shop", "typo-space", "app", &[("iogate.io/write-iops", " 100")]);
    assert_eq!(got, default, "\" 100\" is malformed, not 100");
    let log = stack.plugin_log();
    let unknown = lines_with(&log, "which is not among the pod's containers so far (db)");
    assert!(unknown.len() == 1 && unknown[0].contains(" WARN ") && unknown[0].contains("shop/typo-name"), "{log}");
    let spaced = lines_with(&log, "shop/typo-space");
    assert!(spaced.iter().any(|l| l.contains(" WARN ") && l.contains("expected a whole number")), "{spaced:#?}");
    let x = explain(
        &stack,
        &[],
        &["--namespace", "shop", "--pod", "t", "--container", "db", "--annotation", "iogate.io/write-iops.dbb=100"],
    );
    assert_eq!(explained_limits(&x, &stack), default);
    assert!(x["warnings"][0].as_str().unwrap().contains("names container \"dbb\""), "{x}");

    // The compatibility switch: the old behaviour returns, loudly.
    let compat = [("IOGATE_COMPAT_EXCLUDE_KEYWORDS", "true")];
    stack.start_external_plugin(&[("IOGATE_COMPAT_EXCLUDE_KEYWORDS".into(), "true".into())]).unwrap();
    let log = stack.plugin_log();
    let switch = lines_with(&log, "compatibility switch on");
    assert!(
        switch.len() == 1 && switch[0].contains(" WARN ") && switch[0].contains("unsafe where tenants share a node"),
        "{log}"
    );
    for (pod, ctr) in NAMED {
        let name = format!("compat-{pod}");
        assert_eq!(limits_of_new(&mut stack, "shop", &name, ctr, &[]), Limits::UNLIMITED, "compat shop/{name} {ctr}");
        let x = explain(&stack, &compat, &["--namespace", "shop", "--pod", pod, "--container", ctr]);
        assert_eq!(x["action"], "exclude", "{x}");
        assert!(x["reason"].as_str().unwrap().contains("contains excluded keyword"), "{x}");
    }
    let log = stack.plugin_log();
    // Each new pod once; the restarted plugin's Synchronize also decides the
    // pods still running from before, loudly too.
    let keyword = lines_with(&log, "contains excluded keyword");
    assert!(keyword.iter().all(|l| l.contains(" WARN ") && l.contains("rule=keyword")), "{keyword:#?}");
    let created: Vec<&&str> = keyword.iter().filter(|l| l.contains("pod=shop/compat-")).collect();
    assert_eq!(created.len(), NAMED.len(), "{keyword:#?}");

    // An old config's keyword list without the switch does not start.
    let out = Command::new(iogate_testbed::workspace_binary("iogate-nri-plugin").unwrap())
        .args(["explain", "--namespace", "shop", "--pod", "p", "--container", "c", "--device", "7:0"])
        .env("EXCLUDE_KEYWORDS", "pause")
        .env_remove("IOGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXCLUDE_KEYWORDS (pause) is iops-limit-service's substring rule"), "{err}");
    stack.start_external_plugin(&[]).unwrap();
}
