//! Fuzz targets for every parser that reads untrusted bytes: the cluster config, a
//! repository's recipe, an artifact's manifest, an artifact's tar, and the state machine's
//! commands (as Raft carries and stores them).
//!
//! Each target is a function of bytes that returns `Err` when an invariant breaks (a panic
//! counts too): not only "does not crash", but what the parser promises, such as "a refused
//! command changes nothing" or "an unpacked tar wrote nothing outside its directory".
//!
//! The inputs come from proptest (stable Rust: `cargo fuzz` needs a nightly compiler and
//! libFuzzer): the corpus's seeds (`corpus/TARGET/`, kept in the repository), mutated, and
//! random bytes. `deploy-fuzz run` runs each target for a bounded time and saves any input
//! that breaks one into the corpus, so the tests replay it from then on.
//!
//! This crate depends on the parsers it exercises and on nothing that does I/O beyond a
//! temporary directory.

pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod targets;

pub use targets::{Target, TARGETS};

/// The corpus directory of the crate, as kept in the repository.
pub fn corpus_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("corpus")
}
