//! The eBPF counter source: `bpf/iogate.bpf.c` on the block request
//! tracepoints, read through its statistics map.

mod maps;
mod probe;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::time::Instant;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::counters::{CgroupId, CounterSource, IoCounters, IoKey, Snapshot, SourceKind};
use maps::{RawKey, RawStats, RawThrottle, STATS_MAP, THROTTLE_MAP, UNTRACKED_MAP};
pub use probe::{Hook, ProbeError, ThrottleHook, Tracepoint};
use probe::{Probes, ThrottleProbes};

/// The program `build.rs` compiled, or why this build has none (a stub
/// build, made without the eBPF toolchain).
#[cfg(not(iogate_bpf_stub))]
const OBJECT: Result<&[u8], &str> = Ok(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/iogate.bpf.o")));
#[cfg(iogate_bpf_stub)]
const OBJECT: Result<&[u8], &str> = Err(env!("IOGATE_BPF_STUB_REASON"));

/// How often the programs ran and how long they took in total, summed over
/// the three of them. Counted only while BPF run-time statistics are on
/// (`EbpfSource::enable_run_stats` or `sysctl kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl RunStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RunStats) -> RunStats {
        RunStats {
            run_count: self.run_count.saturating_sub(earlier.run_count),
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
        }
    }
}

/// Where a request's issue time comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IssueStamps {
    /// The kernel's own (`rq->io_start_time_ns`) for requests issued
    /// without insert on queues that keep block statistics (most disks:
    /// writeback throttling keeps them), the program's for the rest. The
    /// issue program then returns at once for most requests. The kernel
    /// reuses one clock reading per plug, so the device time of a request
    /// submitted in a batch starts at the batch's reading.
    #[default]
    KernelWhereStamped,
    /// Always the program's, at the issue tracepoint: exact device time for
    /// batches, at the cost of the issue program's work on every request.
    Own,
}

/// The C program's read-only switch for [`IssueStamps::Own`].
const OWN_ISSUE_STAMPS: &str = "own_issue_stamps";

/// Per-cgroup block-I/O counters with latencies, from eBPF.
///
/// Cgroup ids are the kernfs ids of the cgroup the I/O is charged to in the
/// hierarchy that has the block controller (blkio on v1, the unified one on
/// v2). `CgroupId(0)` collects I/O whose bio carried no block cgroup.
pub struct EbpfSource {
    ebpf: Ebpf,
    probes: Probes,
    /// The throttle-wait programs, or why this kernel runs without them.
    throttle: Result<ThrottleProbes, String>,
    run_stats_fd: Option<OwnedFd>,
}

impl EbpfSource {
    /// Loads the programs into the kernel and attaches them.
    pub fn load() -> Result<EbpfSource> {
        EbpfSource::load_with(IssueStamps::default())
    }

    /// [`EbpfSource::load`] with issue times taken as `stamps` says.
    pub fn load_with(stamps: IssueStamps) -> Result<EbpfSource> {
        let object = OBJECT.map_err(|why| {
            anyhow::anyhow!(
                "this sidecar was built without its eBPF program ({why}); expected a build with clang, the libbpf \
                 headers and kernel BTF (see metrics-sidecar/build.rs)"
            )
        })?;
        // The kernel's BTF, parsed, is the sidecar's largest allocation
        // (tens of MiB, its peak RSS): the loader parses its own copy for
        // the CO-RE relocations and drops it before a second copy is parsed
        // for the programs' attach targets, so the two are never resident
        // together (start-up peak 32.7 → 23.1 MiB: docs/benchmarks.md).
        // The loader treats a missing BTF as none at all and would fail on
        // the first relocation instead: say what is missing here.
        std::fs::metadata(KERNEL_BTF).with_context(|| format!("reading kernel BTF from {KERNEL_BTF}"))?;
        let own = u32::from(stamps == IssueStamps::Own);
        let mut ebpf = EbpfLoader::new()
            .set_global(OWN_ISSUE_STAMPS, &own, true)
            .load(object)
            .context("loading the eBPF object (maps and relocations)")?;
        let btf = Btf::from_sys_fs().with_context(|| format!("reading kernel BTF from {KERNEL_BTF}"))?;
        let mut probes = Probes::load(&mut ebpf, &btf)?;
        // Optional: the request counters do not depend on them.
        let throttle = ThrottleProbes::load(&mut ebpf, &btf).map_err(|e| throttle_refused(&e));
        drop(btf);
        probes.attach(&mut ebpf)?;
        let mut source = EbpfSource { ebpf, probes, throttle, run_stats_fd: None };
        source.attach_throttle();
        Ok(source)
    }

