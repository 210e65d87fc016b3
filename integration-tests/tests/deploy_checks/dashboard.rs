//! The Grafana dashboard: its structure, its queries, and the metrics they
//! read compared with what the sidecar exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use iogate_testbed::sidecar::Sample;
use serde_json::Value;

use super::promql::{histogram_family, metric_names};

/// One query of the dashboard and where it sits (for error messages).
#[derive(Debug, Clone)]
pub struct Query {
    pub at: String,
    pub expr: String,
}

pub fn load(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("expected JSON in {}", path.display()))
}

/// Panels, including those nested in collapsed rows.
pub fn panels(dash: &Value) -> Result<Vec<&Value>> {
    let top = dash["panels"].as_array().context("expected a `panels` array in the dashboard")?;
    let mut out = Vec::new();
    for p in top {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    Ok(out)
}

fn panel_name(p: &Value) -> String {
    format!("panel {} {:?}", p["id"], p["title"].as_str().unwrap_or("<untitled>"))
}

/// Every `expr` of every panel target, and every query variable's query.
pub fn queries(dash: &Value) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    for p in panels(dash)? {
        for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"].as_str().with_context(|| format!("{} target {i}: expected `expr`", panel_name(p)))?;
            out.push(Query { at: format!("{} target {i}", panel_name(p)), expr: expr.to_string() });
        }
    }
    for v in variables(dash)?.into_iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("<unnamed>");
        // Older dashboards keep the query as a string, newer as {query, refId}.
        let expr = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .with_context(|| format!("variable {name}: expected a query string, found {}", v["query"]))?;
        out.push(Query { at: format!("variable {name}"), expr: expr.to_string() });
    }
    Ok(out)
}

pub fn variables(dash: &Value) -> Result<Vec<&Value>> {
    Ok(dash["templating"]["list"].as_array().context("expected templating.list in the dashboard")?.iter().collect())
}

/// Metric name → where the dashboard reads it.
pub fn metrics_read(queries: &[Query]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for q in queries {
        for name in metric_names(&q.expr).with_context(|| q.at.clone())? {
            out.entry(name).or_default().push(q.at.clone());
        }
    }
    Ok(out)
}

/// Problems with the dashboard's structure: panel ids, datasources.
pub fn structural_problems(dash: &Value) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for p in panels(dash)? {
        match p["id"].as_u64() {
            Some(id) if !seen.insert(id) => problems.push(format!("{}: duplicate panel id {id}", panel_name(p))),
            Some(_) => {}
            None => problems.push(format!("{}: expected a numeric `id`, found {}", panel_name(p), p["id"])),
        }
        if p["type"] == "row" {
            continue;
        }
        if !uses_datasource_variable(&p["datasource"]) {
            problems.push(format!(
                "{}: expected datasource uid ${{datasource}}, found {}",
                panel_name(p),
                p["datasource"]
            ));
        }
        for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            if !t["datasource"].is_null() && !uses_datasource_variable(&t["datasource"]) {
                let found = &t["datasource"];
                problems
                    .push(format!("{} target {i}: expected datasource ${{datasource}}, found {found}", panel_name(p)));
            }
        }
    }
    Ok(problems)
}

fn uses_datasource_variable(ds: &Value) -> bool {
    ds["type"] == "prometheus" && ds["uid"] == "${datasource}"
}

/// Names the dashboard reads that the exposition lacks. A name must be a
/// sample's name, and declared: by its own `# TYPE` line, or, for a
/// `_bucket`/`_sum`/`_count` series, by its family's (a histogram or a summary).
pub fn missing_from(read: &BTreeMap<String, Vec<String>>, exposition: &str, samples: &[Sample]) -> Vec<String> {
    let types = declared_types(exposition);
    let present: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let mut missing = Vec::new();
    for (name, at) in read {
        let (family, suffix) = histogram_family(name);
        let family_type = types.get(family).map(String::as_str);
        let declared =
            types.contains_key(name) || (suffix.is_some() && matches!(family_type, Some("histogram" | "summary")));
        let why = if !present.contains(name.as_str()) {
            Some(format!("no sample named {name}"))
        } else if !declared {
            Some(format!("no # TYPE for {name}, and its family {family} is {family_type:?}, not a histogram"))
        } else {
            None
        };
        if let Some(why) = why {
            missing.push(format!("{name} ({why}; read by {})", at.join(", ")));
        }
    }
    missing
}

