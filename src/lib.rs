//! Native core of the jetstream_bridge gem, exposed to Ruby as `JetstreamBridge::Native`.
//! See src/README.md for the threading, GVL, fork and panic rules this code follows, and
//! which folder holds what.

mod clock;
mod consume;
mod duration;
mod errors;
mod publish;
mod redact;
mod ruby;
mod runtime;
mod sync;
mod topology;
mod wire;

#[magnus::init]
fn init(ruby: &magnus::Ruby) -> Result<(), magnus::Error> {
    ruby::define(ruby)
}

/// The boundary the threading rules rest on ("Ruby is never called from a tokio
/// thread"): only src/ruby/ and this file may use magnus or rb-sys, so nothing the
/// runtime's threads run can reach Ruby. Part of the test command (cargo test).
#[cfg(test)]
mod boundary {
    use std::path::{Path, PathBuf};

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

    #[test]
    fn only_src_ruby_touches_ruby() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let offenders: Vec<String> = files
            .iter()
            .filter(|path| !path.starts_with(src.join("ruby")) && **path != src.join("lib.rs"))
            .flat_map(|path| {
                let text = std::fs::read_to_string(path).expect("a readable source file");
                text.lines()
                    .enumerate()
                    .filter(|(_, line)| !line.trim_start().starts_with("//"))
                    .filter(|(_, line)| line.contains("magnus") || line.contains("rb_sys") || line.contains("rb-sys"))
                    .map(|(n, line)| format!("{}:{}: {}", path.strip_prefix(&src).unwrap().display(), n + 1, line.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(offenders.is_empty(), "magnus/rb-sys used outside src/ruby/:\n{}", offenders.join("\n"));
        assert!(files.len() > 20, "found only {} source files under {}", files.len(), src.display());
    }
}
