//! `boxctl replay`: a stream's or a show's history as it happened, one line per event.

use std::io::Write;

use anyhow::Context;
use boxoffice_domain::DomainEvent;
use boxoffice_store::{EventStore, RecordedEvent};

use crate::point::Point;
use crate::summary::summarize;
use crate::{READ_PAGE_EVENTS, event_json, progress};

/// What to replay.
#[derive(Debug, Clone)]
pub enum Target {
    /// One stream: `seat-…`, `reservation-…`, `show-…`, `pool-…`, `waitlist-…`.
    Stream(String),
    /// Every stream of one show, in log order.
    Show(String),
}

/// One readable line: position, time, stream, version, type, actor, summary.
pub fn line(e: &RecordedEvent) -> String {
    let summary = match DomainEvent::decode(&e.event_type, e.schema_version, &e.payload) {
        Ok(event) => summarize(&event),
        Err(err) => format!("(does not decode: {err})"),
    };
    format!(
        "{:>10}  {}  {} v{}  {}  [{}]  {}",
        e.position,
        e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        e.stream_id,
        e.version,
        e.event_type,
        e.metadata.actor,
        summary
    )
}

/// Reads the target's events up to `until` and writes them to `out`, readable or as
/// JSON lines. Returns how many were written.
pub async fn run(
    store: &dyn EventStore,
    target: &Target,
    until: Option<Point>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut written = 0;
    let mut emit = |e: &RecordedEvent, out: &mut dyn Write| -> anyhow::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, &event_json(e))?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", line(e))?;
        }
        written += 1;
        Ok(())
    };
    match target {
        Target::Stream(stream) => {
            let events = store
                .read_stream(stream, 0)
                .await
                .with_context(|| format!("reading stream {stream}"))?;
            if events.is_empty() {
                anyhow::bail!("stream {stream} has no events");
            }
            for e in events
                .iter()
                .take_while(|e| until.is_none_or(|p| p.includes(e)))
            {
                emit(e, out)?;
            }
        }
        Target::Show(show) => {
            let bar = progress::bar(None, json, "replaying");
            let mut after = 0;
            let mut seen = false;
            'pages: loop {
                let page = store
                    .read_partition(show, after, READ_PAGE_EVENTS)
                    .await
                    .with_context(|| format!("reading show {show}"))?;
                let Some(last) = page.last() else { break };
                after = last.position;
                for e in &page {
                    seen = true;
                    if until.is_some_and(|p| !p.includes(e)) {
                        break 'pages;
                    }
                    emit(e, out)?;
                    bar.inc(1);
                }
            }
            bar.finish_and_clear();
            if !seen {
                anyhow::bail!("show {show} has no events");
            }
        }
    }
    out.flush()?;
    Ok(written)
}
