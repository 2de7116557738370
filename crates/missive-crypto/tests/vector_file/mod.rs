//! The frozen-vector files of `tests/vectors/`, shared by `tests/vectors.rs`
//! and `tests/device_vectors.rs`: one `#` header line, then one `name hex`
//! line per vector, in the order the generator pushed them.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The path of a file in `tests/vectors/`.
pub(crate) fn vector_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
        .join(file)
}

/// Whether this run rewrites the files (`MISSIVE_REGENERATE_VECTORS=1`).
pub(crate) fn regenerating() -> bool {
    std::env::var("MISSIVE_REGENERATE_VECTORS").as_deref() == Ok("1")
}

/// Vectors in the order they were made.
pub(crate) struct Vectors {
    header: &'static str,
    entries: Vec<(String, Vec<u8>)>,
}

impl Vectors {
    /// An empty set whose file starts with `# {header}`.
    pub(crate) fn new(header: &'static str) -> Self {
        Self {
            header,
            entries: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, name: impl Into<String>, bytes: impl AsRef<[u8]>) {
        self.entries.push((name.into(), bytes.as_ref().to_vec()));
    }

    fn render(&self) -> String {
        let mut out = format!("# {}\n", self.header);
        for (name, bytes) in &self.entries {
            out.push_str(&format!("{name} {}\n", hex::encode(bytes)));
        }
        out
    }
}

/// The vectors of a file's text, by name.
pub(crate) fn parse(text: &str) -> BTreeMap<String, Vec<u8>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap();
            (name.to_string(), hex::decode(hex.trim()).unwrap())
        })
        .collect()
}

/// The vectors stored in `file`.
pub(crate) fn load(file: &str) -> BTreeMap<String, Vec<u8>> {
    parse(&std::fs::read_to_string(vector_path(file)).unwrap())
}

/// Rewrites `file` with `generated` when regenerating; otherwise checks that
/// the file holds exactly `generated`, byte for byte (`what` names the change
/// a difference means).
pub(crate) fn check_frozen(file: &str, generated: &Vectors, what: &str) {
    let generated = generated.render();
    if regenerating() {
        std::fs::write(vector_path(file), &generated).unwrap();
        println!("regenerated {}", vector_path(file).display());
        return;
    }
    let (frozen, generated) = (load(file), parse(&generated));
    for (name, bytes) in &generated {
        assert_eq!(
            frozen.get(name).map(hex::encode),
            Some(hex::encode(bytes)),
            "vector {name} changed: {what}"
        );
    }
    assert_eq!(frozen.len(), generated.len());
}
