//! `make bench`, second half: what the metrics sidecar costs, measured on
//! this machine (root, blkio v1, loop devices, fio, bpftrace).
//!
//! * `overhead`: the price of the eBPF probes on the I/O path. fio 4 KiB
//!   random reads at queue depth 32 on a tmpfs-backed loop device — fast
//!   enough that a per-request cost shows in IOPS instead of hiding under a
//!   disk's latency — with the probes detached and attached (one
//!   in-process `EbpfSource`), alternating rounds in one run. Then, with
//!   `kernel.bpf_stats_enabled` on (it adds its own cost, so only in extra
//!   rounds), the kernel's BPF run time per request and per program run.
//! * `peer`: the same workload with and without a bpftrace script doing the
//!   equivalent work (start times keyed by request, per-cgroup latency
//!   histograms), so our loss has a yardstick.
//! * `pods`: the sidecar binary watching 1,000 pod-shaped blkio cgroups that
//!   all do I/O all the time: its RSS and CPU over a minute (`sidecar:`),
//!   then the latency and size of `GET /metrics` and `GET /api/v1/metrics`
//!   at that scale (`scrape:`), 64 clients scraping `/metrics` at once and
//!   the sidecar's RSS meanwhile (`concurrent:`), and `/healthz` while
//!   2,000 connections sit open without a request, until the sidecar has
//!   closed them (`half-open:`).
//!
//! IOPS figures are medians over rounds (with the range); latencies are
//! medians and 95th percentiles. Compare ratios within one run, not absolute
//! numbers across machines.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use iogate_core::Device;
use iogate_metrics_sidecar::counters::{CounterSource, Direction, IoKey};
use iogate_metrics_sidecar::ebpf::{EbpfSource, Hook, IssueStamps, RunStats, Tracepoint};
use iogate_testbed::fio::{Job, Rw};
use iogate_testbed::host_io::{run_fio_on, BlkioCgroup, FioTotals, BLKIO};
use iogate_testbed::host_lock::HostLock;
use iogate_testbed::loop_disk::RamLoop;
use iogate_testbed::proc_stat::cpu_seconds;
use iogate_testbed::process::Background;
use iogate_testbed::sidecar::Sidecar;
use nix::sys::signal::Signal;

/// Alternating rounds per configuration, and their length.
const ROUNDS: usize = 6;
const ROUND_SECS: u32 = 5;
/// Extra rounds with BPF run-time statistics on.
const STATS_ROUNDS: usize = 3;
const RAMDISK_MIB: u32 = 448;