    /// Attaches the throttle-wait programs if they loaded; a refusal makes
    /// the wait unavailable, with the reason, rather than the source fail.
    fn attach_throttle(&mut self) {
        if let Ok(t) = &mut self.throttle {
            if let Err(e) = t.attach(&mut self.ebpf) {
                self.throttle = Err(throttle_refused(&e));
            }
        }
    }

    pub fn is_attached(&self) -> bool {
        self.probes.is_attached()
    }

    /// Attaches the programs again after [`EbpfSource::detach`]; a no-op
    /// when attached. Requests in flight at that moment are not counted.
    pub fn attach(&mut self) -> Result<()> {
        self.probes.attach(&mut self.ebpf)?;
        self.attach_throttle();
        Ok(())
    }

    /// Stops counting (the block layer runs without the programs); the
    /// counters so far stay readable.
    pub fn detach(&mut self) -> Result<()> {
        if let Ok(t) = &mut self.throttle {
            t.detach(&mut self.ebpf)?;
        }
        Ok(self.probes.detach(&mut self.ebpf)?)
    }

    /// Turns on the kernel's BPF run-time statistics for as long as this
    /// source lives (they cost a little on every program run, system-wide).
    pub fn enable_run_stats(&mut self) -> Result<()> {
        if self.run_stats_fd.is_none() {
            let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
            self.run_stats_fd = Some(fd);
        }
        Ok(())
    }

    /// Run count and run time summed over the three request programs;
    /// `None` when the kernel is not collecting them or a program's info is
    /// unreadable.
    pub fn run_stats(&self) -> Option<RunStats> {
        self.run_stats_of(Tracepoint::ALL.iter().map(|tp| tp.name()))
    }

    /// The same for the two throttle-wait programs, which run per bio
    /// rather than per request; `None` also where they are not attached.
    pub fn throttle_run_stats(&self) -> Option<RunStats> {
        self.throttle.as_ref().ok().filter(|t| t.is_attached())?;
        self.run_stats_of(ThrottleHook::ALL.iter().map(|hook| hook.name()))
    }

    /// [`EbpfSource::run_stats`] program by program: where the time goes.
    pub fn run_stats_per_program(&self) -> Option<Vec<(Tracepoint, RunStats)>> {
        Tracepoint::ALL.iter().map(|&tp| Some((tp, self.run_stats_of([tp.name()])?))).collect()
    }

