//! Read models for analysts: SQL tables in the event log's database, one projection per
//! concern, each with its own checkpoint (`migrations/*/0006_read_models.sql` holds the
//! tables and the views over them).
//!
//! - [`seat_map`]: the show catalogue, one row per seat and one per GA section.
//! - [`reservations`]: one row per reservation through its life (the hold funnel is a
//!   view over it).
//! - [`sales`]: tickets and revenue per show, tier, section and hour.
//! - [`waitlist`]: one row per waiting-list entry (`waitlist_stats` is a view over it).
//! - [`audit`]: every event with its actor, correlation id and a readable summary.
//! - [`view`]: [`SalesView`], the per-show sales report the API serves.
//!
//! Like the orders projection these are strict: an event that does not fit the rows
//! (a seat held that the show never had, a reservation confirmed that was never placed)
//! stops the projection with [`ProjectionError::Inconsistent`] instead of being skipped.

use boxoffice_store::RecordedEvent;
use chrono::{DateTime, Timelike, Utc};

use crate::runtime::ProjectionError;

pub mod audit;
pub mod reservations;
pub mod sales;
pub mod seat_map;
pub mod view;
pub mod waitlist;

pub use view::{HoldStats, SalesLine, SalesView, ShowSales, WaitlistStats};

pub(crate) fn inconsistent(event: &RecordedEvent, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::Inconsistent {
        position: event.position,
        reason: reason.into(),
    }
}

/// The start of the UTC hour holding `t`: the `sales` table's time bucket.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("the start of an hour exists in UTC")
}

/// Splits a seat id `{section}-{row}-{number}` (labels never contain `-`).
pub fn split_seat_id(seat_id: &str) -> Option<(&str, &str, u32)> {
    let mut parts = seat_id.split('-');
    let (section, row, number) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || section.is_empty() || row.is_empty() {
        return None;
    }
    Some((section, row, number.parse().ok()?))
}

/// Splits `amount` over `weights` in proportion, the remainder going to the first share,
/// so the shares always add up to `amount`. With all weights zero the first takes it all.
pub fn split_amount(amount: i64, weights: &[i64]) -> Vec<i64> {
    assert!(!weights.is_empty(), "nothing to split over");
    assert!(weights.iter().all(|w| *w >= 0), "negative weight");
    let total: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    let mut shares: Vec<i64> = if total == 0 {
        vec![0; weights.len()]
    } else {
        weights
            .iter()
            .map(|w| {
                i64::try_from(i128::from(amount) * i128::from(*w) / total)
                    .expect("a share is at most the amount")
            })
            .collect()
    };
    let rest = amount - shares.iter().sum::<i64>();
    shares[0] += rest;
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_split_in_proportion_and_add_up() {
        assert_eq!(split_amount(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(
            split_amount(24_000, &[12_000, 12_000]),
            vec![12_000, 12_000]
        );
        assert_eq!(split_amount(5, &[0, 0]), vec![5, 0]);
        assert_eq!(split_amount(0, &[3]), vec![0]);
    }

    #[test]
    fn seat_ids_split_into_section_row_and_number() {
        assert_eq!(split_seat_id("A-R1-12"), Some(("A", "R1", 12)));
        assert_eq!(split_seat_id("A-R1"), None);
        assert_eq!(split_seat_id("A-R1-x"), None);
        assert_eq!(split_seat_id("A-R1-1-2"), None);
    }

    #[test]
    fn hours_truncate() {
        let t: DateTime<Utc> = "2027-05-01T20:41:07.123Z".parse().unwrap();
        assert_eq!(
            hour_of(t),
            "2027-05-01T20:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