const PODS: usize = 1000;
/// The sidecar's sampling window in the `pods` benchmark (its default).
const SIDECAR_INTERVAL: Duration = Duration::from_secs(5);
/// How long the sidecar's CPU time is measured at 1,000 pods.
const CPU_WINDOW: Duration = Duration::from_secs(60);
/// Total I/O rate of the worker that keeps every pod cgroup active: one
/// pass over all 1,000 cgroups every 2 s, so each pod has I/O in every
/// 5 s window.
const WORKER_IOPS: u64 = 500;
const SCRAPES: usize = 200;
/// Clients scraping `/metrics` at the same moment, and how many times.
const CONCURRENT: usize = 64;
const CONCURRENT_ROUNDS: usize = 5;
/// Connections that never send a request, `/healthz` requests timed while
/// they are open, and how long they may stay before the sidecar must have
/// closed them (its header-read timeout is 10 s).
const HALF_OPEN: usize = 2000;
const HEALTH_PROBES: usize = 50;
const HALF_OPEN_DEADLINE: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    let want = |n: &str| all || which.iter().any(|w| w == n);
    ensure!(nix::unistd::Uid::effective().is_root(), "iogate-sidecar-bench needs root (loop devices, cgroups, eBPF)");
    // Shares the cores, blkio and loop devices with the e2e tests.
    let _lock = HostLock::acquire()?;
    let mut ours = None;
    if want("overhead") || want("peer") {
        let bench = FastDevice::new()?;
        if want("overhead") {
            ours = Some(bench_overhead(&bench)?);
        }
        if want("peer") {
            bench_peer(&bench, ours)?;
        }
    }
    if want("pods") {
        bench_pods()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- statistics

fn percentile<T: Copy + PartialOrd>(values: &[T], p: f64) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN among measured values"));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// `median (min–max)` of IOPS figures.
fn iops_summary(values: &[f64]) -> String {
    format!("{:.0} ({:.0}–{:.0})", median(values), min(values), max(values))
}

fn loss_pct(without: &[f64], with: &[f64]) -> f64 {
    (1.0 - median(with) / median(without)) * 100.0
}

// ------------------------------------------------------------- fast device

/// fio on a tmpfs-backed loop device, charged to a blkio cgroup of its own
/// (as a pod's I/O would be).
struct FastDevice {
    // Field order is drop order: the cgroup (and any fio left in it) goes
    // before the device it reads.
    cgroup: BlkioCgroup,
    disk: RamLoop,
    dir: tempfile::TempDir,
    runs: std::cell::Cell<usize>,
}

impl FastDevice {
    fn new() -> Result<FastDevice> {
        let disk = RamLoop::new(RAMDISK_MIB).context("setting up the tmpfs-backed loop device")?;
        let cgroup = BlkioCgroup::create("sidecar-bench")?;
        let dir = tempfile::tempdir().context("creating fio's output dir")?;
        let bench = FastDevice { cgroup, disk, dir, runs: std::cell::Cell::new(0) };
        // The first run pays for cold caches and CPU frequency ramp-up.
        bench.fio(2)?;
        Ok(bench)
    }

    fn device(&self) -> Result<Device> {
        let (major, minor) = self.disk.major_minor()?;
        Ok(Device::new(major, minor))
    }

    /// One time-based fio run of 4 KiB random direct reads at depth 32.
    fn fio(&self, seconds: u32) -> Result<FioTotals> {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let mut job = Job::new(&format!("round{n}"), Rw::RandRead, seconds);
        job.iodepth = 32;
        job.size_mib = self.disk.size_mib();
        run_fio_on(&self.cgroup, self.disk.device(), self.dir.path(), &job)
    }

    fn describe(&self) -> String {
        let scheduler = self.disk.scheduler().unwrap_or_else(|e| format!("unknown: {e:#}"));
        format!(
            "fio randread 4k libaio iodepth 32 on a tmpfs-backed loop device ({RAMDISK_MIB} MiB, scheduler {scheduler})"
        )
    }

    /// `ROUNDS` runs without and with `treatment` switched on, alternating
    /// which goes first each round so drift (thermal, noisy neighbours)
    /// hits both sides alike. Returns (without, with) IOPS.
    fn alternate(&self, mut switch: impl FnMut(bool) -> Result<()>) -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for on in order {
                switch(on)?;
                let iops = self.fio(ROUND_SECS)?.iops;
                if on {
                    with.push(iops)
                } else {
                    without.push(iops)
                }
            }
        }
        switch(false)?;
        Ok((without, with))
    }
}

// ------------------------------------------------------------ 1. overhead

/// Our probes on and off; returns the IOPS loss in percent for `peer`.
fn bench_overhead(bench: &FastDevice) -> Result<f64> {
    let mut source = EbpfSource::load().context("loading the eBPF probes")?;
    source.detach()?;
    let key = IoKey { cgroup: bench.cgroup.id()?, device: bench.device()?, direction: Direction::Read };
    let before = counted_reads(&mut source, &key)?;
    let (detached, attached) = bench.alternate(|on| if on { source.attach() } else { source.detach() })?;
    // The figure is only honest if the attached rounds were really traced.
    let counted = counted_reads(&mut source, &key)? - before;
    ensure!(counted > 0, "the probes counted no reads of {key:?} during the attached rounds");

    // The program's own issue stamps, the default's fallback, in
    // alternating rounds with the default: what the kernel's stamps save.
    let mut own =
        EbpfSource::load_with(IssueStamps::Own).context("loading the eBPF probes with their own issue stamps")?;
    own.detach()?;
    source.enable_run_stats()?;
    own.enable_run_stats()?;
    let mut default_cost = RunCost::default();
    let mut own_cost = RunCost::default();
    for _ in 0..STATS_ROUNDS {
        default_cost.round(bench, &mut source)?;
        own_cost.round(bench, &mut own)?;
    }
    let loss = loss_pct(&detached, &attached);
    println!(
        "overhead: {}: probes detached median {} IOPS, attached median {} IOPS, loss {loss:.2}% (target < 2%; \
         {ROUNDS} rounds of {ROUND_SECS} s each, alternating; {counted} reads counted by the probes); \
         BPF run time {} (kernel.bpf_stats_enabled, {STATS_ROUNDS} more rounds); \
         with the program's own issue stamps, alternating with those: {}",
        bench.describe(),
        iops_summary(&detached),
        iops_summary(&attached),
        default_cost.summary(),
        own_cost.summary(),
    );
    Ok(loss)
}

