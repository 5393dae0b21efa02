//! The waiting-list read model: one row per entry of a show's waiting list, with its
//! status and how many offers, claims and offer expiries it has seen. The
//! `waitlist_stats` view sums it per show.

use async_trait::async_trait;
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_domain::{DomainEvent, EntryId};
use boxoffice_store::RecordedEvent;

use super::inconsistent;
use crate::db::{Param, Tx};
use crate::orders::show_of;
use crate::rows::{Kind, Record, Rows, Table};
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "waitlist";
pub const VERSION: u32 = 1;

/// Keeps `waitlist_entries`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WaitlistProjection;

static ENTRIES: Table = Table {
    name: "waitlist_entries",
    columns: &[
        ("entry_id", Kind::Text),
        ("show_id", Kind::Text),
        ("user_id", Kind::Text),
        ("quantity", Kind::Int),
        ("section", Kind::OptText),
        ("status", Kind::Text),
        ("joined_at", Kind::Time),
        ("offers", Kind::Int),
        ("claims", Kind::Int),
        ("offer_expiries", Kind::Int),
        ("closed_at", Kind::OptTime),
    ],
    key: 1,
};

#[async_trait]
impl Projection for WaitlistProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        &["waitlist_entries"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(&WaitlistEvent::TYPES)
    }

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::new();
        for event in events {
            if let Some(DomainEvent::Waitlist(e)) = decode_wanted(event, &WaitlistEvent::TYPES)? {
                decoded.push((event, e));
            }
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let mut rows = Rows::new(&ENTRIES);
        rows.load(
            tx,
            decoded.iter().map(|(_, e)| vec![entry_of(e).to_string()]),
        )
        .await?;
        for (event, e) in decoded {
            apply_one(&mut rows, event, e)?;
        }
        rows.flush(tx).await?;
        Ok(())
    }
}

/// The entry an event is about.
fn entry_of(e: &WaitlistEvent) -> EntryId {
    match e {
        WaitlistEvent::WaitlistJoined { entry_id, .. }
        | WaitlistEvent::WaitlistOffered { entry_id, .. }
        | WaitlistEvent::WaitlistOfferClaimed { entry_id, .. }
        | WaitlistEvent::WaitlistOfferExpired { entry_id, .. }
        | WaitlistEvent::WaitlistLeft { entry_id } => *entry_id,
    }
}

fn apply_one(
    rows: &mut Rows,
    event: &RecordedEvent,
    e: WaitlistEvent,
) -> Result<(), ProjectionError> {
    let entry = entry_of(&e).to_string();
    // (statuses it may be in, new status, the counter it adds to, whether it closes)
    let (from, to, counter, closes, what): (&[&str], _, _, _, _) = match e {
        WaitlistEvent::WaitlistJoined {
            entry_id,
            user_id,
            quantity,
            section,
        } => {
            let added = rows.insert(Record::new(
                &ENTRIES,
                vec![
                    entry_id.to_string().into(),
                    show_of(event)?.to_string().into(),
                    user_id.to_string().into(),
                    i64::from(quantity).into(),
                    section.into(),
                    "waiting".into(),
                    event.recorded_at.into(),
                    Param::Int(0),
                    Param::Int(0),
                    Param::Int(0),
                    Param::OptTime(None),
                ],
            ));
            if !added {
                return Err(inconsistent(
                    event,
                    format!("waitlist entry {entry} joined twice"),
                ));
            }
            return Ok(());
        }
        WaitlistEvent::WaitlistOffered { .. } => (
            &["waiting"],
            "offered",
            Some("offers"),
            false,
            "offered to, but it is not waiting",
        ),
        WaitlistEvent::WaitlistOfferClaimed { .. } => (
            &["offered"],
            "claimed",
            Some("claims"),
            true,
            "claimed, but it has no open offer",
        ),
        WaitlistEvent::WaitlistOfferExpired { .. } => (
            &["offered"],
            "expired",
            Some("offer_expiries"),
            true,
            "offer expired, but it has no open offer",
        ),
        WaitlistEvent::WaitlistLeft { .. } => (
            &["waiting", "offered"],
            "left",
            None,
            true,
            "left, but it is closed",
        ),
    };
    let Some(row) = rows
        .get_mut(std::slice::from_ref(&entry))
        .filter(|r| from.contains(&r.text("status")))
    else {
        return Err(inconsistent(
            event,
            format!("waitlist entry {entry} {what}"),
        ));
    };
    row.set("status", to);
    if let Some(counter) = counter {
        let n = row.int(counter);
        row.set(counter, n + 1);
    }
    if closes {
        row.set("closed_at", event.recorded_at);
    }
    Ok(())
}
