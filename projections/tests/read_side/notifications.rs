//! The notifications read model: each kind goes to the right user with its data, ids come
//! from the causing event, and lists page newest first.

use std::collections::HashSet;

use boxoffice_domain::{EntryId, OrderId, PaymentId, ReservationId};
use boxoffice_projections::notifications::notification_id;
use boxoffice_projections::{Notification, NotificationKind, NotifyConfig, ViewError};
use serde_json::json;

use crate::support::*;

async fn all_for(
    view: &boxoffice_projections::NotificationsView,
    user: boxoffice_domain::UserId,
) -> Vec<Notification> {
    let (page, next) = view.list(user, None, 100).await.unwrap();
    assert_eq!(next, None);
    page
}

#[tokio::test]
async fn a_waitlist_offer_notifies_the_entrys_user_and_every_kind_is_made() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        let (show, early, waiter) = (show(), user(), user());

        // `early` holds the seat; `waiter` joins the waiting list.
        let rsv = ReservationId(new_id());
        log.append(
            show,
            &[
                placed(rsv, early, &["S-R0-1"], 6_000, None),
                seat_held("S-R0-1", rsv),
            ],
        )
        .await;
        let entry = EntryId(new_id());
        log.append(show, &[waitlist_joined(entry, waiter, 1)]).await;
        // The hold expires; the seat goes to the waiting list as an offer.
        let offer_rsv = ReservationId(entry.0);
        let offered = waitlist_offered(entry, offer_rsv, &["S-R0-1"]);
        let expiry_position = log
            .append(
                show,
                &[
                    hold_expired(rsv),
                    placed(offer_rsv, waiter, &["S-R0-1"], 6_000, Some(entry)),
                    offered.clone(),
                ],
            )
            .await;
        assert!(
            read.notifications_projector()
                .wait_for(expiry_position, WAIT)
                .await
        );

        let mine = all_for(read.notifications(), waiter).await;
        assert_eq!(mine.len(), 1, "{}: {mine:?}", env.backend);
        let offer = &mine[0];
        assert_eq!(offer.kind, NotificationKind::WaitlistOffer);
        assert_eq!(offer.user_id, waiter);
        let stored = env.store.read_all(expiry_position - 1, 1).await.unwrap();
        assert_eq!(stored[0].event_type, "WaitlistOffered");
        assert_eq!(offer.id, notification_id(&stored[0]));
        assert_eq!(offer.created_at, stored[0].recorded_at);
        let boxoffice_domain::DomainEvent::Waitlist(
            boxoffice_domain::waitlist::WaitlistEvent::WaitlistOffered { expires_at, .. },
        ) = offered
        else {
            unreachable!()
        };
        assert_eq!(
            offer.data,
            json!({
                "show_id": show,
                "entry_id": entry,
                "reservation_id": offer_rsv,
                "seats": ["S-R0-1"],
                "section": null,
                "quantity": 1,
                "expires_at": expires_at,
            })
        );
        let theirs = all_for(read.notifications(), early).await;
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0].kind, NotificationKind::HoldExpired);
        assert_eq!(theirs[0].data["from_waitlist_offer"], json!(false));

        // The offer expires too: that hold came from the waiting list.
        let position = log.append(show, &[hold_expired(offer_rsv)]).await;
        assert!(
            read.notifications_projector()
                .wait_for(position, WAIT)
                .await
        );
        let mine = all_for(read.notifications(), waiter).await;
        assert_eq!(mine[0].kind, NotificationKind::HoldExpired);
        assert_eq!(mine[0].data["from_waitlist_offer"], json!(true));
        assert_eq!(mine[0].data["entry_id"], json!(entry));

        // A purchase, a refund, a declined payment and a voided one, all for `early`.
        let purchase = log.buy(show, early, &["S-R0-2"]).await;
        log.append(
            show,
            &[refund_issued(
                purchase.reservation,
                purchase.order,
                purchase.total,
            )],
        )
        .await;
        let declined = ReservationId(new_id());
        let declined_pay = PaymentId(new_id());
        log.append(show, &[placed(declined, early, &["S-R0-3"], 6_000, None)])
            .await;
        log.append(show, &[payment_started(declined, declined_pay)])
            .await;
        log.append(show, &[payment_failed(declined, declined_pay)])
            .await;
        let voided = ReservationId(new_id());
        let voided_pay = PaymentId(new_id());
        log.append(show, &[placed(voided, early, &["S-R0-4"], 6_000, None)])
            .await;
        log.append(show, &[payment_started(voided, voided_pay)])
            .await;
        let last = log
            .append(show, &[payment_timed_out(voided, voided_pay)])
            .await;
        assert!(read.notifications_projector().wait_for(last, WAIT).await);

        let theirs = all_for(read.notifications(), early).await;
        let kinds: Vec<NotificationKind> = theirs.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [
                NotificationKind::PaymentTimedOut,
                NotificationKind::PaymentFailed,
                NotificationKind::OrderRefunded,
                NotificationKind::OrderConfirmed,
                NotificationKind::HoldExpired,
            ],
            "{}: newest first",
            env.backend
        );
        assert_eq!(theirs[0].data["payment_id"], json!(voided_pay));
        assert_eq!(theirs[1].data["reason"], json!("card_declined"));
        assert_eq!(
            theirs[2].data["amount"],
            json!({"amount": "60.00", "currency": "EUR"})
        );
        assert_eq!(
            theirs[3].data,
            json!({
                "show_id": show,
                "reservation_id": purchase.reservation,
                "order_id": purchase.order,
                "ticket_count": 1,
            })
        );
        // Every id is unique and made from its event.
        let ids: HashSet<&str> = theirs.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids.len(), theirs.len());
        assert!(theirs.iter().all(|n| n.id.starts_with("ntf_")));
        // No outbox rows without channels.
        assert_eq!(
            env.count("SELECT count(*) AS n FROM notification_outbox", &[])
                .await,
            0
        );

        read.shutdown().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn notification_lists_page_newest_first_and_return_every_row_once() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        let (show, buyer, other) = (show(), user(), user());
        let mut orders: Vec<OrderId> = Vec::new();
        let mut last = 0;
        for i in 0..17 {
            let who = if i % 4 == 3 { other } else { buyer };
            let seat = format!("S-R0-{i}");
            let purchase = log.buy(show, who, &[seat.as_str()]).await;
            if who == buyer {
                orders.push(purchase.order);
            }
            last = purchase.position;
        }
        assert!(read.notifications_projector().wait_for(last, WAIT).await);
        let newest_first: Vec<String> = orders.iter().rev().map(|o| o.to_string()).collect();
        for limit in [1, 3, 13, 100] {
            let mut listed = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let (page, next) = read
                    .notifications()
                    .list(buyer, cursor.as_deref(), limit)
                    .await
                    .unwrap();
                listed.extend(
                    page.iter()
                        .map(|n| n.data["order_id"].as_str().unwrap().to_owned()),
                );
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
                assert!(listed.len() <= orders.len(), "pagination runs past the end");
            }
            assert_eq!(listed, newest_first, "{}: limit {limit}", env.backend);
        }
        assert!(matches!(
            read.notifications().list(buyer, Some("00"), 5).await,
            Err(ViewError::InvalidCursor)
        ));
        read.shutdown().await;
        env.cleanup().await;
    }
}
