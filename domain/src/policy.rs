//! Policies as pure functions: seat choice, the per-user cap, hold sizes, deadlines and
//! the waitlist's first-fit order.

use chrono::{DateTime, Utc};

use crate::show::Limits;

/// Seats (or GA places) one hold may take.
pub const SEATS_PER_HOLD_MIN: u32 = 1;
pub const SEATS_PER_HOLD_MAX: u32 = 10;
const _: () = assert!(SEATS_PER_HOLD_MIN <= SEATS_PER_HOLD_MAX);

/// Picks `quantity` adjacent available seats in one row: the lowest row (first in the
/// section's order) that has such a run, and in it the run whose centre is nearest the
/// row's middle (the lower-numbered run on a tie). `rows` lists each row's seats in
/// number order as opaque keys; `is_available` says which are free.
pub fn best_available<K: Copy>(
    rows: &[&[K]],
    quantity: usize,
    mut is_available: impl FnMut(K) -> bool,
) -> Option<Vec<K>> {
    if quantity == 0 {
        return None;
    }
    for row in rows {
        if row.len() < quantity {
            continue;
        }
        // Twice the distance from the row's middle, in seat positions, so it stays integral.
        let middle2 = row.len() as i64 - 1;
        let mut best: Option<(i64, usize)> = None;
        let mut run = 0usize;
        for (i, &seat) in row.iter().enumerate() {
            if is_available(seat) {
                run += 1;
            } else {
                run = 0;
            }
            if run >= quantity {
                let start = i + 1 - quantity;
                let centre2 = (start + i) as i64;
                let distance = (centre2 - middle2).abs();
                if best.is_none_or(|(d, _)| distance < d) {
                    best = Some((distance, start));
                }
            }
        }
        if let Some((_, start)) = best {
            return Some(row[start..start + quantity].to_vec());
        }
    }
    None
}

/// Why the cap refuses: what the user has and what they asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapExceeded {
    pub limit: u32,
    pub current: u32,
    pub requested: u32,
}

/// The per-user ticket cap: seats held, being paid for and bought, plus the request,
/// must not pass `max_tickets_per_user`.
pub fn check_ticket_cap(limits: &Limits, current: u32, requested: u32) -> Result<(), CapExceeded> {
    if current + requested > limits.max_tickets_per_user {
        Err(CapExceeded {
            limit: limits.max_tickets_per_user,
            current,
            requested,
        })
    } else {
        Ok(())
    }
}

pub fn quantity_in_range(quantity: u32) -> bool {
    (SEATS_PER_HOLD_MIN..=SEATS_PER_HOLD_MAX).contains(&quantity)
}

/// When a hold placed at `now` expires.
pub fn hold_expires_at(limits: &Limits, now: DateTime<Utc>) -> DateTime<Utc> {
    now + limits.hold_ttl()
}

/// When a waitlist offer made at `now` expires.
pub fn offer_expires_at(limits: &Limits, now: DateTime<Utc>) -> DateTime<Utc> {
    now + limits.waitlist_claim()
}

/// The deadline of a payment started at `now`: the provider must have answered by then,
/// or the payment is voided. It runs from the start of the payment, so a hold that is
/// about to expire still gets the full payment window.
pub fn payment_deadline(limits: &Limits, now: DateTime<Utc>) -> DateTime<Utc> {
    now + limits.payment_timeout()
}

/// First fit: the first candidate, in order, for which `fits` finds an allocation.
/// Used for the waitlist, where candidates are entries in order of joining.
pub fn first_fit<'a, C, A>(
    candidates: impl IntoIterator<Item = &'a C>,
    mut fits: impl FnMut(&C) -> Option<A>,
) -> Option<(&'a C, A)>
where
    C: 'a,
{
    candidates.into_iter().find_map(|c| fits(c).map(|a| (c, a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> Vec<usize> {
        (1..=n).collect()
    }

    #[test]
    fn best_available_prefers_the_middle_of_the_lowest_row() {
        let a = row(10);
        let b = row(10);
        let picked = best_available(&[&a, &b], 2, |_| true).unwrap();
        // Row of 10: middle between 5 and 6.
        assert_eq!(picked, vec![5, 6]);
        let picked = best_available(&[&a, &b], 3, |_| true).unwrap();
        // Runs 4-6 and 5-7 are equally near; the lower wins.
        assert_eq!(picked, vec![4, 5, 6]);
    }

    #[test]
    fn best_available_needs_adjacent_seats_in_one_row() {
        let a = row(6);
        let b = row(6);
        // Row A has 1,3,5 free: no two adjacent. Row B has 5,6 free.
        let free = |s: usize, row_b: bool| if row_b { s >= 5 } else { s % 2 == 1 };
        let rows: Vec<(bool, usize)> = a.iter().map(|&s| (false, s)).collect();
        let rows_b: Vec<(bool, usize)> = b.iter().map(|&s| (true, s)).collect();
        let picked = best_available(&[&rows, &rows_b], 2, |(is_b, s)| free(s, is_b)).unwrap();
        assert_eq!(picked, vec![(true, 5), (true, 6)]);
        assert_eq!(
            best_available(&[&rows, &rows_b], 3, |(is_b, s)| free(s, is_b)),
            None
        );
    }

    #[test]
    fn best_available_moves_off_centre_around_taken_seats() {
        let a = row(9);
        let picked = best_available(&[&a], 2, |s| ![4, 5, 6].contains(&s)).unwrap();
        // Middle is seat 5; 2-3 and 7-8 are equally near, the lower wins.
        assert_eq!(picked, vec![2, 3]);
    }

    #[test]
    fn the_cap_counts_what_the_user_has_plus_the_request() {
        let limits = Limits {
            max_tickets_per_user: 4,
            ..Limits::default()
        };
        assert_eq!(check_ticket_cap(&limits, 2, 2), Ok(()));
        assert_eq!(
            check_ticket_cap(&limits, 3, 2),
            Err(CapExceeded {
                limit: 4,
                current: 3,
                requested: 2
            })
        );
    }

    #[test]
    fn deadlines_add_the_limits() {
        let limits = Limits {
            hold_ttl_seconds: 300,
            payment_timeout_seconds: 120,
            waitlist_claim_seconds: 600,
            ..Limits::default()
        };
        let now: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            hold_expires_at(&limits, now).to_rfc3339(),
            "2027-01-01T00:05:00+00:00"
        );
        assert_eq!(
            payment_deadline(&limits, now).to_rfc3339(),
            "2027-01-01T00:02:00+00:00"
        );
        assert_eq!(
            offer_expires_at(&limits, now).to_rfc3339(),
            "2027-01-01T00:10:00+00:00"
        );
    }

    #[test]
    fn quantities_are_bounded() {
        assert!(!quantity_in_range(0));
        assert!(quantity_in_range(1));
        assert!(quantity_in_range(10));
        assert!(!quantity_in_range(11));
    }

    #[test]
    fn first_fit_takes_the_first_candidate_that_fits() {
        let wants = [5u32, 2, 1];
        let free = 2;
        let (picked, _) = first_fit(&wants, |&w| (w <= free).then_some(w)).unwrap();
        assert_eq!(*picked, 2);
    }
}
