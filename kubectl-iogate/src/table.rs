//! Rendering: the flat table (one line per container) and the tree
//! (namespace → workload → pod → container), and the notes that go above
//! them. Plain text columns, as kubectl prints, numbers right-aligned so
//! their magnitudes line up.

use crate::rows::Row;

const FLAT_HEADERS: [(&str, Align); 13] = [
    ("NAMESPACE", Align::Left),
    ("WORKLOAD", Align::Left),
    ("POD", Align::Left),
    ("CONTAINER", Align::Left),
    ("R IOPS", Align::Right),
    ("W IOPS", Align::Right),
    ("R MB/s", Align::Right),
    ("W MB/s", Align::Right),
    ("P99 R ms", Align::Right),
    ("P99 W ms", Align::Right),
    ("LIMIT", Align::Left),
    ("LIMIT WAIT", Align::Right),
    ("BOTTLENECK", Align::Left),
];

const TREE_HEADERS: [(&str, Align); 10] = [
    ("NAME", Align::Left),
    ("R IOPS", Align::Right),
    ("W IOPS", Align::Right),
    ("R MB/s", Align::Right),
    ("W MB/s", Align::Right),
    ("P99 R ms", Align::Right),
    ("P99 W ms", Align::Right),
    ("LIMIT", Align::Left),
    ("LIMIT WAIT", Align::Right),
    ("BOTTLENECK", Align::Left),
];

const INDENT: &str = "  ";

/// Marks the LIMIT cell of a container whose limits are not the policy's.
const BROKEN: &str = "!";

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Lines to print above the table (on stderr, so that the table itself can
/// be piped).
pub fn notes(rows: &[Row], degraded_nodes: &[String]) -> Vec<String> {
    let mut notes = Vec::new();
    if !degraded_nodes.is_empty() {
        notes.push(format!(
            "note: latency unavailable on {} (source: cgroup-stats, eBPF not loaded): P99 shows n/a",
            degraded_nodes.join(", ")
        ));
    }
    if rows.iter().any(|r| r.guarantee.is_some_and(|g| g.is_broken())) {
        notes.push(format!(
            "note: {BROKEN} limits not what the policy says ({}): the NRI plugin's log has a WARN naming the expected and the found",
            iogate_api::Guarantee::UnlimitedUnexpectedly
        ));
    }
    if rows.iter().any(|r| r.workload.inferred) {
        notes.push("note: * workload inferred from the pod name (owner not known from the API)".to_string());
    }
    notes
}

/// One line per container.
pub fn render_flat(rows: &[Row]) -> String {
    let cells = rows
        .iter()
        .map(|r| {
            let mut line = vec![r.namespace.clone(), r.workload.to_string(), r.pod.clone(), r.container.clone()];
            line.extend(rates(r));
            line.extend(latencies(r));
            line.push(limit(r));
            line.push(limit_wait(r));
            line.push(bottleneck(r));
            line
        })
        .collect::<Vec<_>>();
    layout(&FLAT_HEADERS, &cells)
}

/// Grouped namespace → workload → pod → container, each group in the order
/// of its first (highest-ranked) row. Pod lines carry what the sidecar
/// measures per pod (p99, bottleneck), container lines the rates and limit.
pub fn render_tree(rows: &[Row]) -> String {
    let mut cells = Vec::new();
    for (namespace, workloads) in group(rows, |r| r.namespace.clone()) {
        cells.push(name_only(&namespace, 0));
        for (workload, pods) in group(&workloads, |r| r.workload.to_string()) {
            cells.push(name_only(&workload, 1));
            for (pod, containers) in group(&pods, |r| r.pod.clone()) {
                let first = &containers[0];
                let mut line = vec![indented(&pod, 2), String::new(), String::new(), String::new(), String::new()];
                line.extend(latencies(first));
                line.extend([String::new(), limit_wait(first), bottleneck(first)]);
                cells.push(line);
                for r in &containers {
                    let mut line = vec![indented(&r.container, 3)];
                    line.extend(rates(r));
                    line.extend([String::new(), String::new(), limit(r), String::new(), String::new()]);
                    cells.push(line);
                }
            }
        }
    }
    layout(&TREE_HEADERS, &cells)
}

/// Splits rows into consecutive-by-first-appearance groups of equal key,
/// keeping the rows' order within each group.
fn group(rows: &[Row], key: impl Fn(&Row) -> String) -> Vec<(String, Vec<Row>)> {
    let mut groups: Vec<(String, Vec<Row>)> = Vec::new();
    for row in rows {
        let k = key(row);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(row.clone()),
            None => groups.push((k, vec![row.clone()])),
        }
    }
    groups
}

