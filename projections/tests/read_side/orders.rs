//! The orders read model: orders appear with their tickets after capture and issue, turn
//! refunded after a refund, and list with cursors.

use std::collections::HashSet;

use boxoffice_domain::{Minor, OrderId, PaymentId, ReservationId};
use boxoffice_projections::{NotifyConfig, OrderFilter, OrderStatus, ViewError};

use crate::support::*;

#[tokio::test]
async fn orders_appear_after_capture_and_issue_and_turn_refunded() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        let (show, buyer) = (show(), user());
        let rsv = ReservationId(new_id());
        let pay = PaymentId(new_id());
        let order = OrderId(new_id());
        let seats = ["S-R0-1", "S-R0-2"];

        log.append(
            show,
            &[
                placed(rsv, buyer, &seats, 24_000, None),
                seat_held(seats[0], rsv),
                seat_held(seats[1], rsv),
            ],
        )
        .await;
        log.append(show, &[payment_started(rsv, pay)]).await;
        let captured = log
            .append(show, &[payment_captured(rsv, pay, 24_000)])
            .await;
        assert!(read.orders_projector().wait_for(captured, WAIT).await);
        assert_eq!(
            read.orders().get(order).await.unwrap(),
            None,
            "{}: no order before tickets are issued",
            env.backend
        );

        let issued_event = tickets_issued(rsv, order, &seats);
        let issued = log.append(show, std::slice::from_ref(&issued_event)).await;
        assert!(read.orders_projector().wait_for(issued, WAIT).await);
        let got = read.orders().get(order).await.unwrap().expect("the order");
        assert_eq!(got.order_id, order);
        assert_eq!(got.reservation_id, rsv);
        assert_eq!(got.show_id, show);
        assert_eq!(got.user_id, buyer);
        assert_eq!(got.status, OrderStatus::Paid);
        assert_eq!(got.total, Minor(24_000));
        assert_eq!(got.currency, "EUR");
        assert_eq!(got.refunded_at, None);
        // paid_at is the capture's recorded_at.
        let capture = env.store.read_all(captured - 1, 1).await.unwrap();
        assert_eq!(capture[0].event_type, "PaymentCaptured");
        assert_eq!(got.paid_at, capture[0].recorded_at);
        let boxoffice_domain::DomainEvent::Reservation(
            boxoffice_domain::reservation::ReservationEvent::TicketsIssued { tickets, .. },
        ) = issued_event
        else {
            unreachable!()
        };
        assert_eq!(got.tickets.len(), 2);
        for (row, ticket) in got.tickets.iter().zip(&tickets) {
            assert_eq!(row.ticket_id, ticket.ticket_id);
            assert_eq!(row.seat, ticket.seat);
            assert_eq!(row.section, None);
            assert_eq!(row.code, ticket.code);
        }
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["status"], "paid");
        assert_eq!(json["order_id"], order.to_string());

        let refunded = log.append(show, &[refund_issued(rsv, order, 24_000)]).await;
        assert!(read.orders_projector().wait_for(refunded, WAIT).await);
        let got = read.orders().get(order).await.unwrap().expect("the order");
        assert_eq!(got.status, OrderStatus::Refunded);
        let refund = env.store.read_all(refunded - 1, 1).await.unwrap();
        assert_eq!(got.refunded_at, Some(refund[0].recorded_at));
        assert_eq!(got.tickets.len(), 2, "a refund keeps the ticket history");

        read.shutdown().await;
        env.cleanup().await;
    }
}

/// Follows cursors to the end; returns the ids in the order listed.
async fn all_orders(
    view: &boxoffice_projections::OrdersView,
    filter: &OrderFilter,
    limit: usize,
) -> Vec<OrderId> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let (page, next) = view.list(filter, cursor.as_deref(), limit).await.unwrap();
        assert!(page.len() <= limit);
        ids.extend(page.iter().map(|o| o.order_id));
        match next {
            Some(next) => {
                assert_eq!(page.len(), limit, "only a full page has a next cursor");
                cursor = Some(next);
            }
            None => return ids,
        }
    }
    panic!("pagination did not end");
}

#[tokio::test]
async fn list_pagination_with_cursors_returns_every_row_once() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        let (show_a, show_b) = (show(), show());
        let (alice, bob) = (user(), user());
        let mut bought = Vec::new();
        for i in 0..23 {
            let (show, buyer) = match i % 3 {
                0 => (show_a, alice),
                1 => (show_a, bob),
                _ => (show_b, alice),
            };
            let seat = format!("S-R0-{i}");
            let purchase = log.buy(show, buyer, &[seat.as_str()]).await;
            bought.push((purchase.order, show, buyer, purchase.position));
        }
        let head = bought.last().unwrap().3;
        assert!(read.orders_projector().wait_for(head, WAIT).await);

        // Newest first: the reverse of the order of purchase.
        let newest_first: Vec<OrderId> = bought.iter().rev().map(|b| b.0).collect();
        for limit in [1, 5, 7, 23, 100] {
            let listed = all_orders(read.orders(), &OrderFilter::default(), limit).await;
            assert_eq!(listed, newest_first, "{}: limit {limit}", env.backend);
        }
        let filters = [
            OrderFilter {
                user_id: Some(alice),
                show_id: None,
            },
            OrderFilter {
                user_id: None,
                show_id: Some(show_a),
            },
            OrderFilter {
                user_id: Some(alice),
                show_id: Some(show_b),
            },
        ];
        for filter in filters {
            let expected: Vec<OrderId> = bought
                .iter()
                .rev()
                .filter(|(_, show, buyer, _)| {
                    filter.user_id.is_none_or(|u| u == *buyer)
                        && filter.show_id.is_none_or(|s| s == *show)
                })
                .map(|b| b.0)
                .collect();
            let listed = all_orders(read.orders(), &filter, 4).await;
            assert_eq!(listed, expected, "{}: {filter:?}", env.backend);
            let unique: HashSet<_> = listed.iter().collect();
            assert_eq!(unique.len(), listed.len());
        }

        // A page fetched, then more orders: the next page still continues where it left.
        let (first, next) = read
            .orders()
            .list(&OrderFilter::default(), None, 10)
            .await
            .unwrap();
        let later = log.buy(show_a, bob, &["S-R1-1"]).await;
        assert!(read.orders_projector().wait_for(later.position, WAIT).await);
        let (second, _) = read
            .orders()
            .list(&OrderFilter::default(), next.as_deref(), 10)
            .await
            .unwrap();
        let ids: Vec<OrderId> = first.iter().chain(&second).map(|o| o.order_id).collect();
        assert_eq!(ids, newest_first[..20].to_vec());

        assert!(matches!(
            read.orders()
                .list(&OrderFilter::default(), Some("not-a-cursor"), 5)
                .await,
            Err(ViewError::InvalidCursor)
        ));
        read.shutdown().await;
        env.cleanup().await;
    }
}
