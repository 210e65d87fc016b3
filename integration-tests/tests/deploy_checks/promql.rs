//! The metric names a PromQL expression (or a Grafana variable query) reads.
//!
//! Not a PromQL parser: a scanner that knows which identifiers are *not*
//! metric names. Rules, in order:
//!
//! * string literals (`"…"`, `'…'`, `` `…` ``) are skipped, so label values
//!   never count;
//! * everything between `{` and `}` is skipped (label matchers), and between
//!   `[` and `]` (ranges such as `[$__rate_interval]`);
//! * `$name` and `${name}` are Grafana variables, and tokens starting with a
//!   digit are numbers or durations (`0.95`, `5m`);
//! * an identifier followed by `(` is a function or aggregation (`rate`,
//!   `histogram_quantile`, `sum(`);
//! * keywords are skipped: aggregation operators that can be followed by
//!   `by`/`without` (`sum`, `topk` …), binary operators (`and`, `or`,
//!   `unless`, `bool`), `offset`, `inf`, `nan`;
//! * after `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`
//!   the parenthesised label list is skipped (so `le` in `by (le)` is a label);
//! * every other identifier is a metric name.
//!
//! Grafana's `label_values(<series>, <label>)` and `query_result(<expr>)`
//! are unwrapped first: only `<series>` / `<expr>` is scanned.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
];

/// Modifiers whose parenthesised argument is a list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names in a Grafana query: a variable query
/// (`label_values(…)`, `query_result(…)`) or a plain PromQL expression.
pub fn metric_names(query: &str) -> Result<BTreeSet<String>> {
    let query = query.trim();
    if let Some(args) = call_args(query, "label_values")? {
        // label_values(label) names no metric; label_values(series, label) does.
        return match split_last_top_level_comma(args) {
            Some((series, _label)) => expr_metric_names(series),
            None => Ok(BTreeSet::new()),
        };
    }
    if let Some(expr) = call_args(query, "query_result")? {
        return expr_metric_names(expr);
    }
    for unsupported in ["label_names", "metrics"] {
        if call_args(query, unsupported)?.is_some() {
            bail!(
                "expected a PromQL expression or label_values/query_result, found the {unsupported}() query {query:?}"
            );
        }
    }
    expr_metric_names(query)
}

/// `name(<args>)` → `Some(args)` when the whole query is that one call.
fn call_args<'a>(query: &'a str, name: &str) -> Result<Option<&'a str>> {
    let Some(rest) = query.strip_prefix(name) else { return Ok(None) };
    let Some(inner) = rest.trim_start().strip_prefix('(') else { return Ok(None) };
    let args =
        inner.strip_suffix(')').with_context(|| format!("expected {name}(…) to end with `)`, found {query:?}"))?;
    Ok(Some(args))
}

fn split_last_top_level_comma(args: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut quote = None;
    let mut last = None;
    for (i, c) in args.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last.map(|i| (&args[..i], &args[i + 1..]))
}

/// The metric names in a PromQL expression.
pub fn expr_metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i = match c {
            '"' | '\'' | '`' => skip_string(&chars, i).with_context(|| format!("unterminated string in {expr:?}"))?,
            '{' => skip_until(&chars, i, '}').with_context(|| format!("expected `}}` in {expr:?}"))?,
            '[' => skip_until(&chars, i, ']').with_context(|| format!("expected `]` in {expr:?}"))?,
            '$' => skip_variable(&chars, i),
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                skip_number(&chars, i)
            }
            c if is_ident_start(c) => {
                let end = ident_end(&chars, i);
                let word: String = chars[i..end].iter().collect();
                classify(&chars, end, &word, &mut names).with_context(|| format!("in {expr:?}"))?
            }
            _ => i + 1,
        };
    }
    Ok(names)
}