/// BPF run time per round of fio, from the kernel's run-time statistics.
#[derive(Default)]
struct RunCost {
    per_request: Vec<f64>,
    per_run: Vec<f64>,
    runs_per_request: Vec<f64>,
    /// The throttle-wait programs' time per request, where they attach
    /// (they run per bio, and are not in `per_request`).
    throttle_per_request: Vec<f64>,
    /// Why they did not, where they did not.
    throttle_absent: Option<String>,
    /// `per_request`, program by program.
    per_program: Vec<(Tracepoint, Vec<f64>)>,
}

impl RunCost {
    /// One round with `source` attached (and only it).
    fn round(&mut self, bench: &FastDevice, source: &mut EbpfSource) -> Result<()> {
        source.attach()?;
        let start = source.run_stats().context("BPF run-time statistics unavailable after enabling them")?;
        let throttle_start = source.throttle_run_stats();
        let programs_start = source.run_stats_per_program().context("per-program run-time statistics")?;
        let fio = bench.fio(ROUND_SECS)?;
        let used = source.run_stats().context("BPF run-time statistics disappeared")?.since(&start);
        let programs = source.run_stats_per_program().context("per-program run-time statistics disappeared")?;
        for ((tp, from), (_, to)) in programs_start.iter().zip(&programs) {
            let ns = to.since(from).run_time_ns as f64 / fio.ios.max(1) as f64;
            match self.per_program.iter_mut().find(|(t, _)| t == tp) {
                Some((_, all)) => all.push(ns),
                None => self.per_program.push((*tp, vec![ns])),
            }
        }
        match (throttle_start, source.throttle_run_stats()) {
            (Some(from), Some(to)) => {
                self.throttle_per_request.push(to.since(&from).run_time_ns as f64 / fio.ios as f64)
            }
            _ => self.throttle_absent = source.throttle_wait().err().map(str::to_string),
        }
        source.detach()?;
        self.add(used, fio.ios)
    }

    fn add(&mut self, used: RunStats, ios: u64) -> Result<()> {
        ensure!(used.run_count > 0, "BPF run-time statistics counted no program runs in a round of {ios} I/Os");
        self.per_request.push(used.run_time_ns as f64 / ios as f64);
        self.per_run.push(used.run_time_ns as f64 / used.run_count as f64);
        self.runs_per_request.push(used.run_count as f64 / ios as f64);
        Ok(())
    }

    fn summary(&self) -> String {
        let throttle = if !self.throttle_per_request.is_empty() {
            format!(
                "; the throttle-wait programs {:.0} ns more per request (range {:.0}–{:.0})",
                median(&self.throttle_per_request),
                min(&self.throttle_per_request),
                max(&self.throttle_per_request)
            )
        } else {
            let why = self.throttle_absent.as_deref().unwrap_or("no statistics");
            format!("; the throttle-wait programs not attached ({why})")
        };
        let by_program: Vec<String> =
            self.per_program.iter().map(|(tp, ns)| format!("{} {:.0}", tp.name(), median(ns))).collect();
        format!(
            "median {:.0} ns per request (range {:.0}–{:.0}; {} ns), {:.0} ns per program run, {:.2} runs per request{throttle}",
            median(&self.per_request),
            min(&self.per_request),
            max(&self.per_request),
            by_program.join(", "),
            median(&self.per_run),
            median(&self.runs_per_request),
        )
    }
}

/// Reads the probes have completed for `key` so far.
fn counted_reads(source: &mut EbpfSource, key: &IoKey) -> Result<u64> {
    Ok(source.snapshot()?.counters.get(key).map_or(0, |c| c.ops))
}

// ---------------------------------------------------------------- 2. peer

