//! The agent's modules import one another one way (docs/architecture.md): no top-level
//! module of `agent/src` names, through `crate::`, a module that names it back, directly
//! or through others. Read from the sources, test code and comments left out.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<module>` names in `src`, before its `#[cfg(test)]` part, outside comments.
fn crate_refs(src: &str) -> BTreeSet<String> {
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    let mut refs = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let refs = crate_refs(&std::fs::read_to_string(&f).unwrap());
        let e = g.entry(top.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != top));
    }
    g
}

/// A path from `from` back to `to` through the graph, if there is one.
fn path_to(
    g: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(from).into_iter().flatten() {
        if next == to {
            return Some(vec![from.to_owned(), next.clone()]);
        }
        if seen.insert(next.clone()) {
            if let Some(mut p) = path_to(g, next, to, seen) {
                p.insert(0, from.to_owned());
                return Some(p);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    // The graph was read: the modules the layers are made of are in it.
    for m in [
        "control", "runtime", "status", "http", "ha", "grid", "alerts",
    ] {
        assert!(g.contains_key(m), "module {m} not found in agent/src");
    }
    assert!(g["runtime"].contains("control") && g["http"].contains("status"));
    let mut cycles = Vec::new();
    for m in g.keys() {
        if let Some(p) = path_to(&g, m, m, &mut BTreeSet::new()) {
            cycles.push(p.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut g = BTreeMap::<String, BTreeSet<String>>::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        path_to(&g, "a", "a", &mut BTreeSet::new()).unwrap(),
        ["a", "b", "c", "a"]
    );
    assert_eq!(
        crate_refs("use crate::status::X; // crate::http\n#[cfg(test)]\nuse crate::cli;"),
        BTreeSet::from(["status".to_owned()])
    );
}
