//! The library's top-level modules depend on each other without a cycle, so each can be read
//! (and changed) knowing only what is below it.
//!
//! The check reads `src/**.rs` as text: a `crate::<module>` path in code (comments, doc links
//! included, do not count; nor do unit tests, which may use anything) is an edge from the
//! module the file belongs to. Any cycle fails the test, printed with a file for each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges that close a cycle today, each with what removes it. An entry that no longer exists
/// fails the test too, so this list only shrinks.
const KNOWN_BACK_EDGES: &[(&str, &str, &str)] = &[];

/// `from -> to`, with the first file that makes the edge.
type Edges = BTreeMap<String, BTreeMap<String, PathBuf>>;

#[test]
fn top_level_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = module_edges(&src);
    for (from, to, why) in KNOWN_BACK_EDGES {
        let removed = edges.get_mut(*from).and_then(|targets| targets.remove(*to));
        assert!(
            removed.is_some(),
            "{from} -> {to} is gone ({why}): delete it from KNOWN_BACK_EDGES"
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let file = &edges[&pair[0]][&pair[1]];
                format!("  {} -> {} ({})", pair[0], pair[1], file.display())
            })
            .collect();
        panic!(
            "import cycle between top-level modules:\n{}",
            steps.join("\n")
        );
    }
}

/// Every `crate::<module>` edge between different top-level modules under `src`.
fn module_edges(src: &Path) -> Edges {
    let modules: BTreeSet<String> = fs::read_dir(src)
        .expect("src is readable")
        .map(|entry| entry.expect("src entry").path())
        .filter(|path| path.file_name() != Some("lib.rs".as_ref()))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_string()))
        .collect();
    let mut edges = Edges::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("under src");
        let Some(from) = modules.get(top_level_name(relative)) else {
            continue; // lib.rs: the crate root only declares the modules
        };
        // Unit tests, in a file of their own or at the end of one, may use anything.
        if relative.file_name() == Some("tests.rs".as_ref()) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("source is readable");
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line == "#[cfg(test)]"
                && lines
                    .peek()
                    .is_some_and(|next| next.starts_with("mod tests"))
            {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("crate::{"),
                "{}: write one `use crate::<module>::...` per module, so this check sees each",
                relative.display()
            );
            for to in code.split("crate::").skip(1).map(leading_name) {
                if to != from && modules.contains(to) {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to.to_string())
                        .or_insert_with(|| relative.to_path_buf());
                }
            }
        }
    }
    edges
}

/// `foo` for `foo.rs` and for anything under `foo/`.
fn top_level_name(relative: &Path) -> &str {
    let first = relative
        .iter()
        .next()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The identifier at the start of `text`.
fn leading_name(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("directory is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension() == Some("rs".as_ref()) {
            files.push(path);
        }
    }
    files
}

/// A cycle as the modules along it, first and last the same; depth-first, so the first cycle
/// found in name order.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|on_path| on_path == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for to in edges
            .get(module)
            .into_iter()
            .flat_map(|targets| targets.keys())
        {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|module| visit(module, edges, &mut Vec::new(), &mut done))
}