/// What `bpf/iogate.bpf.c` does, in bpftrace: queue and device latency per
/// (cgroup, device) as log2 histograms plus bytes, with start times keyed by
/// the request (device, sector, as the tracepoint arguments allow). `cgroup`
/// is the issuing task's; ours reads the bio's (bpftrace 0.17 cannot reach
/// it from these tracepoints), which costs us a few pointer reads more.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:block:block_rq_insert { @queued[args->dev, args->sector] = nsecs; }
tracepoint:block:block_rq_issue {
  @issued[args->dev, args->sector] = nsecs;
  @cg[args->dev, args->sector] = cgroup;
}
tracepoint:block:block_rq_complete /@issued[args->dev, args->sector]/ {
  $dev = args->dev; $sector = args->sector;
  $cg = @cg[$dev, $sector];
  @disk_ns[$cg, $dev] = hist(nsecs - @issued[$dev, $sector]);
  @bytes[$cg, $dev] = sum(args->nr_sector * 512);
  if (@queued[$dev, $sector]) {
    @queue_ns[$cg, $dev] = hist(@issued[$dev, $sector] - @queued[$dev, $sector]);
    delete(@queued[$dev, $sector]);
  }
  delete(@issued[$dev, $sector]);
  delete(@cg[$dev, $sector]);
}
END { clear(@queued); clear(@issued); clear(@cg); }
"#;

/// The tracepoints the script attaches to, which `bpftool perf` must show
/// before a round counts as traced.
const BPFTRACE_TRACEPOINTS: [&str; 3] = ["block_rq_insert", "block_rq_issue", "block_rq_complete"];

/// A running bpftrace, stopped with SIGINT (its normal end: it prints the
/// maps and detaches) and killed if it does not exit.
struct Bpftrace {
    process: Background,
}

impl Bpftrace {
    /// Starts the script with its output in `<dir>/bpftrace<n>.log`.
    fn start(dir: &Path, n: usize) -> Result<Bpftrace> {
        let script = dir.join("peer.bt");
        std::fs::write(&script, BPFTRACE_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let mut cmd = Command::new("bpftrace");
        cmd.arg(&script);
        let mut bt = Bpftrace { process: Background::spawn("bpftrace", cmd, &dir.join(format!("bpftrace{n}.log")))? };
        // "Attaching 4 probes...": the three tracepoints and END.
        bt.process.wait_for("Attaching 4 probes", 1, Duration::from_secs(30))?;
        // The line comes before the attach calls: wait for the kernel to
        // show all three links.
        bt.wait_attached(Duration::from_secs(10))?;
        Ok(bt)
    }

    fn wait_attached(&self, timeout: Duration) -> Result<()> {
        let pid = self.process.pid().context("bpftrace is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            let attached = attached_tracepoints(pid)?;
            if BPFTRACE_TRACEPOINTS.iter().all(|tp| attached.iter().any(|a| a == tp)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "bpftrace (pid {pid}) attached only {attached:?} within {timeout:?}; output:\n{}",
                    self.process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> Result<()> {
        // Detaching the probes and printing the histograms takes a moment.
        let clean = self.process.stop_with(Signal::SIGINT, Duration::from_secs(15));
        ensure!(clean, "bpftrace did not exit within 15 s of SIGINT; killed it. Output:\n{}", self.process.output());
        Ok(())
    }
}

/// `bpftool -j <args>`, parsed.
fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let out =
        Command::new("bpftool").arg("-j").args(args).output().with_context(|| format!("running bpftool {args:?}"))?;
    ensure!(out.status.success(), "bpftool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the JSON of bpftool {args:?}"))
}

/// What `bpftool perf show` lists for programs held by `pid`: one entry per
/// attached tracepoint.
fn perf_attachments(pid: u32) -> Result<Vec<serde_json::Value>> {
    let v = bpftool_json(&["perf", "show"])?;
    Ok(v.as_array()
        .context("expected a JSON array from bpftool perf show")?
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid as u64))
        .cloned()
        .collect())
}

/// Tracepoints that programs held by `pid` are attached to.
fn attached_tracepoints(pid: u32) -> Result<Vec<String>> {
    Ok(perf_attachments(pid)?.iter().filter_map(|e| e["tracepoint"].as_str().map(str::to_string)).collect())
}

