//! The waiting-list read model: one row per entry of a show's waiting list, with its
//! status and how many offers, claims and offer expiries it has seen. The
//! `waitlist_stats` view sums it per show.

use async_trait::async_trait;
use boxoffice_domain::DomainEvent;
use boxoffice_domain::waitlist::WaitlistEvent;
use boxoffice_store::RecordedEvent;

use super::expect_one;
use crate::db::Tx;
use crate::orders::show_of;
use crate::runtime::{Projection, ProjectionError, decode_wanted};

pub const NAME: &str = "waitlist";
pub const VERSION: u32 = 1;

/// Keeps `waitlist_entries`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WaitlistProjection;

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

    async fn apply(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if let Some(DomainEvent::Waitlist(e)) = decode_wanted(event, &WaitlistEvent::TYPES)? {
                apply_one(tx, event, e).await?;
            }
        }
        Ok(())
    }
}

async fn apply_one(
    tx: &mut Tx,
    event: &RecordedEvent,
    e: WaitlistEvent,
) -> Result<(), ProjectionError> {
    let (sql, entry, what) = match e {
        WaitlistEvent::WaitlistJoined {
            entry_id,
            user_id,
            quantity,
            section,
        } => {
            tx.execute(
                "INSERT INTO waitlist_entries (entry_id, show_id, user_id, quantity, section, status,
                     joined_at, offers, claims, offer_expiries, closed_at)
                 VALUES ($1, $2, $3, $4, $5, 'waiting', $6, 0, 0, 0, NULL)",
                &[
                    entry_id.to_string().into(),
                    show_of(event)?.to_string().into(),
                    user_id.to_string().into(),
                    i64::from(quantity).into(),
                    section.into(),
                    event.recorded_at.into(),
                ],
            )
            .await?;
            return Ok(());
        }
        WaitlistEvent::WaitlistOffered { entry_id, .. } => (
            "UPDATE waitlist_entries SET status = 'offered', offers = offers + 1
             WHERE entry_id = $1 AND status = 'waiting'",
            entry_id,
            "offered to, but it is not waiting",
        ),
        WaitlistEvent::WaitlistOfferClaimed { entry_id, .. } => (
            "UPDATE waitlist_entries SET status = 'claimed', claims = claims + 1, closed_at = $2
             WHERE entry_id = $1 AND status = 'offered'",
            entry_id,
            "claimed, but it has no open offer",
        ),
        WaitlistEvent::WaitlistOfferExpired { entry_id, .. } => (
            "UPDATE waitlist_entries SET status = 'expired', offer_expiries = offer_expiries + 1,
                 closed_at = $2
             WHERE entry_id = $1 AND status = 'offered'",
            entry_id,
            "offer expired, but it has no open offer",
        ),
        WaitlistEvent::WaitlistLeft { entry_id } => (
            "UPDATE waitlist_entries SET status = 'left', closed_at = $2
             WHERE entry_id = $1 AND status IN ('waiting', 'offered')",
            entry_id,
            "left, but it is closed",
        ),
    };
    // Only the closing updates record a time.
    let mut params = vec![entry.to_string().into()];
    if sql.contains("$2") {
        params.push(event.recorded_at.into());
    }
    let updated = tx.execute(sql, &params).await?;
    expect_one(event, updated, || format!("waitlist entry {entry} {what}"))
}
