//! The crate's layers, checked: no module imports a module above it, and the two front-ends
//! never import each other.
//!
//! From the bottom: `base` (sync facade, stack, list, diag, env, os), `layout` (size classes,
//! geometry, pool, arena map, the allocator underneath, debug format, stats, the `Front`
//! seam), then the two front-ends `gil` and `ft` side by side, the facade `heap` with the
//! registry of live heaps `heaps`, the process
//! shell `global`, and the crate root (`lib.rs`, with the unit tests `src/tests.rs`).
//!
//! Every `crate::` path in code (comments and doc comments are skipped: a doc link upward is
//! not a dependency) names its first segment; `super::` in a folder's `mod.rs` or a top-level
//! file is the crate root. A path to a root re-export (`crate::Allocator`) counts as the root,
//! so lower modules must name the module they use.

mod source;

/// The layer of a top-level module of the crate (`None`: not a module, i.e. a root re-export).
fn rank(module: &str) -> Option<u32> {
    Some(match module {
        "base" => 0,
        "layout" => 1,
        "gil" | "ft" => 2,
        // The facade and the registry of live heaps it enters each heap in (which calls back
        // into the heaps it holds): one layer.
        "heap" | "heaps" => 3,
        "global" => 4,
        "lib" | "tests" => 5,
        _ => return None,
    })
}

/// The top-level module a file under `src/` belongs to, and whether its `super` is the root.
fn module_of(rel: &str) -> (String, bool) {
    let rel = rel.trim_start_matches("src/");
    match rel.split_once('/') {
        Some((dir, file)) => (dir.to_string(), file == "mod.rs"),
        None => (rel.trim_end_matches(".rs").to_string(), true),
    }
}

/// For each byte of `code`, whether it lies inside an inline `mod name { ... }` (where
/// `super::` names the file's own module, not the parent).
fn inside_inline_mod(code: &str) -> Vec<bool> {
    let bytes = code.as_bytes();
    let mut inside = vec![false; bytes.len()];
    // One entry per open brace: whether it opened an inline module.
    let mut stack: Vec<bool> = Vec::new();
    let mut depth_mods = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => {
                let head = code[..i].trim_end();
                let word_start = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_'));
                let before = head[..word_start.map_or(0, |w| w + 1)].trim_end();
                let is_mod = word_start.is_some() && before.ends_with("mod");
                stack.push(is_mod);
                depth_mods += usize::from(is_mod);
            }
            b'}' => {
                let was_mod = stack.pop() == Some(true);
                depth_mods -= usize::from(was_mod);
            }
            _ => {}
        }
        inside[i] = depth_mods > 0;
    }
    inside
}

/// The first segment of every crate-rooted path in `code` (`crate::a::b` gives `a`;
/// `crate::{a::b, c}` gives `a` and `c`; with `super_is_root`, `super::x` outside inline
/// modules gives `x`).
fn targets(code: &str, super_is_root: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut prefixes = vec!["crate::"];
    if super_is_root {
        prefixes.push("super::");
    }
    let inline = inside_inline_mod(code);
    for prefix in prefixes {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let at = code.len() - rest.len() + i;
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `$crate::` or `my_crate::`
            }
            if prefix == "super::" && inline[at] {
                continue; // inside an inline module: `super` is in this file
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut item = String::new();
                let mut items = Vec::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                        _ => {}
                    }
                    if depth >= 1 && !(c == ',' && depth == 1) {
                        item.push(c);
                    }
                }
                items.push(item);
                for it in items {
                    let seg: String = it
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !seg.is_empty() {
                        out.push(seg);
                    }
                }
            } else {
                let seg: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !seg.is_empty() {
                    out.push(seg);
                }
            }
        }
    }
    out
}

/// The code of `text` without comments (line comments, doc comments; block comments are not
/// used in this crate).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every import of `file` (relative path) that breaks the layering, as messages.
fn violations(rel: &str, text: &str) -> Vec<String> {
    let (module, super_is_root) = module_of(rel);
    let Some(own) = rank(&module) else {
        return vec![format!(
            "{rel}: unknown module `{module}` (add it to tests/layers.rs)"
        )];
    };
    let mut out = Vec::new();
    for target in targets(&code_of(text), super_is_root) {
        if target == module || target == "self" {
            continue;
        }
        let theirs = rank(&target).unwrap_or(5);
        let sideways = theirs == 2 && own == 2;
        if theirs > own || sideways {
            out.push(format!(
                "{rel}: `{module}` (layer {own}) imports `{target}` (layer {theirs})"
            ));
        }
    }
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let files = source::files();
    assert!(
        files.len() > 20,
        "src/ walk found only {} files",
        files.len()
    );
    let mut bad = Vec::new();
    let mut imports = 0;
    for (rel, text) in &files {
        imports += targets(&code_of(text), false).len();
        bad.extend(violations(rel, text));
    }
    assert!(
        imports > 100,
        "only {imports} crate paths found: the parser is broken"
    );
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_upward_and_sideways_imports() {
    // Upward: layout naming the facade, base naming layout, a root re-export from below.
    assert_eq!(
        violations("src/layout/pool.rs", "use crate::heap::Allocator;").len(),
        1
    );
    assert_eq!(
        violations("src/base/os.rs", "let g = crate::layout::geometry::X;").len(),
        1
    );
    assert_eq!(
        violations("src/layout/stats.rs", "use crate::{Mode, base::sync};").len(),
        1
    );
    // Sideways between the front-ends, in both directions, and through `super` in a mod.rs.
    assert_eq!(
        violations("src/gil/mod.rs", "use crate::ft::FtHeap;").len(),
        1
    );
    assert_eq!(violations("src/ft/central.rs", "crate::gil::MAX").len(), 1);
    assert_eq!(violations("src/ft/mod.rs", "use super::gil::X;").len(), 1);
    // `super` inside an inline module of a mod.rs is that file's module, not the root.
    assert!(violations("src/ft/mod.rs", "mod memo {\n    use super::Memo;\n}").is_empty());
    assert_eq!(
        violations(
            "src/ft/mod.rs",
            "mod memo {\n    use super::Memo;\n}\nuse super::Allocator;"
        )
        .len(),
        1
    );
    // Allowed: downward, within a folder, comments.
    assert!(violations(
        "src/ft/thread_cache.rs",
        "use super::central::Central;\nuse crate::{base::sync, layout::pool};"
    )
    .is_empty());
    assert!(violations(
        "src/layout/mod.rs",
        "/// See [`Allocator`](crate::Allocator)."
    )
    .is_empty());
    assert!(violations(
        "src/heap.rs",
        "use crate::gil::GilHeap; use crate::ft::FtHeap;"
    )
    .is_empty());
}
