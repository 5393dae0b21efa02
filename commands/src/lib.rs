//! The write side: one single-writer actor per show, group commit, and hold timers.
//!
//! Every command for a show goes to that show's actor through a bounded mailbox. The
//! actor takes every command waiting (up to a bound), decides each against the state the
//! earlier ones left, appends all resulting events in one atomic append, and only then
//! answers. If the append fails nothing a caller was told is wrong: on a conflict the
//! actor reloads from the store and decides again; on a store failure it answers 503 and
//! reloads before its next batch. Correctness never rests on there being one actor per
//! show: the store's expected versions refuse a stale writer.

//!
//! With several nodes on one PostgreSQL ([`cluster`]), a show's actor runs only on the
//! node that holds the show's lease, and every append it makes is fenced by the lease's
//! epoch, so a node that lost the lease cannot write even if its versions match.

mod actor;
pub mod cluster;
mod engine;

pub use cluster::{Cluster, ClusterConfig};
pub use engine::{CommandMeta, Engine, EngineConfig, EngineError, EngineStats, Outcome};