fn indented(name: &str, depth: usize) -> String {
    format!("{}{name}", INDENT.repeat(depth))
}

fn name_only(name: &str, depth: usize) -> Vec<String> {
    let mut line = vec![indented(name, depth)];
    line.resize(TREE_HEADERS.len(), String::new());
    line
}

fn rates(r: &Row) -> [String; 4] {
    [format!("{:.0}", r.read_iops), format!("{:.0}", r.write_iops), megabytes(r.read_bps), megabytes(r.write_bps)]
}

fn latencies(r: &Row) -> [String; 2] {
    [millis(r.read_p99_ns), millis(r.write_p99_ns)]
}

fn limit(r: &Row) -> String {
    match r.guarantee {
        Some(g) if g.is_broken() => format!("{BROKEN} {}", r.limit),
        _ => r.limit.to_string(),
    }
}

/// `n/a` where the node does not measure the throttle's wait.
fn limit_wait(r: &Row) -> String {
    r.limit_wait.map(|share| format!("{:.0}%", share * 100.0)).unwrap_or_else(|| "n/a".to_string())
}

fn bottleneck(r: &Row) -> String {
    r.bottleneck.clone().unwrap_or_else(|| "-".to_string())
}

/// Decimal megabytes, as disk vendors and fio's `MB/s` count them.
fn megabytes(bytes_per_second: f64) -> String {
    format!("{:.1}", bytes_per_second / 1e6)
}

/// `n/a` rather than 0 when the node cannot measure latency: a zero would
/// read as "fast".
fn millis(ns: Option<u64>) -> String {
    ns.map(|ns| format!("{:.2}", ns as f64 / 1e6)).unwrap_or_else(|| "n/a".to_string())
}

/// Pads every column to its widest cell, three spaces apart (kubectl's gap),
/// with no trailing blanks.
fn layout(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(headers)
            .zip(&widths)
            .map(|((cell, (_, align)), &width)| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|(h, _)| *h).collect());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::canned_rows;
    use crate::rows::SortKey;

    #[test]
    fn flat_table_from_canned_responses() {
        let rows = canned_rows(SortKey::Latency);
        let want = "\
NAMESPACE   WORKLOAD        POD                    CONTAINER   R IOPS   W IOPS   R MB/s   W MB/s   P99 R ms   P99 W ms   LIMIT           LIMIT WAIT   BOTTLENECK
db          sts/pg*         pg-0                   exporter         0       20      0.0      1.0       1.80       5.20   ! -                     0%   disk
db          sts/pg*         pg-0                   postgres        40      200      0.3      8.4       1.80       5.20   10Mi wbps 80%           0%   disk
shop        deploy/web*     web-7d9f8b6c5d-x2kq9   app            145        3      0.6      0.0       0.33       0.21   150 riops 97%          87%   queue
ops         pod/backup-x*   backup-x               restic         900        0     94.4      0.0        n/a        n/a   -                      n/a   unknown
";
        assert_eq!(render_flat(&rows), want);
        assert_eq!(
            notes(&rows, &["node-b".to_string()]),
            [
                "note: latency unavailable on node-b (source: cgroup-stats, eBPF not loaded): P99 shows n/a",
                "note: ! limits not what the policy says (unlimited_unexpectedly): the NRI plugin's log has a WARN naming the expected and the found",
                "note: * workload inferred from the pod name (owner not known from the API)",
            ]
        );
    }

    #[test]
    fn tree_groups_by_namespace_workload_pod_container() {
        let rows = canned_rows(SortKey::Iops);
        let want = "\
NAME                       R IOPS   W IOPS   R MB/s   W MB/s   P99 R ms   P99 W ms   LIMIT           LIMIT WAIT   BOTTLENECK
ops
  pod/backup-x*
    backup-x                                                        n/a        n/a                          n/a   unknown
      restic                  900        0     94.4      0.0                         -
db
  sts/pg*
    pg-0                                                           1.80       5.20                           0%   disk
      postgres                 40      200      0.3      8.4                         10Mi wbps 80%
      exporter                  0       20      0.0      1.0                         ! -
shop
  deploy/web*
    web-7d9f8b6c5d-x2kq9                                           0.33       0.21                          87%   queue
      app                     145        3      0.6      0.0                         150 riops 97%
";
        assert_eq!(render_tree(&rows), want);
    }

    #[test]
    fn an_empty_table_is_just_the_header() {
        assert!(render_flat(&[]).starts_with("NAMESPACE   WORKLOAD"));
        assert!(notes(&[], &[]).is_empty());
    }
}
