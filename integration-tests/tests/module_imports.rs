//! Module dependencies run one way in every crate of the workspace: no
//! module imports a module that imports it back, directly or around a
//! longer cycle.
//!
//! The import graph is read from the sources as text: an edge A → B for
//! every `crate::…`, `super::…` or `self::…` path in A (in `use` items,
//! groups included, or inline) and every path into a child module A
//! declares, resolved to the longest module it names. Tests count too:
//! a test module that needs its parent's caller is a cycle all the same.
//! Needs no root and no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use iogate_testbed::repo_root;

type Module = Vec<String>;

/// Every module of a crate's `src/`, by path (`[]` for the crate root),
/// with its file. Binaries under `src/bin` are crates of their own.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("bin") {
                    pending.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod") || module == ["lib"] || module == ["main"] {
                module.pop();
            }
            out.insert(module, path);
        }
    }
    out
}

/// The code's tokens that matter here: identifiers and `::`, `{`, `}`, `,`,
/// `;`, with comments, strings and character literals gone.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_string = |i: usize, hashes: usize| -> usize {
        // `i` is just past the opening quote.
        let mut j = i;
        while j < chars.len() {
            if hashes == 0 && chars[j] == '\\' {
                j += 2;
                continue;
            }
            if chars[j] == '"' && chars[j + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes {
                return j + 1 + hashes;
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            '"' => i = skip_string(i + 1, 0),
            'r' | 'b' if matches!(next, Some('"' | '#')) || (c == 'b' && next == Some('r')) => {
                let mut j = i + 1;
                if chars.get(j) == Some(&'r') {
                    j += 1;
                }
                let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
                if chars.get(j + hashes) == Some(&'"') && (c == 'r' || chars[i + 1] == 'r' || hashes == 0) {
                    i = skip_string(j + hashes + 1, hashes);
                } else {
                    out.push(c.to_string());
                    i += 1;
                }
            }
            '\'' => {
                // A character literal ('x', '\n', '"'), or a lifetime ('a).
                if next == Some('\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            ':' if next == Some(':') => {
                out.push("::".into());
                i += 2;
            }
            '{' | '}' | ',' | ';' => {
                out.push(c.to_string());
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(chars[start..i].iter().collect());
            }
            _ => i += 1,
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The paths that start at `at` (`crate`, `super`, `self`, or a child
/// module's name): `a::b::c`, and for a group `a::{b, c::d}` each member.
fn paths_from(tokens: &[String], at: usize) -> Vec<Vec<String>> {
    fn walk(tokens: &[String], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix;
        loop {
            if tokens.get(i).map(String::as_str) != Some("::") {
                out.push(path);
                return i;
            }
            match tokens.get(i + 1).map(String::as_str) {
                Some("{") => {
                    i += 2;
                    while i < tokens.len() && tokens[i] != "}" {
                        if tokens[i] == "," {
                            i += 1;
                            continue;
                        }
                        let mut member = path.clone();
                        if tokens[i] != "self" {
                            member.push(tokens[i].clone());
                        }
                        i = walk(tokens, i + 1, member, out);
                        // `x as y`: the alias names nothing to resolve.
                        while i < tokens.len() && !matches!(tokens[i].as_str(), "," | "}") {
                            i += 1;
                        }
                    }
                    return i + 1;
                }
                Some(t) if is_ident(t) => {
                    path.push(t.to_string());
                    i += 2;
                }
                _ => {
                    out.push(path);
                    return i + 1;
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tokens, at + 1, vec![tokens[at].clone()], &mut out);
    out
}

/// The longest module `path` names, seen from `module`, `inline` modules
/// deep inside its file (a test module's `super` is the file's module).
fn resolve(modules: &BTreeMap<Module, PathBuf>, module: &Module, inline: usize, path: &[String]) -> Module {
    let (mut base, rest) = match path[0].as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (module.clone(), &path[1..]),
        "super" => {
            let mut base = module.clone();
            let mut rest = path;
            let mut within_file = inline;
            while rest.first().is_some_and(|s| s == "super") {
                if within_file > 0 {
                    within_file -= 1;
                } else {
                    base.pop();
                }
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => (module.clone(), path),
    };
    let mut best = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if !modules.contains_key(&base) {
            break;
        }
        best = base.clone();
    }
    best
}

fn import_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(src);
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let tokens = tokens(&text);
        let children: BTreeSet<&str> = tokens
            .windows(3)
            .filter(|w| w[0] == "mod" && is_ident(&w[1]) && w[2] == ";")
            .map(|w| w[1].as_str())
            .collect();
        let mut edges = BTreeSet::new();
        // Brace depth, and the depths at which inline modules opened.
        let (mut depth, mut inline) = (0usize, Vec::new());
        for i in 0..tokens.len() {
            let t = tokens[i].as_str();
            match t {
                "mod" if tokens.get(i + 2).is_some_and(|n| n == "{") => inline.push(depth),
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if inline.last() == Some(&depth) {
                        inline.pop();
                    }
                }
                _ => {}
            }
            let starts = matches!(t, "crate" | "super" | "self") || children.contains(t);
            let after_path = i > 0 && tokens[i - 1] == "::";
            if starts && !after_path && tokens.get(i + 1).is_some_and(|n| n == "::") {
                for path in paths_from(&tokens, i) {
                    edges.insert(resolve(&modules, module, inline.len(), &path));
                }
            }
        }
        edges.remove(module);
        graph.insert(module.clone(), edges);
    }
    graph
}

/// Strongly connected components with more than one module: the cycles.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().position(|m| *m == v).expect("v is on the stack");
                let component: Vec<Module> = self.stack.drain(at..).cloned().collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

fn crates() -> Vec<PathBuf> {
    let root = repo_root();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in crates() {
        let graph = import_graph(&krate.join("src"));
        for component in cycles(&graph) {
            let names: Vec<String> = component.iter().map(name).collect();
            problems.push(format!("{}: {}", krate.file_name().unwrap().to_string_lossy(), names.join(" <-> ")));
        }
    }
    assert!(problems.is_empty(), "expected module imports to run one way, found cycles:\n{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_groups_nested_paths_and_children() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path();
    std::fs::create_dir_all(src.join("cg/v1")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod cg;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::X, cg::{self, v1::blkio as io}};\n// crate::nothing\n").unwrap();
    std::fs::write(src.join("b.rs"), "fn f() { let s = \"crate::a\"; let c = '\"'; super::a::g(); }").unwrap();
    std::fs::write(src.join("cg/mod.rs"), "pub mod v1; fn f() { v1::blkio::read(); }").unwrap();
    std::fs::write(src.join("cg/v1/mod.rs"), "pub mod blkio;").unwrap();
    std::fs::write(src.join("cg/v1/blkio.rs"), "use crate::cg::Error;").unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod cg; mod d;").unwrap();
    std::fs::write(src.join("d.rs"), "fn f() {}\n#[cfg(test)]\nmod tests { use super::*; use super::super::a; }")
        .unwrap();
    let graph = import_graph(src);
    let m = |s: &str| -> Module { s.split("::").filter(|p| !p.is_empty()).map(String::from).collect() };
    let edges = |s: &str| -> Vec<String> { graph[&m(s)].iter().map(name).collect() };
    assert_eq!(edges("a"), ["b", "cg", "cg::v1::blkio"]);
    assert_eq!(edges("b"), ["a"], "strings and comments name nothing");
    assert_eq!(edges("cg"), ["cg::v1::blkio"]);
    assert_eq!(edges("d"), ["a"], "a test module's super is its file's module");
    let found: Vec<Vec<String>> = cycles(&graph).iter().map(|c| c.iter().map(name).collect()).collect();
    assert_eq!(found.len(), 2, "{found:?}");
}
