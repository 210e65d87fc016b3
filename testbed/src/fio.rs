//! fio inside a container: the command line, and reading what it measured.
//!
//! fio writes its JSON summary and a per-second IOPS log into the data disk
//! (bind-mounted into the container), where the test reads them from the
//! host: no parsing of container logs, and the first second is visible on
//! its own, which is what proves a container was throttled from its start.

use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    RandRead,
    RandWrite,
}

impl Rw {
    pub fn as_str(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
        }
    }

    /// The key of this direction's results in fio's JSON job object.
    pub fn json_side(self) -> &'static str {
        match self {
            Rw::RandRead => "read",
            Rw::RandWrite => "write",
        }
    }
}

/// A time-based 4 KiB direct-I/O job on `<dir>/<name>.dat`.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub rw: Rw,
    pub seconds: u32,
    pub size_mib: u32,
    pub iodepth: u32,
}

impl Job {
    pub fn new(name: &str, rw: Rw, seconds: u32) -> Job {
        Job { name: name.to_string(), rw, seconds, size_mib: 64, iodepth: 1 }
    }

    /// Writes the job's file from the host before the container starts, so
    /// the container's very first I/O is the measured one (fio would
    /// otherwise lay the file out first), and with real data: ext4 answers
    /// reads of unwritten extents without touching the disk.
    pub fn prepare(&self, host_dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = host_dir.join(format!("{}.dat", self.name));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..self.size_mib {
            f.write_all(&chunk).with_context(|| format!("writing {}", path.display()))?;
        }
        f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        Ok(())
    }

    /// The job's fio arguments on `filename` with `ioengine`: time-based
    /// 4 KiB direct I/O, the JSON summary written to `output`.
    pub fn args(&self, filename: &str, ioengine: &str, output: &str) -> Vec<String> {
        [
            format!("--name={}", self.name),
            format!("--filename={filename}"),
            format!("--size={}M", self.size_mib),
            "--direct=1".into(),
            format!("--rw={}", self.rw.as_str()),
            "--bs=4k".into(),
            format!("--ioengine={ioengine}"),
            format!("--iodepth={}", self.iodepth),
            format!("--runtime={}", self.seconds),
            "--time_based".into(),
            "--output-format=json".into(),
            format!("--output={output}"),
        ]
        .into()
    }

    /// The container's command: fio starts at once, with direct I/O.
    /// `dir` is the data disk's path inside the container.
    pub fn command(&self, dir: &str) -> Vec<String> {
        let n = &self.name;
        let mut cmd = vec!["/usr/bin/fio".to_string()];
        cmd.extend(self.args(&format!("{dir}/{n}.dat"), "psync", &format!("{dir}/{n}.json")));
        cmd.extend([format!("--write_iops_log={dir}/{n}"), "--log_avg_msec=1000".into()]);
        cmd
    }
}

/// fio's JSON summary (fio may print notes before the JSON object).
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading fio output {}", path.display()))?;
    let start = text.find('{').with_context(|| format!("expected JSON in {}, found {text:?}", path.display()))?;
    serde_json::from_str(&text[start..]).with_context(|| format!("parsing fio JSON in {}", path.display()))
}

/// What one fio run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Average IOPS over the whole run, in the job's direction.
    pub iops: f64,
    /// IOPS in each second, in order (fio's 1 s averaged log).
    pub per_second: Vec<f64>,
}

impl Measured {
    /// Reads `<dir>/<name>.json` and `<dir>/<name>_iops.1.log` on the host.
    pub fn read(job: &Job, host_dir: &Path) -> Result<Measured> {
        let json_path = host_dir.join(format!("{}.json", job.name));
        let v = read_json(&json_path)?;
        let dir = job.rw.json_side();
        let iops = v["jobs"][0][dir]["iops"]
            .as_f64()
            .with_context(|| format!("expected jobs[0].{dir}.iops in {}", json_path.display()))?;
        let log_path = host_dir.join(format!("{}_iops.1.log", job.name));
        let log = std::fs::read_to_string(&log_path)
            .with_context(|| format!("reading fio IOPS log {}", log_path.display()))?;
        let per_second = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let field = l.split(',').nth(1).map(str::trim);
                field.and_then(|f| f.parse::<f64>().ok()).with_context(|| {
                    format!("expected \"msec, iops, dir, bs, offset\" in {}, found {l:?}", log_path.display())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if per_second.is_empty() {
            bail!("fio IOPS log {} is empty", log_path.display());
        }
        Ok(Measured { iops, per_second })
    }
}

impl Measured {
    /// The mean of every second after the first: the rate the run held
    /// once under way. (The first second is judged on its own: it shows
    /// whether the container was throttled from its start, and on a slow
    /// machine it also holds the time a freshly started fio takes to page
    /// itself in.)
    pub fn steady_iops(&self) -> f64 {
        match &self.per_second[..] {
            [] => self.iops,
            [only] => *only,
            [_, rest @ ..] => rest.iter().sum::<f64>() / rest.len() as f64,
        }
    }
}

/// `measured` within `pct` percent of `target`.
pub fn within(measured: f64, target: f64, pct: f64) -> bool {
    (measured - target).abs() <= target * pct / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fio_outputs() {
        let d = tempfile::tempdir().unwrap();
        let job = Job::new("j", Rw::RandRead, 3);
        std::fs::write(
            d.path().join("j.json"),
            "note: x\n{\"jobs\":[{\"read\":{\"iops\":201.5},\"write\":{\"iops\":0}}]}",
        )
        .unwrap();
        std::fs::write(d.path().join("j_iops.1.log"), "1000, 205, 0, 4096, 0\n2000, 199, 0, 4096, 0\n").unwrap();
        let m = Measured::read(&job, d.path()).unwrap();
        assert_eq!(m.iops, 201.5);
        assert_eq!(m.per_second, vec![205.0, 199.0]);
        assert_eq!(m.steady_iops(), 199.0);
        assert!(within(m.iops, 200.0, 10.0) && !within(250.0, 200.0, 10.0));
        std::fs::write(d.path().join("j_iops.1.log"), "garbage\n").unwrap();
        let e = format!("{:#}", Measured::read(&job, d.path()).unwrap_err());
        assert!(e.contains("expected \"msec, iops, dir, bs, offset\""), "{e}");
    }

    #[test]
    fn command_uses_direct_io_from_the_start() {
        let c = Job::new("a", Rw::RandWrite, 5).command("/data");
        assert_eq!(c[0], "/usr/bin/fio");
        assert!(c.contains(&"--direct=1".to_string()) && c.contains(&"--rw=randwrite".to_string()));
        assert!(c.contains(&"--output=/data/a.json".to_string()));
    }
}