    fn run_stats_of<'a>(&self, programs: impl IntoIterator<Item = &'a str>) -> Option<RunStats> {
        if self.run_stats_fd.is_none() && !kernel_stats_enabled() {
            return None;
        }
        let mut total = RunStats::default();
        for name in programs {
            let info = self.ebpf.program(name)?.info().ok()?;
            total.run_count += info.run_count();
            total.run_time_ns += info.run_time().as_nanos() as u64;
        }
        Some(total)
    }

    /// Drops the counters of cgroups that are gone, so the LRU map keeps its
    /// room for live ones. Returns how many entries were removed.
    pub fn forget(&mut self, cgroups: &[CgroupId]) -> Result<usize> {
        let gone: HashSet<u64> = cgroups.iter().map(|c| c.0).collect();
        let removed = self.remove_where(|key, _| gone.contains(&key.cgroup_id))?;
        self.forget_throttle(&gone)?;
        Ok(removed)
    }

    fn throttle_map(&mut self) -> Result<BpfHashMap<&mut MapData, RawKey, RawThrottle>> {
        let map = self
            .ebpf
            .map_mut(THROTTLE_MAP)
            .with_context(|| format!("expected map {THROTTLE_MAP} in the eBPF object"))?;
        BpfHashMap::try_from(map).with_context(|| format!("opening map {THROTTLE_MAP} as a hash of key to wait"))
    }

    fn forget_throttle(&mut self, gone: &HashSet<u64>) -> Result<()> {
        let mut map = self.throttle_map()?;
        let keys: Vec<RawKey> = map.keys().filter_map(|k| k.ok()).filter(|k| gone.contains(&k.cgroup_id)).collect();
        for key in keys {
            match map.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {key:?} from map {THROTTLE_MAP}")),
            }
        }
        Ok(())
    }

    /// Requests issued since load that the program could not follow to
    /// completion (the kernel refused the in-flight entry, see
    /// `bpf/iogate.bpf.c`): they are missing from every counter. A growing
    /// number means the counts run short by that much.
    pub fn untracked_requests(&self) -> Result<u64> {
        let map =
            self.ebpf.map(UNTRACKED_MAP).with_context(|| format!("expected map {UNTRACKED_MAP} in the eBPF object"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).with_context(|| format!("opening map {UNTRACKED_MAP} as a per-CPU array"))?;
        let per_cpu = array.get(&0, 0).with_context(|| format!("reading map {UNTRACKED_MAP}"))?;
        Ok(per_cpu.iter().sum())
    }

    fn stats_map(&mut self) -> Result<BpfHashMap<&mut MapData, RawKey, RawStats>> {
        let map =
            self.ebpf.map_mut(STATS_MAP).with_context(|| format!("expected map {STATS_MAP} in the eBPF object"))?;
        BpfHashMap::try_from(map).with_context(|| format!("opening map {STATS_MAP} as a hash of key to stats"))
    }

    fn remove_where(&mut self, doomed: impl Fn(&RawKey, &RawStats) -> bool) -> Result<usize> {
        let mut map = self.stats_map()?;
        let mut keys = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok((key, stats)) if doomed(&key, &stats) => keys.push(key),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading map stats"),
            }
        }
        let mut removed = 0;
        for key in keys {
            match map.remove(&key) {
                Ok(()) => removed += 1,
                // Evicted by the LRU meanwhile: gone either way.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {key:?} from map stats")),
            }
        }
        Ok(removed)
    }
}

impl CounterSource for EbpfSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn forget(&mut self, removed: &[CgroupId]) -> Result<()> {
        EbpfSource::forget(self, removed).map(|_| ())
    }

    fn throttle_wait(&self) -> Result<(), &str> {
        self.throttle.as_ref().map(|_| ()).map_err(String::as_str)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let map = self.stats_map()?;
        let mut counters: HashMap<IoKey, IoCounters> = HashMap::new();
        let taken_at = Instant::now();
        for entry in map.iter() {
            let (raw_key, raw_stats) = match entry {
                Ok(kv) => kv,
                // Removed between listing the keys and reading the value.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading map stats"),
            };
            let key = raw_key.to_io_key().context("reading map stats")?;
            counters.entry(key).or_default().add(&raw_stats.counters());
        }
        if self.throttle.is_ok() {
            let map = self.throttle_map()?;
            for entry in map.iter() {
                let (raw_key, raw) = match entry {
                    Ok(kv) => kv,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading map {THROTTLE_MAP}")),
                };
                let key = raw_key.to_io_key().with_context(|| format!("reading map {THROTTLE_MAP}"))?;
                raw.add_to(counters.entry(key).or_default());
            }
        }
        Ok(Snapshot { taken_at, source: SourceKind::Ebpf, counters })
    }
}

/// Why the throttle-wait programs are not in use, in the words `/readyz`
/// shows.
fn throttle_refused(e: &ProbeError) -> String {
    // A verifier's refusal carries its whole log: the first lines say why.
    let mut why: String = e.to_string().lines().take(3).collect::<Vec<_>>().join(" ");
    // The syscall's errno (EPERM under lockdown) is the program error's
    // own source, which its message leaves out.
    let errno = std::error::Error::source(e).and_then(std::error::Error::source);
    if let Some(errno) = errno {
        why = format!("{}: {errno}", why.trim_end_matches([' ', ':']));
    }
    format!(
        "this kernel does not let tracing programs enter blk-throttle ({why}); a locked-down kernel (see dmesg) \
         refuses fentry"
    )
}

/// Where the kernel publishes its own BTF (`Btf::from_sys_fs` reads it).
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn kernel_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}
