//! The build worker (`deployd worker`).
//!
//! A worker long-polls the global leader for a build, holds its lease while it works, and
//! reports the result with the attempt number it was given, so a worker that lost its lease
//! cannot decide the build. For each attempt it:
//!
//! 1. fetches exactly the commit ([`git`]): a bare mirror per repository, fetched only when
//!    the commit is missing, then `git archive` of that commit into a scratch directory;
//! 2. reads the recipe (`deploy.toml`);
//! 3. runs the build command ([`exec`]) in its own process group, with a clean environment,
//!    a timeout and a log cap, streaming the log into the region's store ([`logs`]);
//! 4. packs the outputs into chunks and a manifest in the region's store.
//!
//! It depends on the artifact crate and the generated API, never on the coordinator.

pub mod exec;
pub mod git;
pub mod logs;
mod run;
pub mod sandbox;

pub use run::{Worker, WorkerOptions, WorkerStats};
