//! The docs stand alone: every relative link in every Markdown file of the
//! repository resolves to a file or directory inside it, and every Markdown
//! file a doc names in prose (`docs/protocol.md`, `README.md`) exists.
//!
//! Web links (`http:`, `https:`, `mailto:`) and in-page anchors are not
//! checked; an absolute path (`/work/...`) is an error, since it points
//! outside the repository by definition.

use std::path::{Path, PathBuf};

/// Directories never searched: build output, VCS data, virtual environments.
fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("target") || name == "node_modules" || name == "__pycache__"
}

fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            if !skipped(&name) {
                markdown_files(&path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The link targets of one Markdown text: inline `[text](target)` and
/// reference definitions `[name]: target`, outside code blocks and code
/// spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop code spans: `[a](b)` inside backticks is code, not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        if let Some(rest) = prose.trim_start().strip_prefix('[')
            && let Some((_, target)) = rest.split_once("]: ")
        {
            targets.push(target.split_whitespace().next().unwrap_or_default().to_owned());
        }
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or_default();
            targets.push(target.trim_matches(['<', '>']).to_owned());
            rest = &after[end..];
        }
    }
    targets
}

/// The `*.md` file names a text mentions outside code blocks, links and
/// web addresses included. Code spans with a placeholder (`<UTC time>`) or
/// a space are patterns, not names, and are skipped.
fn mentioned_markdown(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let kept: Vec<&str> = line
            .split('`')
            .enumerate()
            .filter(|(i, part)| i % 2 == 0 || !(part.contains('<') || part.contains(' ')))
            .map(|(_, part)| part)
            .collect();
        for word in kept.join(" ").split_whitespace() {
            if word.contains("://") || word.starts_with("](http") || word.contains("(http") {
                continue;
            }
            let name_chars = |c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c));
            for token in word.split(name_chars) {
                let token = token.trim_end_matches('.');
                if token.len() > 3 && token.ends_with(".md") {
                    names.push(token.to_owned());
                }
            }
        }
    }
    names
}

/// Whether a mentioned name exists, relative to the file or to the root.
fn mention_exists(root: &Path, file: &Path, name: &str) -> bool {
    !name.starts_with('/') && (file.parent().unwrap().join(name).exists() || root.join(name).exists())
}

/// Why `target`, linked from `file`, does not resolve inside `root`; `None`
/// if it does or is not a local link.
fn broken(root: &Path, file: &Path, target: &str) -> Option<String> {
    let external = ["http://", "https://", "mailto:"];
    if target.is_empty() || target.starts_with('#') || external.iter().any(|p| target.starts_with(p)) {
        return None;
    }
    let path = target.split('#').next().unwrap_or_default();
    if path.starts_with('/') {
        return Some("an absolute path points outside the repository".to_owned());
    }
    let resolved = file.parent().unwrap().join(path);
    match resolved.canonicalize() {
        Ok(real) if real.starts_with(root) => None,
        Ok(real) => Some(format!("resolves outside the repository, to {}", real.display())),
        Err(_) => Some("no such file or directory".to_owned()),
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("README.md")), "found no README.md under {}", root.display());
    let mut problems = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display();
        for target in link_targets(&text) {
            links += 1;
            if let Some(why) = broken(&root, file, &target) {
                problems.push(format!("{shown}: ({target}) {why}"));
            }
        }
        for name in mentioned_markdown(&text) {
            if !mention_exists(&root, file, &name) {
                problems.push(format!("{shown}: names {name}, which is not in the repository"));
            }
        }
    }
    assert!(links > 10, "only {links} links found: is the parser broken?");
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn the_link_parser_finds_links_and_skips_code() {
    let text = "See [the guide](docs/a.md#x) and [site](https://example.org).\n\
                `[not](a-link)` in a span\n\
                ```\n[nor](this)\n```\n\
                [ref]: ../b.md \"title\"\n";
    assert_eq!(link_targets(text), ["docs/a.md#x", "https://example.org", "../b.md"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let readme = root.join("README.md");
    assert_eq!(broken(&root, &readme, "docs/protocol.md#4-commands"), None);
    assert_eq!(broken(&root, &readme, "https://example.org/x"), None);
    assert!(broken(&root, &readme, "docs/nonexistent.md").is_some());
    assert!(broken(&root, &readme, "../outside.md").is_some());
    assert!(broken(&root, &readme, "/work/shared/PROTOCOL.md").is_some());

    let prose = "The contract is PROTOCOL.md (see `shared/PROTOCOL.md`), and docs/protocol.md.\n\
                 writes `target/<time>/results.md`; see https://example.org/README.md\n";
    assert_eq!(mentioned_markdown(prose), ["PROTOCOL.md", "shared/PROTOCOL.md", "docs/protocol.md"]);
    assert!(mention_exists(&root, &readme, "docs/protocol.md"));
    assert!(!mention_exists(&root, &readme, "PROTOCOL.md"));
    assert!(!mention_exists(&root, &readme, "/work/shared/PROTOCOL.md"));
}
