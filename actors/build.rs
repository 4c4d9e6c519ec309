//! Embeds the Python SDK (`sdk/python/plugin/**`) into the binary, so neko can install the SDK
//! that matches it into its managed Python environment without knowing where the source tree is.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let sdk_root = manifest_dir.join("../sdk/python");
    let package = sdk_root.join("plugin");
    println!("cargo:rerun-if-changed={}", package.display());
    let mut files = Vec::new();
    collect(&package, &mut files);
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut out = String::from("/// The SDK's files: (path relative to the SDK root, contents).\n");
    out.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        let rel = f.strip_prefix(&sdk_root).expect("under the sdk root");
        let rel = rel.to_string_lossy().replace('\\', "/");
        rel.hash(&mut hasher);
        std::fs::read(f).expect("readable").hash(&mut hasher);
        let abs = f.canonicalize().expect("canonical path");
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        )
        .expect("write to string");
    }
    out.push_str("];\n");
    writeln!(
        out,
        "/// Changes whenever any SDK file changes: names the installed copy.\npub const HASH: &str = \"{:016x}\";",
        hasher.finish()
    )
    .expect("write to string");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("python_sdk.rs");
    std::fs::write(dest, out).expect("write generated file");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "py" || e == "typed") {
            files.push(path);
        }
    }
}