/// `# TYPE name kind` lines.
fn declared_types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The expression with Grafana's variables replaced by values PromQL
/// accepts, for `promtool` to parse.
pub fn as_plain_promql(expr: &str) -> Result<String> {
    let mut out = expr.to_string();
    for (var, value) in [("$__rate_interval", "2m"), ("$__range", "1h"), ("$__interval", "30s")] {
        out = out.replace(var, value);
    }
    for var in ["${namespace}", "$namespace", "${pod}", "$pod"] {
        out = out.replace(var, ".*");
    }
    if let Some(i) = out.find('$') {
        bail!("expected only known Grafana variables, found {:?} in {expr:?}", &out[i..]);
    }
    ensure!(!out.trim().is_empty(), "empty expression");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iogate_testbed::sidecar::parse_exposition;
    use serde_json::json;

    fn dash(panels: Value) -> Value {
        json!({"panels": panels, "templating": {"list": [
            {"name": "ns", "type": "query", "query": {"query": "label_values(m_total, namespace)"}},
            {"name": "datasource", "type": "datasource", "query": "prometheus"}
        ]}})
    }

    const DS: fn() -> Value = || json!({"type": "prometheus", "uid": "${datasource}"});

    #[test]
    fn duplicate_ids_and_missing_datasources_are_reported() {
        let d = dash(json!([
            {"id": 1, "title": "a", "type": "timeseries", "datasource": DS(), "targets": []},
            {"id": 1, "title": "b", "type": "timeseries", "targets": []},
            {"id": 2, "title": "r", "type": "row", "panels": [
                {"id": 3, "title": "c", "type": "stat", "datasource": DS(),
                 "targets": [{"expr": "x", "datasource": {"type": "prometheus", "uid": "abc"}}]}
            ]}
        ]));
        let problems = structural_problems(&d).unwrap();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("duplicate panel id 1"), "{problems:#?}");
        assert!(problems[1].contains("panel 1 \"b\": expected datasource"), "{problems:#?}");
        assert!(problems[2].contains("panel 3 \"c\" target 0"), "{problems:#?}");
    }

    #[test]
    fn queries_come_from_targets_in_rows_and_variables() {
        let d = dash(json!([
            {"id": 1, "type": "row", "panels": [{"id": 2, "targets": [{"expr": "rate(a_total[5m])"}]}]}
        ]));
        let read = metrics_read(&queries(&d).unwrap()).unwrap();
        assert_eq!(read.keys().collect::<Vec<_>>(), ["a_total", "m_total"]);
        assert_eq!(read["m_total"], ["variable ns"]);
    }

    #[test]
    fn a_missing_or_undeclared_metric_is_named() {
        let text = "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n\
                    # TYPE c_count counter\nc_count 3\n# TYPE g gauge\ng 1\ng_sum 2\n";
        let samples = parse_exposition(text).unwrap();
        let read: BTreeMap<String, Vec<String>> = ["h_bucket", "h_sum", "c_count", "g_sum", "gone_total"]
            .iter()
            .map(|n| (n.to_string(), vec!["panel 9".into()]))
            .collect();
        let missing = missing_from(&read, text, &samples);
        assert_eq!(missing.len(), 2, "{missing:#?}");
        assert!(
            missing[0].starts_with("g_sum (no # TYPE for g_sum, and its family g is Some(\"gauge\")"),
            "{missing:#?}"
        );
        assert_eq!(missing[1], "gone_total (no sample named gone_total; read by panel 9)");
    }

    #[test]
    fn grafana_variables_become_plain_promql() {
        let e = as_plain_promql("rate(x{ns=~\"$namespace\"}[$__rate_interval])").unwrap();
        assert_eq!(e, "rate(x{ns=~\".*\"}[2m])");
        assert!(as_plain_promql("x{a=\"$unknown\"}").is_err());
    }
}
