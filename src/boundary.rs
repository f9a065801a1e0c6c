//! The rules of src/README.md that the source text itself can be checked against, part of
//! the test command (cargo test): only src/ruby/ touches Ruby, and each layer uses only
//! the layers below it, with no module using itself through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: a module may use its own folder and the layers below. Two
/// folders on one layer stand side by side: neither uses the other.
const LAYERS: &[&[&str]] = &[
    &["sync", "duration", "redact", "clock"],
    &["errors"],
    &["runtime"],
    &["wire"],
    &["publish", "topology"],
    &["consume"],
    &["ruby"],
];

/// The crate's root (the module list and the extension's init) and this file: above every layer.
const ROOT: &[&str] = &["lib.rs", "boundary.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file under src/, relative to it.
fn sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), src().display());
    files.iter().map(|path| path.strip_prefix(src()).expect("under src/").to_path_buf()).collect()
}

/// A file's module path: wire/api.rs is wire::api, wire/mod.rs is wire.
fn module_of(file: &Path) -> String {
    let path = file.with_extension("");
    let parts: Vec<String> = path.iter().map(|p| p.to_string_lossy().into_owned()).filter(|p| p != "mod").collect();
    parts.join("::")
}

/// A file's code without comment lines and without its tests (from `#[cfg(test)]` on): a
/// test may drive its module through the layers around it.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(src().join(file)).expect("a readable source file");
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| line.split(" // ").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after `crate::`, groups expanded: `crate::a::{b, c::{d, e as f}}`
/// names a::b, a::c::d and a::c::e.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let whole_word = !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if whole_word {
            expand(Vec::new(), rest, &mut out);
        }
    }
    out
}

/// Reads `a::b::{c, d}` from the start of `text`, after `prefix`, into `out`.
fn expand(mut prefix: Vec<String>, mut text: &str, out: &mut Vec<Vec<String>>) {
    loop {
        let ident: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            if let Some(group) = text.strip_prefix('{') {
                for item in group_items(group) {
                    expand(prefix.clone(), item, out);
                }
                return;
            }
            break;
        }
        text = &text[ident.len()..];
        prefix.push(ident);
        match text.strip_prefix("::") {
            Some(after) => text = after,
            None => break,
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// The items of a `{...}` group, given the text after its `{`.
fn group_items(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(text[start..i].trim());
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(text[start..].trim());
    items
}

/// The layer of a module (by its folder, or its file at the top level).
fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|layer| layer.contains(&top))
}

fn top_of(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Module => the modules its code names, for every file but the root; Err lists paths
/// that name no module.
fn uses() -> Result<BTreeMap<String, BTreeSet<String>>, Vec<String>> {
    let files: Vec<PathBuf> = sources().into_iter().filter(|f| !ROOT.iter().any(|r| f == Path::new(r))).collect();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let (mut graph, mut unknown) = (BTreeMap::new(), Vec::new());
    for file in &files {
        let module = module_of(file);
        let used: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
        for path in crate_paths(&code_of(file)) {
            // The longest prefix that is a module: crate::wire::api::request is wire::api.
            let named = (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m));
            match named {
                Some(named) if named != module => {
                    used.insert(named);
                }
                Some(_) => {}
                None => unknown.push(format!("{}: crate::{} names no module", file.display(), path.join("::"))),
            }
        }
    }
    if unknown.is_empty() { Ok(graph) } else { Err(unknown) }
}

/// The boundary the threading rules rest on ("Ruby is never called from a tokio
/// thread"): only src/ruby/ and lib.rs may use magnus or rb-sys, so nothing the
/// runtime's threads run can reach Ruby.
#[test]
fn only_src_ruby_touches_ruby() {
    let offenders: Vec<String> = sources()
        .iter()
        .filter(|file| !file.starts_with("ruby") && !ROOT.iter().any(|r| *file == Path::new(r)))
        .flat_map(|file| {
            let text = std::fs::read_to_string(src().join(file)).expect("a readable source file");
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .filter(|(_, line)| line.contains("magnus") || line.contains("rb_sys") || line.contains("rb-sys"))
                .map(|(n, line)| format!("{}:{}: {}", file.display(), n + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(offenders.is_empty(), "magnus/rb-sys used outside src/ruby/:\n{}", offenders.join("\n"));
}

#[test]
fn each_layer_uses_only_the_layers_below() {
    let graph = uses().unwrap_or_else(|unknown| panic!("{}", unknown.join("\n")));
    let mut offenders = Vec::new();
    for (module, used) in &graph {
        let Some(layer) = layer_of(module) else {
            offenders.push(format!("{module} is in no layer: add its folder to LAYERS (src/boundary.rs) and src/README.md"));
            continue;
        };
        for other in used {
            let other_layer = layer_of(other).expect("every module has a layer (checked above)");
            if top_of(other) == top_of(module) || other_layer < layer {
                continue;
            }
            let why = if other_layer == layer { "side by side on one layer" } else { "a layer above" };
            offenders.push(format!("{module} uses {other} ({why})"));
        }
    }
    assert!(offenders.is_empty(), "uses against the layers (src/README.md, Layers):\n{}", offenders.join("\n"));
}

#[test]
fn no_module_uses_itself_through_others() {
    let graph = uses().unwrap_or_else(|unknown| panic!("{}", unknown.join("\n")));
    // Depth first; a module met again while its own uses are being followed closes a circle.
    fn visit<'a>(module: &'a str, graph: &'a BTreeMap<String, BTreeSet<String>>, path: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>, circles: &mut Vec<String>) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            circles.push(format!("{} -> {module}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for other in graph.get(module).into_iter().flatten() {
            visit(other, graph, path, done, circles);
        }
        path.pop();
    }
    let (mut done, mut circles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "modules that use themselves through others:\n{}", circles.join("\n"));
}

#[test]
fn reads_every_path_of_a_group() {
    let code = "use crate::a::{self, B};\nuse crate::{c::d, e::{f as g, h::I}};\nlet x = my_crate::no; crate::j::k(1);";
    let paths: Vec<String> = crate_paths(code).iter().map(|p| p.join("::")).collect();
    assert_eq!(paths, ["a::self", "a::B", "c::d", "e::f", "e::h::I", "j::k"]);
}
