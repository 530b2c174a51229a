//! Embeds the web UI (`ui/dist`, built by `make ui`) in the binary. A fresh
//! clone without Node still builds: the UI is then replaced by a page that
//! says how to build it, and cargo prints the same as a warning.
use std::path::{Path, PathBuf};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("reading ui/dist").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("below ui/dist").to_string_lossy().replace('\\', "/");
            out.push((rel, path));
        }
    }
}

fn main() {
    let dist = Path::new("ui/dist");
    println!("cargo:rerun-if-changed=ui/dist");
    let mut assets = Vec::new();
    if dist.join("index.html").exists() {
        walk(dist, dist, &mut assets);
    } else {
        println!(
            "cargo:warning=ui/dist is missing, so the web UI is not embedded: run `make ui` (npm ci && npm run build in ui/) and build again"
        );
    }
    let mut code =
        String::from("/// Files of ui/dist: (path below dist, bytes).\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    // Paths relative to CARGO_MANIFEST_DIR, resolved when the crate itself
    // compiles: clones at different paths share one target directory (CI
    // reuses it), and a build script judged fresh keeps its old output, so
    // an absolute path here would point into another (maybe deleted) clone.
    for (rel, _) in assets {
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/ui/dist/\", {rel:?}))),\n"
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ui_assets.rs");
    std::fs::write(out, code).expect("writing ui_assets.rs");
}
