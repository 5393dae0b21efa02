//! What each test token does: when it settles, how, which webhooks it sends, and
//! whether it may be cancelled. Pure functions over an [`Intent`], so the rules read in
//! one place and are tested without a database or a clock.

use crate::provider::{
    EVENT_CANCELED, EVENT_PAYMENT_FAILED, EVENT_SUCCEEDED, Intent, IntentStatus, PaymentError,
};

/// How far in the past `tok_dup_visa`'s stale `payment_failed` event is dated. Well
/// inside the signature tolerance, so it verifies and must be rejected on its merits.
pub(crate) const STALE_EVENT_AGE_SECONDS: i64 = 5;

/// The gap between `tok_dup_visa`'s deliveries, so they arrive in the planned order.
pub(crate) const DUP_DELIVERY_SPACING_MS: i64 = 250;

/// How many times `tok_dup_visa`'s success event is delivered.
pub(crate) const DUP_SUCCESS_DELIVERIES: i64 = 3;

/// The test tokens. Anything not listed behaves as [`Behaviour::Declined`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// `tok_visa`: succeeds after the latency.
    Visa,
    /// `tok_declined` and any unknown token: declined after the latency.
    Declined,
    /// `tok_timeout`: never settles; cancellable.
    Timeout,
    /// `tok_late_visa`: captured just after the merchant's deadline; never cancellable.
    LateVisa,
    /// `tok_dup_visa`: succeeds; its webhook is duplicated and mixed with a stale failure.
    DupVisa,
}

impl Behaviour {
    pub(crate) fn of(payment_token: &str) -> Behaviour {
        match payment_token {
            "tok_visa" => Behaviour::Visa,
            "tok_timeout" => Behaviour::Timeout,
            "tok_late_visa" => Behaviour::LateVisa,
            "tok_dup_visa" => Behaviour::DupVisa,
            _ => Behaviour::Declined,
        }
    }
}

/// When an intent created at `now_ms` settles, or `None` if it never does by itself.
/// `latency_ms` already includes any jitter.
pub(crate) fn settle_at_ms(
    behaviour: Behaviour,
    latency_ms: u64,
    capture_deadline_ms: Option<i64>,
    now_ms: i64,
) -> Option<i64> {
    let latency_ms = i64::try_from(latency_ms).unwrap_or(i64::MAX);
    match behaviour {
        Behaviour::Visa | Behaviour::Declined | Behaviour::DupVisa => {
            Some(now_ms.saturating_add(latency_ms))
        }
        Behaviour::Timeout => None,
        Behaviour::LateVisa => Some(match capture_deadline_ms {
            Some(deadline_ms) => deadline_ms.saturating_add(1_000),
            None => now_ms.saturating_add(latency_ms.saturating_mul(3)),
        }),
    }
}

/// What a cancel request does to an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelDecision {
    /// Void it and send `payment_intent.canceled`.
    Cancel,
    /// Already void: answer 200 with the intent, send nothing.
    AlreadyCanceled,
    /// 400 `payment_intent_unexpected_state` with the intent.
    Refuse,
}

pub(crate) fn decide_cancel(intent: &Intent) -> CancelDecision {
    // tok_late_visa plays a provider that captured before the cancel arrived but reports
    // it late: every cancel is refused, even while the intent still reads `processing`.
    if Behaviour::of(&intent.payment_token) == Behaviour::LateVisa {
        return CancelDecision::Refuse;
    }
    match intent.status {
        IntentStatus::Processing | IntentStatus::RequiresPaymentMethod => CancelDecision::Cancel,
        IntentStatus::Canceled => CancelDecision::AlreadyCanceled,
        IntentStatus::Succeeded => CancelDecision::Refuse,
    }
}

/// One delivery of an event, `delay_ms` after the event was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedDelivery {
    pub delay_ms: i64,
    /// A fixed signature timestamp (the stale replay); `None` signs at delivery time.
    pub signature_timestamp: Option<i64>,
}