/// Run count and time summed over the programs `ids` (0 while the kernel
/// keeps no run-time statistics).
fn programs_run_stats(ids: &[u64]) -> Result<RunStats> {
    let mut total = RunStats::default();
    for id in ids {
        let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        total.run_count += v["run_cnt"].as_u64().unwrap_or(0);
        total.run_time_ns += v["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// `kernel.bpf_stats_enabled` on, and back as it was when dropped.
struct BpfStatsOn {
    old: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsOn {
    fn enable() -> Result<BpfStatsOn> {
        let old = std::fs::read_to_string(BPF_STATS_SYSCTL).with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        std::fs::write(BPF_STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStatsOn { old: old.trim().to_string() })
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS_SYSCTL, &self.old);
    }
}

/// The bpftrace script's BPF run time, measured as ours is.
fn peer_run_cost(bench: &FastDevice, dir: &Path, n: usize) -> Result<RunCost> {
    let _stats = BpfStatsOn::enable()?;
    let bt = Bpftrace::start(dir, n)?;
    let pid = bt.process.pid().context("bpftrace is not running")?;
    let ids: Vec<u64> = perf_attachments(pid)?.iter().filter_map(|e| e["prog_id"].as_u64()).collect();
    ensure!(!ids.is_empty(), "bpftool perf show lists no programs of bpftrace (pid {pid})");
    let mut cost = RunCost::default();
    for _ in 0..STATS_ROUNDS {
        let start = programs_run_stats(&ids)?;
        let fio = bench.fio(ROUND_SECS)?;
        cost.add(programs_run_stats(&ids)?.since(&start), fio.ios)?;
    }
    bt.stop()?;
    Ok(cost)
}

fn bench_peer(bench: &FastDevice, ours: Option<f64>) -> Result<()> {
    let dir = tempfile::tempdir().context("creating bpftrace's dir")?;
    let mut running: Option<Bpftrace> = None;
    let mut starts = 0;
    let result = bench.alternate(|on| {
        match (on, running.take()) {
            (true, None) => {
                starts += 1;
                running = Some(Bpftrace::start(dir.path(), starts)?);
            }
            (true, Some(bt)) => running = Some(bt),
            (false, Some(bt)) => bt.stop()?,
            (false, None) => {}
        }
        Ok(())
    });
    // On an error mid-round, Background's Drop ends bpftrace.
    drop(running);
    let (none, traced) = result?;
    let cost = peer_run_cost(bench, dir.path(), starts + 1)?;
    let ours = ours.map_or_else(|| "not measured in this run".to_string(), |l| format!("{l:.2}%"));
    println!(
        "peer: {}: no tracer median {} IOPS, bpftrace median {} IOPS, loss {:.2}% (ours: {ours}; \
         bpftrace script: per-cgroup queue/device latency histograms and bytes, 3 tracepoints; \
         {ROUNDS} rounds of {ROUND_SECS} s each, alternating); bpftrace's BPF run time {} \
         (kernel.bpf_stats_enabled, {STATS_ROUNDS} more rounds)",
        bench.describe(),
        iops_summary(&none),
        iops_summary(&traced),
        loss_pct(&none, &traced),
        cost.summary(),
    );
    Ok(())
}

// ----------------------------------------------------------- 3./4. pods

/// `<blkio>/iogate-bench-<pid>/pod<uuid>/<64 hex>` for each pod: the shape
/// the sidecar recognises. Removed on drop, containers first.
struct PodCgroups {
    root: PathBuf,
    pods: Vec<PathBuf>,
    containers: Vec<PathBuf>,
    uids: Vec<String>,
}

impl PodCgroups {
    fn create(n: usize) -> Result<PodCgroups> {
        let root = Path::new(BLKIO).join(format!("iogate-bench-{}", std::process::id()));
        std::fs::create_dir(&root).with_context(|| format!("creating cgroup {}", root.display()))?;
        let mut tree = PodCgroups { root, pods: Vec::new(), containers: Vec::new(), uids: Vec::new() };
        for i in 0..n {
            let (uid, container) = pod_ids(i as u64);
            let pod = tree.root.join(format!("pod{uid}"));
            std::fs::create_dir(&pod).with_context(|| format!("creating cgroup {}", pod.display()))?;
            tree.pods.push(pod.clone());
            let ctr = pod.join(container);
            std::fs::create_dir(&ctr).with_context(|| format!("creating cgroup {}", ctr.display()))?;
            tree.containers.push(ctr);
            tree.uids.push(uid);
        }
        Ok(tree)
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for dir in self.containers.iter().chain(&self.pods).chain([&self.root]) {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("warning: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// A UUID-shaped pod UID and a 64-hex container id, unique to this process
/// and index (the sidecar accepts only well-formed ones).
fn pod_ids(i: u64) -> (String, String) {
    let seed = (std::process::id() as u64) << 32 | i;
    let mut state = seed;
    let mut next = || {
        // splitmix64: cheap, well-spread bits, no dependency.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (next(), next());
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    );
    let container = (0..4).map(|_| format!("{:016x}", next())).collect();
    (uid, container)
}

/// A thread that keeps every pod cgroup active: it moves itself into each
/// container cgroup in turn and reads one 4 KiB block there with O_DIRECT,
/// so the read is charged to that cgroup. Stopped and joined on drop; the
/// thread moves itself back to the root cgroup first, so the cgroups can go.
struct Worker {
    stop: Arc<AtomicBool>,
    ios: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

/// A block for O_DIRECT reads: the buffer must be aligned to the sector.
#[repr(C, align(4096))]
struct Block([u8; 4096]);

impl Worker {
    fn start(cgroups: Vec<PathBuf>, device: &Path, blocks: u64) -> Result<Worker> {
        let file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(device)
            .with_context(|| format!("opening {} with O_DIRECT", device.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ios = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), ios.clone());
        let handle = std::thread::Builder::new()
            .name("pod-io".into())
            .spawn(move || worker_loop(&cgroups, &file, blocks, &s, &n))
            .context("starting the pod I/O worker")?;
        Ok(Worker { stop, ios, handle: Some(handle) })
    }

    fn ios(&self) -> u64 {
        self.ios.load(Ordering::Relaxed)
    }

    /// Fails if the thread has already ended (with its error).
    fn check(&mut self) -> Result<()> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            return self.join().and_then(|()| bail!("the pod I/O worker stopped early"));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| anyhow::anyhow!("the pod I/O worker panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("warning: pod I/O worker: {e:#}");
        }
    }
}

/// Puts the thread back into the root blkio cgroup when dropped, even on a
/// panic, so the benchmark's cgroups are empty when they are removed.
struct BackToRoot(String);

impl Drop for BackToRoot {
    fn drop(&mut self) {
        let tasks = Path::new(BLKIO).join("tasks");
        if let Err(e) = std::fs::write(&tasks, &self.0) {
            eprintln!("warning: moving thread {} back to {}: {e}", self.0, tasks.display());
        }
    }
}

fn worker_loop(cgroups: &[PathBuf], file: &File, blocks: u64, stop: &AtomicBool, ios: &AtomicU64) -> Result<()> {
    let tid = nix::unistd::gettid().to_string();
    let _back = BackToRoot(tid.clone());
    let mut buf = Box::new(Block([0; 4096]));
    let period = Duration::from_secs(1) / WORKER_IOPS as u32;
    let start = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let cgroup = &cgroups[(n % cgroups.len() as u64) as usize];
        let tasks = cgroup.join("tasks");
        std::fs::write(&tasks, &tid).with_context(|| format!("moving thread {tid} into {}", tasks.display()))?;
        // A stride coprime with any power-of-two block count visits
        // different blocks, so nothing is served from a cache.
        let offset = (n.wrapping_mul(7919) % blocks) * 4096;
        file.read_exact_at(&mut buf.0, offset).with_context(|| format!("O_DIRECT read at {offset}"))?;
        n += 1;
        ios.store(n, Ordering::Relaxed);
        // Paced against the start, so the rate holds whatever each step costs.
        let due = start + period * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// `VmRSS` or `VmHWM` of the process, in KiB.
fn status_kib(pid: u32, name: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("expected `{name}: N kB` in {path}"))
}

/// How many of `uids` `/api/v1/metrics` lists as pods in the last window.
fn pods_listed(sidecar: &Sidecar, uids: &[String]) -> Result<usize> {
    let (status, v) = sidecar.json("/api/v1/metrics")?;
    ensure!(status == 200, "GET /api/v1/metrics answered {status}: {v}");
    let listed = v["pod_metrics"].as_object().context("expected a pod_metrics object in /api/v1/metrics")?;
    let ours: std::collections::HashSet<&str> = uids.iter().map(String::as_str).collect();
    Ok(listed.values().filter(|p| p["pod_uid"].as_str().is_some_and(|u| ours.contains(u))).count())
}

/// Waits until at least `want` of the pods are listed (the sidecar needs a
/// window or two to see every cgroup and its I/O).
fn wait_for_pods(sidecar: &Sidecar, uids: &[String], want: usize, worker: &mut Worker) -> Result<usize> {
    let deadline = Instant::now() + SIDECAR_INTERVAL * 12;
    loop {
        worker.check()?;
        let listed = pods_listed(sidecar, uids)?;
        if listed >= want {
            return Ok(listed);
        }
        if Instant::now() > deadline {
            bail!("the sidecar lists only {listed} of the {} pods; its log:\n{}", uids.len(), sidecar.log());
        }
        std::thread::sleep(SIDECAR_INTERVAL / 2);
    }
}

fn bench_pods() -> Result<()> {
    // Locals drop in reverse order, on errors too: the sidecar stops first,
    // then the worker leaves the cgroups, then they and the device go.
    let disk = RamLoop::new(64).context("setting up the loop device the pods read")?;
    let tree = PodCgroups::create(PODS)?;
    let blocks = (disk.size_mib() as u64) << 8;
    let mut worker = Worker::start(tree.containers.clone(), disk.device(), blocks)?;
    let sidecar = Sidecar::start(SIDECAR_INTERVAL, &["--source", "ebpf"])?;
    let pid = sidecar.pid()?;
    // Every pod has I/O in every window; allow a handful to fall across a
    // window edge.
    let want = PODS * 99 / 100;
    wait_for_pods(&sidecar, &tree.uids, want, &mut worker)?;

    let (cpu0, ios0, t0) = (cpu_seconds(pid)?, worker.ios(), Instant::now());
    std::thread::sleep(CPU_WINDOW);
    let (cpu1, ios1, wall) = (cpu_seconds(pid)?, worker.ios(), t0.elapsed());
    worker.check()?;
    let cpu_pct = (cpu1 - cpu0) / wall.as_secs_f64() * 100.0;
    let (rss, hwm) = (status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?);
    // Heap versus pages of the (large, debuginfo-carrying) binary mapped in.
    let (anon, file) = (status_kib(pid, "RssAnon")?, status_kib(pid, "RssFile")?);
    let listed = pods_listed(&sidecar, &tree.uids)?;
    ensure!(listed >= want, "after the CPU window the sidecar lists only {listed} of {PODS} pods");
    println!(
        "sidecar: {PODS} active pods (blkio v1, {:.0} I/O/s across them), --source ebpf --interval {}s: \
         RSS {:.1} MiB (anon {:.1}, file {:.1}; peak {:.1} MiB; target < 24 MiB), CPU {cpu_pct:.2}% of a core over {:.0} s \
         (target < 1%); /api/v1/metrics lists {listed} of the {PODS} pods",
        (ios1 - ios0) as f64 / wall.as_secs_f64(),
        SIDECAR_INTERVAL.as_secs(),
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        hwm as f64 / 1024.0,
        wall.as_secs_f64(),
    );

    let (prom, prom_bytes) = time_gets(&sidecar, "/metrics")?;
    let (gz, gz_bytes) = time_gzip_gets(&sidecar, "/metrics")?;
    let (api, api_bytes) = time_gets(&sidecar, "/api/v1/metrics")?;
    worker.check()?;
    println!(
        "scrape: at {PODS} pods, {SCRAPES} sequential GETs each (new connection each): /metrics median {:?} \
         p95 {:?}, {:.0} KiB; /metrics with Accept-Encoding: gzip (as Prometheus asks) median {:?} p95 {:?}, \
         {:.0} KiB; /api/v1/metrics median {:?} p95 {:?}, {:.0} KiB",
        percentile(&prom, 0.5),
        percentile(&prom, 0.95),
        prom_bytes as f64 / 1024.0,
        percentile(&gz, 0.5),
        percentile(&gz, 0.95),
        gz_bytes as f64 / 1024.0,
        percentile(&api, 0.5),
        percentile(&api, 0.95),
        api_bytes as f64 / 1024.0,
    );
    println!("{}", concurrent_scrapes(&sidecar, pid)?);
    worker.check()?;
    println!("{}", half_open(&sidecar)?);
    worker.check()?;
    drop(sidecar);
    worker.join()?;
    drop(tree);
    drop(disk);
    Ok(())
}

/// `CONCURRENT` clients each `GET /metrics` at once, `CONCURRENT_ROUNDS`
/// times, with the sidecar's RSS sampled throughout: what a burst of
/// scrapers costs in memory and time.
fn concurrent_scrapes(sidecar: &Sidecar, pid: u32) -> Result<String> {
    let before = status_kib(pid, "VmRSS")?;
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kib) = status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let addr = sidecar.addr();
    let mut took = Vec::new();
    for _ in 0..CONCURRENT_ROUNDS {
        let clients: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                std::thread::spawn(move || -> Result<Duration> {
                    let t = Instant::now();
                    let (status, body) = iogate_testbed::sidecar::http_get(addr, "/metrics")?;
                    ensure!(status == 200 && !body.is_empty(), "GET /metrics answered {status}");
                    Ok(t.elapsed())
                })
            })
            .collect();
        for c in clients {
            took.push(c.join().map_err(|_| anyhow::anyhow!("a scraping thread panicked"))??);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    took.sort();
    Ok(format!(
        "concurrent: {CONCURRENT} clients GET /metrics at once, {CONCURRENT_ROUNDS} rounds: each took median {:?}, \
         p95 {:?}; sidecar RSS {:.1} MiB before, peak {:.1} MiB during (target < 48 MiB)",
        percentile(&took, 0.5),
        percentile(&took, 0.95),
        before as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
    ))
}

/// `HALF_OPEN` connections that never send a request: how `/healthz`
/// answers while they are open, and how long until the sidecar has closed
/// every one (its header-read timeout).
fn half_open(sidecar: &Sidecar) -> Result<String> {
    raise_own_fd_limit(HALF_OPEN as u64 + 256)?;
    let silent: Vec<std::net::TcpStream> = (0..HALF_OPEN)
        .map(|i| std::net::TcpStream::connect(sidecar.addr()).with_context(|| format!("opening connection {i}")))
        .collect::<Result<_>>()?;
    let opened = Instant::now();
    let mut health = Vec::with_capacity(HEALTH_PROBES);
    for _ in 0..HEALTH_PROBES {
        let t = Instant::now();
        let (status, body) = sidecar.get("/healthz")?;
        ensure!(status == 200, "GET /healthz answered {status} with {HALF_OPEN} half-open connections: {body}");
        health.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    health.sort();
    let (closed, last) = wait_closed(&silent, opened, HALF_OPEN_DEADLINE)?;
    Ok(format!(
        "half-open: {HALF_OPEN} connections that send nothing: GET /healthz meanwhile median {:?}, p95 {:?}, \
         max {:?} (target < 100 ms); the sidecar closed {closed} of them, the last {:.1} s after they opened \
         ({} still open after {} s)",
        percentile(&health, 0.5),
        percentile(&health, 0.95),
        health.last().copied().unwrap_or_default(),
        last.as_secs_f64(),
        HALF_OPEN - closed,
        HALF_OPEN_DEADLINE.as_secs(),
    ))
}

/// Polls `streams`, opened at `opened`, until the peer has closed each
/// (readable at EOF) or `within` has passed: how many closed, and when the
/// last of them did, from `opened`.
fn wait_closed(streams: &[std::net::TcpStream], opened: Instant, within: Duration) -> Result<(usize, Duration)> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = opened + within;
    let mut open: Vec<&std::net::TcpStream> = streams.iter().collect();
    let mut last = Duration::ZERO;
    while !open.is_empty() && Instant::now() < deadline {
        let mut fds: Vec<PollFd> = open.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
        poll(&mut fds, PollTimeout::from(100u16)).context("polling the half-open connections")?;
        let done: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if done.iter().any(|d| *d) {
            last = opened.elapsed();
        }
        open = open.into_iter().zip(done).filter(|(_, d)| !d).map(|(s, _)| s).collect();
    }
    Ok((streams.len() - open.len(), last))
}

/// This process needs a descriptor per half-open connection.
fn raise_own_fd_limit(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < want {
        ensure!(hard >= want, "expected a descriptor limit of at least {want}, found a hard limit of {hard}");
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    Ok(())
}

/// `SCRAPES` sequential `GET path`: the time of each and the largest body.
fn time_gets(sidecar: &Sidecar, path: &str) -> Result<(Vec<Duration>, usize)> {
    time_gets_with(sidecar, path, &[])
}

/// As Prometheus asks: gzip accepted. Checks that gzip came back.
fn time_gzip_gets(sidecar: &Sidecar, path: &str) -> Result<(Vec<Duration>, usize)> {
    time_gets_with(sidecar, path, &[("Accept-Encoding", "gzip")])
}

fn time_gets_with(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> Result<(Vec<Duration>, usize)> {
    let mut took = Vec::with_capacity(SCRAPES);
    let mut size = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let response = iogate_testbed::sidecar::http_get_with(sidecar.addr(), path, headers)?;
        took.push(t.elapsed());
        ensure!(response.status == 200, "GET {path} answered {}: {}", response.status, response.head);
        let gzip_asked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("accept-encoding") && v.contains("gzip"));
        let gzipped = response.header("content-encoding") == Some("gzip");
        ensure!(
            gzip_asked == gzipped,
            "GET {path} with {headers:?}: expected gzip {gzip_asked}, found {}",
            response.head
        );
        size = size.max(response.body.len());
    }
    Ok((took, size))
}
