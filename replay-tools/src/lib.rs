//! `boxctl`: the auditors' and support staff's tools over the Boxoffice event log.
//!
//! Everything here reads the log through [`boxoffice_store::EventStore`] and rebuilds
//! what it needs with the domain's own `apply`, so what `boxctl` shows is what the log
//! says, not what a read model remembers. Subcommands:
//!
//! - [`replay`]: a stream's or a show's history, one readable line per event.
//! - [`seatmap`]: a show's seat map as it was at a position or time (time travel).
//! - [`verify`]: the rules of `EVENTS.md` checked over the whole log or one show.
//! - [`export`]: orders, tickets (read models) or events (the log) as CSV.
//! - [`reconcile`]: payments, holds and notifications left half done, found and (with
//!   `--fix`) finished through the normal write path.

pub mod export;
pub mod point;
pub mod progress;
pub mod reconcile;
pub mod replay;
pub mod seatmap;
pub mod summary;
pub mod verify;

/// Events read per page from the store: well below the store's largest read.
pub const READ_PAGE_EVENTS: usize = 10_000;
const _: () = assert!(READ_PAGE_EVENTS <= boxoffice_store::READ_LIMIT_MAX);

/// The stored event as JSON, for `--json` outputs and the events export.
pub fn event_json(e: &boxoffice_store::RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "position": e.position,
        "partition_key": e.partition_key,
        "stream_id": e.stream_id,
        "version": e.version,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "payload": e.payload,
        "metadata": e.metadata,
        "recorded_at": e.recorded_at,
    })
}