/// A webhook event to record, with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedEvent {
    pub event_type: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The intent as the event shows it.
    pub object: Intent,
    pub deliveries: Vec<PlannedDelivery>,
}

impl PlannedEvent {
    fn delivered_once(event_type: &'static str, created: i64, object: Intent) -> PlannedEvent {
        PlannedEvent {
            event_type,
            created,
            object,
            deliveries: vec![PlannedDelivery {
                delay_ms: 0,
                signature_timestamp: None,
            }],
        }
    }
}

/// The event announcing that `intent` (already in its cancelled state) was voided.
pub(crate) fn canceled_event(intent: &Intent, now_unix: i64) -> PlannedEvent {
    assert_eq!(intent.status, IntentStatus::Canceled);
    PlannedEvent::delivered_once(EVENT_CANCELED, now_unix, intent.clone())
}

fn card_declined() -> PaymentError {
    PaymentError {
        code: "card_declined".to_owned(),
        message: "Your card was declined.".to_owned(),
    }
}

/// Settles a `processing` intent: its final state and the events that announce it.
pub(crate) fn settle(intent: &Intent, now_unix: i64) -> (Intent, Vec<PlannedEvent>) {
    assert_eq!(intent.status, IntentStatus::Processing);
    let behaviour = Behaviour::of(&intent.payment_token);
    let mut settled = intent.clone();
    match behaviour {
        Behaviour::Visa | Behaviour::LateVisa => {
            settled.status = IntentStatus::Succeeded;
            let event = PlannedEvent::delivered_once(EVENT_SUCCEEDED, now_unix, settled.clone());
            (settled, vec![event])
        }
        // tok_timeout is never given a settle time, so it only lands here if someone
        // forces it; failing is the safe reading of "never captured".
        Behaviour::Declined | Behaviour::Timeout => {
            settled.status = IntentStatus::RequiresPaymentMethod;
            settled.last_payment_error = Some(card_declined());
            let event =
                PlannedEvent::delivered_once(EVENT_PAYMENT_FAILED, now_unix, settled.clone());
            (settled, vec![event])
        }
        Behaviour::DupVisa => {
            settled.status = IntentStatus::Succeeded;
            // Deliveries interleave: success, stale failure, success, success.
            let success = PlannedEvent {
                event_type: EVENT_SUCCEEDED,
                created: now_unix,
                object: settled.clone(),
                deliveries: (0..DUP_SUCCESS_DELIVERIES)
                    .map(|n| PlannedDelivery {
                        delay_ms: if n == 0 {
                            0
                        } else {
                            (n + 1) * DUP_DELIVERY_SPACING_MS
                        },
                        signature_timestamp: None,
                    })
                    .collect(),
            };
            let stale_at = now_unix - STALE_EVENT_AGE_SECONDS;
            let mut failed = intent.clone();
            failed.status = IntentStatus::RequiresPaymentMethod;
            failed.last_payment_error = Some(card_declined());
            let stale = PlannedEvent {
                event_type: EVENT_PAYMENT_FAILED,
                created: stale_at,
                object: failed,
                deliveries: vec![PlannedDelivery {
                    delay_ms: DUP_DELIVERY_SPACING_MS,
                    signature_timestamp: Some(stale_at),
                }],
            };
            (settled, vec![success, stale])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::TOLERANCE_SECONDS;
    use std::collections::BTreeMap;

    const _: () = assert!(STALE_EVENT_AGE_SECONDS < TOLERANCE_SECONDS);

    fn intent(token: &str, status: IntentStatus) -> Intent {
        Intent {
            id: "pi_1".into(),
            status,
            amount: 1000,
            currency: "eur".into(),
            payment_token: token.into(),
            metadata: BTreeMap::new(),
            created: 100,
            last_payment_error: None,
        }
    }

    #[test]
    fn tokens_map_to_behaviours_and_unknown_ones_decline() {
        assert_eq!(Behaviour::of("tok_visa"), Behaviour::Visa);
        assert_eq!(Behaviour::of("tok_declined"), Behaviour::Declined);
        assert_eq!(Behaviour::of("tok_timeout"), Behaviour::Timeout);
        assert_eq!(Behaviour::of("tok_late_visa"), Behaviour::LateVisa);
        assert_eq!(Behaviour::of("tok_dup_visa"), Behaviour::DupVisa);
        assert_eq!(Behaviour::of("tok_mastercard"), Behaviour::Declined);
        assert_eq!(Behaviour::of(""), Behaviour::Declined);
    }

    #[test]
    fn settlement_times_follow_the_token() {
        assert_eq!(settle_at_ms(Behaviour::Visa, 200, None, 1_000), Some(1_200));
        assert_eq!(
            settle_at_ms(Behaviour::Declined, 200, None, 1_000),
            Some(1_200)
        );
        assert_eq!(
            settle_at_ms(Behaviour::DupVisa, 200, Some(9), 1_000),
            Some(1_200)
        );
        assert_eq!(settle_at_ms(Behaviour::Timeout, 200, None, 1_000), None);
        assert_eq!(
            settle_at_ms(Behaviour::LateVisa, 200, Some(5_000), 1_000),
            Some(6_000)
        );
        assert_eq!(
            settle_at_ms(Behaviour::LateVisa, 200, None, 1_000),
            Some(1_600)
        );
        assert_eq!(
            settle_at_ms(Behaviour::Visa, u64::MAX, None, 1_000),
            Some(i64::MAX)
        );
    }

    #[test]
    fn cancel_rules() {
        use CancelDecision::*;
        use IntentStatus::*;
        for (token, status, expected) in [
            ("tok_timeout", Processing, Cancel),
            ("tok_visa", Processing, Cancel),
            ("tok_declined", RequiresPaymentMethod, Cancel),
            ("tok_visa", Canceled, AlreadyCanceled),
            ("tok_visa", Succeeded, Refuse),
            ("tok_dup_visa", Succeeded, Refuse),
            ("tok_late_visa", Processing, Refuse),
            ("tok_late_visa", Succeeded, Refuse),
        ] {
            assert_eq!(
                decide_cancel(&intent(token, status)),
                expected,
                "{token} {status}"
            );
        }
    }

    #[test]
    fn visa_succeeds_with_one_delivery() {
        let (settled, events) = settle(&intent("tok_visa", IntentStatus::Processing), 500);
        assert_eq!(settled.status, IntentStatus::Succeeded);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, EVENT_SUCCEEDED);
        assert_eq!(events[0].object, settled);
        assert_eq!(events[0].deliveries.len(), 1);
    }

    #[test]
    fn unknown_tokens_are_declined() {
        let (settled, events) = settle(&intent("tok_unknown", IntentStatus::Processing), 500);
        assert_eq!(settled.status, IntentStatus::RequiresPaymentMethod);
        assert_eq!(
            settled.last_payment_error.as_ref().unwrap().code,
            "card_declined"
        );
        assert_eq!(events[0].event_type, EVENT_PAYMENT_FAILED);
    }

    #[test]
    fn dup_visa_interleaves_a_stale_failure_between_repeated_successes() {
        let (settled, events) = settle(&intent("tok_dup_visa", IntentStatus::Processing), 500);
        assert_eq!(settled.status, IntentStatus::Succeeded);
        let mut timeline: Vec<(i64, &str, i64)> = events
            .iter()
            .flat_map(|e| {
                e.deliveries.iter().map(move |d| {
                    (
                        d.delay_ms,
                        e.event_type,
                        d.signature_timestamp.unwrap_or(500),
                    )
                })
            })
            .collect();
        timeline.sort();
        assert_eq!(
            timeline,
            vec![
                (0, EVENT_SUCCEEDED, 500),
                (250, EVENT_PAYMENT_FAILED, 495),
                (500, EVENT_SUCCEEDED, 500),
                (750, EVENT_SUCCEEDED, 500),
            ]
        );
        let stale = &events[1];
        assert_eq!(stale.created, 495);
        assert_eq!(stale.object.status, IntentStatus::RequiresPaymentMethod);
    }
}