/// Handles the identifier `word` ending at `end`; returns where to go on.
fn classify(chars: &[char], end: usize, word: &str, names: &mut BTreeSet<String>) -> Result<usize> {
    let next = skip_spaces(chars, end);
    if LABEL_LISTS.contains(&word) {
        if chars.get(next) == Some(&'(') {
            return skip_until(chars, next, ')').with_context(|| format!("expected `)` closing {word}(…)"));
        }
        return Ok(end);
    }
    if chars.get(next) == Some(&'(') || KEYWORDS.contains(&word) {
        return Ok(end);
    }
    names.insert(word.to_string());
    Ok(end)
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
        i += 1;
    }
    i
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// From an opening quote to just past its closing quote (backslash escapes
/// inside `"` and `'`; none inside backticks).
fn skip_string(chars: &[char], start: usize) -> Option<usize> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// From an opening bracket to just past `close`, skipping strings inside.
fn skip_until(chars: &[char], start: usize, close: char) -> Option<usize> {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i)?,
            c if c == close => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_variable(chars: &[char], start: usize) -> usize {
    if chars.get(start + 1) == Some(&'{') {
        return skip_until(chars, start + 1, '}').unwrap_or(chars.len());
    }
    ident_end(chars, start + 1)
}

fn skip_number(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
        // 1e-9, 2.5e+3: a sign right after the exponent belongs to the number.
        let exponent_sign = matches!(chars[i], 'e' | 'E') && matches!(chars.get(i + 1), Some('-' | '+'));
        i += if exponent_sign { 2 } else { 1 };
    }
    i
}

/// `iogate_io_latency_seconds_bucket` → `(iogate_io_latency_seconds, Some("_bucket"))`.
pub fn histogram_family(name: &str) -> (&str, Option<&'static str>) {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(family) = name.strip_suffix(suffix) {
            return (family, Some(suffix));
        }
    }
    (name, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(q: &str) -> Vec<String> {
        metric_names(q).unwrap().into_iter().collect()
    }

    #[test]
    fn rate_by_labels_and_matchers() {
        let q = r#"sum by (namespace, pod, direction)
                   (rate(iogate_io_requests_total{namespace=~"$namespace", pod="x{y}"}[$__rate_interval]))"#;
        assert_eq!(names(q), ["iogate_io_requests_total"]);
    }

    #[test]
    fn histogram_quantile_le_is_a_label_not_a_metric() {
        let q = "histogram_quantile(0.99, sum by (le) (rate(iogate_io_latency_seconds_bucket[5m])))";
        assert_eq!(names(q), ["iogate_io_latency_seconds_bucket"]);
    }

    #[test]
    fn topk_of_a_ratio_and_binary_operators() {
        let q = "topk(10, sum by (pod) (rate(a_sum[1h])) / sum without (le) (rate(a_count[1h]))) \
                 or on (pod) group_left (x) vector(0) and bool b > 1e-9 unless c offset 5m";
        assert_eq!(names(q), ["a_count", "a_sum", "b", "c"]);
    }

    #[test]
    fn aggregation_with_modifier_first_and_bare_metrics() {
        assert_eq!(names("sum without (device) (iogate_io_limit)"), ["iogate_io_limit"]);
        assert_eq!(names("iogate_sidecar_ebpf_loaded"), ["iogate_sidecar_ebpf_loaded"]);
        assert_eq!(names("min(up) by (job)"), ["up"]);
        assert_eq!(names("rate (x[5m])"), ["x"], "a space before `(` still makes a function");
        assert_eq!(names("${var} * ns:recorded:rate5m"), ["ns:recorded:rate5m"]);
    }

    #[test]
    fn grafana_variable_queries() {
        assert_eq!(
            names(r#"label_values(iogate_io_requests_total{cgroup=""}, namespace)"#),
            ["iogate_io_requests_total"]
        );
        assert_eq!(names("label_values(m{a=~\"x,y\"}, pod)"), ["m"], "a comma inside the matcher is not the split");
        assert!(names("label_values(namespace)").is_empty());
        assert_eq!(names("query_result(topk(5, foo))"), ["foo"]);
        assert!(metric_names("metrics(iogate_.*)").is_err());
    }

    #[test]
    fn malformed_expressions_are_errors() {
        assert!(expr_metric_names("rate(x{a=\"b\"[5m])").is_err(), "unclosed matcher");
        assert!(expr_metric_names("x{a=\"b}").is_err(), "unterminated string");
    }

    #[test]
    fn histogram_suffixes() {
        assert_eq!(histogram_family("a_seconds_bucket"), ("a_seconds", Some("_bucket")));
        assert_eq!(histogram_family("a_seconds_count"), ("a_seconds", Some("_count")));
        assert_eq!(histogram_family("a_total"), ("a_total", None));
    }
}
