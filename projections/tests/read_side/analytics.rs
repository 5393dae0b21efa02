//! The analysts' read models: each after a realistic sequence of domain events, a
//! rebuild from scratch equal to the live tables after a long mixed workload, and a
//! projector stopped midway resuming without gaps or doubles.

use std::sync::Arc;

use boxoffice_domain::{
    DomainEvent, EntryId, OrderId, PaymentId, ReservationId, ShowId, TicketId, UserId,
};
use boxoffice_projections::db;
use boxoffice_projections::{
    AuditLogProjection, NotifyConfig, Projection, Projections, ReservationsProjection,
    SalesProjection, SeatMapProjection, WaitlistProjection, all_projections, rebuild_projection,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::support::*;

fn seat_released(seat: &str, rsv: ReservationId, reason: &str) -> DomainEvent {
    event(
        "SeatReleased",
        json!({"seat_id": seat, "reservation_id": rsv, "reason": reason}),
    )
}

fn seat_sold(seat: &str, rsv: ReservationId, order: OrderId) -> DomainEvent {
    event(
        "SeatSold",
        json!({"seat_id": seat, "reservation_id": rsv, "order_id": order}),
    )
}

fn ga_placed(
    rsv: ReservationId,
    user: UserId,
    section: &str,
    quantity: u32,
    total: i64,
) -> DomainEvent {
    let now = chrono::Utc::now();
    event(
        "ReservationPlaced",
        json!({
            "reservation_id": rsv, "user_id": user, "section": section, "quantity": quantity,
            "placed_at": now, "expires_at": now + chrono::Duration::minutes(5),
            "total": total, "currency": "EUR", "origin": "direct",
        }),
    )
}

fn pool(event_type: &str, rsv: ReservationId, quantity: u32, reason: Option<&str>) -> DomainEvent {
    let mut payload = json!({"section": "GA", "reservation_id": rsv, "quantity": quantity});
    if let Some(reason) = reason {
        payload["reason"] = json!(reason);
    }
    event(event_type, payload)
}

fn ga_tickets(rsv: ReservationId, order: OrderId, quantity: u32) -> DomainEvent {
    let tickets: Vec<Value> = (0..quantity)
        .map(|_| json!({"ticket_id": TicketId(new_id()), "section": "GA", "code": new_id().simple().to_string()}))
        .collect();
    event(
        "TicketsIssued",
        json!({"reservation_id": rsv, "order_id": order, "tickets": tickets}),
    )
}

/// What a purchase left behind, for a later refund.
struct Sold {
    rsv: ReservationId,
    order: OrderId,
    seats: Vec<String>,
    total: i64,
}

/// Seat prices of the test layout: R0 is tier A (60.00), R1 tier B (40.00).
fn price(seat: &str) -> i64 {
    if seat.starts_with("S-R0-") {
        6_000
    } else {
        4_000
    }
}

async fn hold(log: &mut Log, show: ShowId, user: UserId, seats: &[&str]) -> ReservationId {
    let rsv = ReservationId(new_id());
    let total = seats.iter().map(|s| price(s)).sum();
    let mut events = vec![placed(rsv, user, seats, total, None)];
    events.extend(seats.iter().map(|s| seat_held(s, rsv)));
    log.append(show, &events).await;
    rsv
}

/// A full seated purchase as the engine and the payment saga write it.
async fn buy_seats(log: &mut Log, show: ShowId, user: UserId, seats: &[&str]) -> Sold {
    let rsv = hold(log, show, user, seats).await;
    let (pay, order) = (PaymentId(new_id()), OrderId(new_id()));
    let total = seats.iter().map(|s| price(s)).sum();
    log.append(show, &[payment_started(rsv, pay)]).await;
    log.append(show, &[payment_captured(rsv, pay, total)]).await;
    let mut events = vec![tickets_issued(rsv, order, seats)];
    events.extend(seats.iter().map(|s| seat_sold(s, rsv, order)));
    log.append(show, &events).await;
    Sold {
        rsv,
        order,
        seats: seats.iter().map(|s| s.to_string()).collect(),
        total,
    }
}

async fn refund(log: &mut Log, show: ShowId, sold: &Sold) -> u64 {
    let mut events = vec![refund_issued(sold.rsv, sold.order, sold.total)];
    events.extend(
        sold.seats
            .iter()
            .map(|s| seat_released(s, sold.rsv, "refunded")),
    );
    log.append(show, &events).await
}

async fn release(
    log: &mut Log,
    show: ShowId,
    rsv: ReservationId,
    seats: &[&str],
    how: &str,
) -> u64 {
    let pay = PaymentId(new_id());
    let (close, reason) = match how {
        "expired" => (hold_expired(rsv), "expired"),
        "cancelled" => (
            event(
                "ReservationCancelled",
                json!({"reservation_id": rsv, "by": "buyer"}),
            ),
            "cancelled",
        ),
        "payment_failed" => {
            log.append(show, &[payment_started(rsv, pay)]).await;
            (payment_failed(rsv, pay), "payment_failed")
        }
        "payment_timed_out" => {
            log.append(show, &[payment_started(rsv, pay)]).await;
            (payment_timed_out(rsv, pay), "payment_timed_out")
        }
        other => panic!("no release {other}"),
    };
    let mut events = vec![close];
    events.extend(seats.iter().map(|s| seat_released(s, rsv, reason)));
    log.append(show, &events).await
}

async fn rows(env: &Env, sql: &str, show: ShowId) -> Vec<Vec<String>> {
    let found = db::fetch_all(&env.pool, sql, &[show.to_string().into()])
        .await
        .expect(sql);
    found
        .iter()
        .map(|r| {
            (0..)
                .map_while(|i| {
                    let name = format!("c{i}");
                    match r.opt_text(&name) {
                        Ok(v) => Some(v.unwrap_or_else(|| "NULL".into())),
                        Err(sqlx::Error::ColumnNotFound(_)) => None,
                        Err(_) => Some(
                            r.opt_int(&name)
                                .expect(&name)
                                .map_or("NULL".into(), |v| v.to_string()),
                        ),
                    }
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn each_read_model_follows_a_realistic_show() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        let show = show();
        let (alice, bob, carol, dave, erin, frank) =
            (user(), user(), user(), user(), user(), user());

        let alice_sold = buy_seats(&mut log, show, alice, &["S-R0-1", "S-R0-2"]).await;
        let bob_rsv = hold(&mut log, show, bob, &["S-R1-1"]).await;
        release(&mut log, show, bob_rsv, &["S-R1-1"], "expired").await;
        // Carol buys three GA places.
        let carol_rsv = ReservationId(new_id());
        let (pay, order) = (PaymentId(new_id()), OrderId(new_id()));
        log.append(
            show,
            &[
                ga_placed(carol_rsv, carol, "GA", 3, 7_500),
                pool("PoolSeatsHeld", carol_rsv, 3, None),
            ],
        )
        .await;
        log.append(show, &[payment_started(carol_rsv, pay)]).await;
        log.append(show, &[payment_captured(carol_rsv, pay, 7_500)])
            .await;
        log.append(
            show,
            &[
                ga_tickets(carol_rsv, order, 3),
                pool("PoolSeatsSold", carol_rsv, 3, None),
            ],
        )
        .await;
        let dave_rsv = hold(&mut log, show, dave, &["S-R1-2"]).await;
        release(&mut log, show, dave_rsv, &["S-R1-2"], "payment_failed").await;
        let erin_rsv = hold(&mut log, show, erin, &["S-R0-3"]).await;
        release(&mut log, show, erin_rsv, &["S-R0-3"], "cancelled").await;
        log.append(
            show,
            &[event(
                "SeatBlocked",
                json!({"seat_id": "S-R1-5", "reason": "camera"}),
            )],
        )
        .await;
        refund(&mut log, show, &alice_sold).await;
        // The waiting list: two join, the first is offered S-R0-3 and claims, the second leaves.
        let (w1, w2) = (EntryId(new_id()), EntryId(new_id()));
        log.append(show, &[waitlist_joined(w1, user(), 1)]).await;
        log.append(show, &[waitlist_joined(w2, user(), 2)]).await;
        let offer = ReservationId(new_id());
        let w1_user = user();
        log.append(
            show,
            &[
                placed(offer, w1_user, &["S-R0-3"], 6_000, Some(w1)),
                seat_held("S-R0-3", offer),
                waitlist_offered(w1, offer, &["S-R0-3"]),
            ],
        )
        .await;
        log.append(
            show,
            &[event(
                "WaitlistOfferClaimed",
                json!({"entry_id": w1, "reservation_id": offer}),
            )],
        )
        .await;
        log.append(show, &[event("WaitlistLeft", json!({"entry_id": w2}))])
            .await;
        let frank_rsv = hold(&mut log, show, frank, &["S-R1-3"]).await;
        let head = release(&mut log, show, frank_rsv, &["S-R1-3"], "payment_timed_out").await;
        assert!(
            read.projections().wait_for_all(head, WAIT).await,
            "{}",
            env.backend
        );

        let by_status = rows(&env, "SELECT status AS c0, CAST(seats AS bigint) AS c1 FROM v_seats_by_status WHERE show_id = $1 ORDER BY status", show).await;
        assert_eq!(
            by_status,
            vec![
                vec!["available".to_string(), "398".into()],
                vec!["blocked".into(), "1".into()],
                vec!["held".into(), "1".into()]
            ],
            "{}",
            env.backend
        );
        let held = rows(&env, "SELECT seat_id AS c0, reservation_id AS c1, tier AS c2, row_label AS c3, number AS c4 FROM seat_map WHERE show_id = $1 AND status = 'held'", show).await;
        assert_eq!(
            held,
            vec![vec![
                "S-R0-3".to_string(),
                offer.to_string(),
                "A".into(),
                "R0".into(),
                "3".into()
            ]]
        );
        let ga = rows(
            &env,
            "SELECT capacity AS c0, held AS c1, sold AS c2 FROM seat_map_ga WHERE show_id = $1",
            show,
        )
        .await;
        assert_eq!(ga, vec![vec!["50".to_string(), "0".into(), "3".into()]]);

        let statuses = rows(&env, "SELECT reservation_id AS c0, status AS c1, close_reason AS c2 FROM reservations WHERE show_id = $1", show).await;
        let status_of = |rsv: ReservationId| {
            statuses
                .iter()
                .find(|r| r[0] == rsv.to_string())
                .map(|r| (r[1].clone(), r[2].clone()))
                .expect("a row")
        };
        assert_eq!(statuses.len(), 7);
        assert_eq!(
            status_of(alice_sold.rsv),
            ("refunded".into(), "refunded".into())
        );
        assert_eq!(status_of(bob_rsv), ("expired".into(), "expired".into()));
        assert_eq!(status_of(carol_rsv), ("confirmed".into(), "NULL".into()));
        assert_eq!(
            status_of(dave_rsv),
            ("payment_failed".into(), "payment_failed".into())
        );
        assert_eq!(
            status_of(erin_rsv),
            ("cancelled".into(), "cancelled".into())
        );
        assert_eq!(status_of(offer), ("held".into(), "NULL".into()));
        assert_eq!(
            status_of(frank_rsv),
            ("payment_timed_out".into(), "payment_timed_out".into())
        );
        let carol_row = rows(&env, "SELECT section AS c0, quantity AS c1, total_minor AS c2, order_id AS c3, seats AS c4 FROM reservations WHERE show_id = $1 AND status = 'confirmed'", show).await;
        assert_eq!(
            carol_row,
            vec![vec![
                "GA".to_string(),
                "3".into(),
                "7500".into(),
                order.to_string(),
                "NULL".into()
            ]]
        );

        let report = read
            .sales()
            .for_show(show)
            .await
            .unwrap()
            .expect("a report");
        assert_eq!(report.currency, "EUR");
        assert_eq!(
            (report.tickets_sold, report.tickets_refunded),
            (5, 2),
            "{}",
            env.backend
        );
        assert_eq!(
            (
                report.revenue_minor,
                report.refunds_minor,
                report.net_revenue_minor
            ),
            (19_500, 12_000, 7_500)
        );
        let tiers: Vec<(String, i64, i64, i64)> = report
            .by_tier
            .iter()
            .map(|l| {
                (
                    l.key.clone(),
                    l.tickets_sold,
                    l.revenue_minor,
                    l.refunds_minor,
                )
            })
            .collect();
        assert_eq!(
            tiers,
            vec![("A".into(), 2, 12_000, 12_000), ("C".into(), 3, 7_500, 0)]
        );
        let sections: Vec<(String, i64)> = report
            .by_section
            .iter()
            .map(|l| (l.key.clone(), l.tickets_sold))
            .collect();
        assert_eq!(sections, vec![("GA".into(), 3), ("S".into(), 2)]);
        let h = &report.holds;
        assert_eq!(
            (
                h.created,
                h.open,
                h.expired,
                h.cancelled,
                h.payment_failed,
                h.payment_timed_out,
                h.converted
            ),
            (7, 1, 1, 1, 1, 1, 2)
        );
        assert!(
            h.avg_seconds_to_checkout
                .is_some_and(|s| (0..60).contains(&s))
        );
        let w = &report.waitlist;
        assert_eq!(
            (
                w.joined,
                w.size,
                w.offered_now,
                w.offers,
                w.claims,
                w.offer_expiries,
                w.left
            ),
            (2, 0, 0, 1, 1, 0, 1)
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["by_tier"][0]["key"], "A");
        assert_eq!(read.sales().for_show(ShowId(new_id())).await.unwrap(), None);

        // The views answer on both backends.
        let show_sales = rows(&env, "SELECT CAST(tickets_sold AS bigint) AS c0, CAST(net_revenue_minor AS bigint) AS c1 FROM v_show_sales WHERE show_id = $1", show).await;
        assert_eq!(show_sales, vec![vec!["5".to_string(), "7500".into()]]);
        let conversion = rows(&env, "SELECT CAST(holds_placed AS bigint) AS c0, CAST(converted AS bigint) AS c1, CAST(round(conversion_rate * 1000) AS bigint) AS c2 FROM v_hold_conversion WHERE show_id = $1", show).await;
        assert_eq!(
            conversion,
            vec![vec!["7".to_string(), "2".into(), "333".into()]]
        );
        let stats = rows(&env, "SELECT CAST(joined AS bigint) AS c0, CAST(claims AS bigint) AS c1 FROM waitlist_stats WHERE show_id = $1", show).await;
        assert_eq!(stats, vec![vec!["2".to_string(), "1".into()]]);

        // The audit log has every event of the show, in order, with a sentence each.
        let audit = rows(&env, "SELECT position AS c0, event_type AS c1, summary AS c2, actor AS c3 FROM audit_log WHERE show_id = $1 ORDER BY position", show).await;
        let log_events = env.store.read_all(0, 1_000).await.unwrap();
        assert_eq!(audit.len(), log_events.len());
        for (row, event) in audit.iter().zip(&log_events) {
            assert_eq!(row[0], event.position.to_string());
            assert_eq!(row[1], event.event_type);
            assert_eq!(row[3], "system:test");
            assert!(row[2].ends_with('.') && row[2].len() > 10, "{row:?}");
        }
        assert!(audit.iter().any(|r| r[2]
            == "Seat S-R1-1 released from reservation ".to_string()
                + &bob_rsv.to_string()
                + ": the hold expired."));

        read.shutdown().await;
        env.cleanup().await;
    }
}

/// The analysts' projections, and a dump of their tables that does not depend on row order.
fn analysts() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(SeatMapProjection),
        Arc::new(ReservationsProjection),
        Arc::new(SalesProjection),
        Arc::new(WaitlistProjection),
        Arc::new(AuditLogProjection),
    ]
}

const DUMPS: [&str; 9] = [
    "SELECT show_id, name, status, CAST(updated_position AS text) AS p FROM seat_map_shows",
    "SELECT show_id, seat_id, section, row_label, tier, status, coalesce(reservation_id, '-') AS r, CAST(number AS text) AS n, CAST(updated_position AS text) AS p FROM seat_map",
    "SELECT show_id, section, CAST(capacity AS text) AS c, CAST(held AS text) AS h, CAST(sold AS text) AS s FROM seat_map_ga",
    "SELECT reservation_id, show_id, status, coalesce(close_reason, '-') AS c, CAST(total_minor AS text) AS t, coalesce(order_id, '-') AS o, coalesce(CAST(seconds_to_checkout AS text), '-') AS s, CAST(position AS text) AS p FROM reservations",
    "SELECT show_id, tier, section, currency, CAST(tickets_sold AS text) AS a, CAST(revenue_minor AS text) AS b, CAST(tickets_refunded AS text) AS c, CAST(refunds_minor AS text) AS d FROM sales",
    "SELECT reservation_id, section, tier, CAST(quantity AS text) AS q, CAST(amount_minor AS text) AS a FROM sales_reservation_items",
    "SELECT entry_id, status, CAST(offers AS text) AS o, CAST(claims AS text) AS c, CAST(offer_expiries AS text) AS e FROM waitlist_entries",
    "SELECT CAST(position AS text) AS p, show_id, stream_id, event_type, actor, correlation_id, summary FROM audit_log",
    "SELECT show_id, tier, CAST(price_minor AS text) AS p FROM sales_tier_prices",
];

async fn dump(env: &Env) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for sql in DUMPS {
        let found = db::fetch_all(&env.pool, sql, &[]).await.expect(sql);
        let mut table: Vec<String> = found
            .iter()
            .map(|r| {
                let mut line = String::new();
                let columns = match &r {
                    db::DbRow::Postgres(r) => sqlx::Row::len(r),
                    db::DbRow::Sqlite(r) => sqlx::Row::len(r),
                };
                for i in 0..columns {
                    let value: String = match &r {
                        db::DbRow::Postgres(r) => sqlx::Row::try_get(r, i).expect("text"),
                        db::DbRow::Sqlite(r) => sqlx::Row::try_get(r, i).expect("text"),
                    };
                    line.push_str(&value);
                    line.push('|');
                }
                line
            })
            .collect();
        table.sort();
        out.push(table);
    }
    out
}

/// A seeded mixed workload over two shows: purchases, expiries, cancellations, failed and
/// timed-out payments, refunds, GA sales and the waiting list.
async fn mixed_workload(log: &mut Log, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let shows = [show(), show()];
    let mut free: Vec<Vec<String>> = shows
        .iter()
        .map(|_| {
            (1..=200)
                .flat_map(|n| [format!("S-R0-{n}"), format!("S-R1-{n}")])
                .collect()
        })
        .collect();
    let mut sold: Vec<Vec<Sold>> = vec![Vec::new(), Vec::new()];
    let mut ga_left = [50u32, 50];
    for _ in 0..steps {
        let s = rng.gen_range(0..2);
        let show = shows[s];
        let buyer = user();
        match rng.gen_range(0..10) {
            0..=3 if free[s].len() > 4 => {
                let n = rng.gen_range(1..=3);
                let seats: Vec<String> = (0..n)
                    .map(|_| {
                        let i = rng.gen_range(0..free[s].len());
                        free[s].swap_remove(i)
                    })
                    .collect();
                let refs: Vec<&str> = seats.iter().map(String::as_str).collect();
                let purchase = buy_seats(log, show, buyer, &refs).await;
                sold[s].push(purchase);
            }
            4 if !sold[s].is_empty() => {
                let i = rng.gen_range(0..sold[s].len());
                let purchase = sold[s].swap_remove(i);
                refund(log, show, &purchase).await;
                free[s].extend(purchase.seats);
            }
            5..=7 if free[s].len() > 4 => {
                let seat = free[s][rng.gen_range(0..free[s].len())].clone();
                let rsv = hold(log, show, buyer, &[&seat]).await;
                let how = [
                    "expired",
                    "cancelled",
                    "payment_failed",
                    "payment_timed_out",
                ][rng.gen_range(0..4)];
                release(log, show, rsv, &[&seat], how).await;
            }
            8 if ga_left[s] >= 2 => {
                let rsv = ReservationId(new_id());
                let (pay, order) = (PaymentId(new_id()), OrderId(new_id()));
                ga_left[s] -= 2;
                log.append(
                    show,
                    &[
                        ga_placed(rsv, buyer, "GA", 2, 5_000),
                        pool("PoolSeatsHeld", rsv, 2, None),
                    ],
                )
                .await;
                log.append(show, &[payment_started(rsv, pay)]).await;
                log.append(show, &[payment_captured(rsv, pay, 5_000)]).await;
                log.append(
                    show,
                    &[
                        ga_tickets(rsv, order, 2),
                        pool("PoolSeatsSold", rsv, 2, None),
                    ],
                )
                .await;
            }
            _ => {
                let entry = EntryId(new_id());
                log.append(show, &[waitlist_joined(entry, buyer, 1)]).await;
                if rng.gen_bool(0.5) {
                    log.append(show, &[event("WaitlistLeft", json!({"entry_id": entry}))])
                        .await;
                }
            }
        }
    }
}

fn head_of(env: &Env) -> u64 {
    *env.store.subscribe_head().borrow()
}

#[tokio::test]
async fn a_rebuild_from_scratch_equals_the_live_read_models() {
    for env in backends().await {
        let read = env.start(NotifyConfig::default());
        let mut log = Log::new(&env.store);
        mixed_workload(&mut log, 7, 300).await;
        let head = head_of(&env);
        assert!(
            head > 1_000,
            "{}: a long workload ({head} events)",
            env.backend
        );
        assert!(
            read.projections().wait_for_all(head, WAIT).await,
            "{}",
            env.backend
        );
        let live = dump(&env).await;
        assert!(
            live.iter().all(|t| !t.is_empty()),
            "{}: every table has rows",
            env.backend
        );
        let schema = catalog(&env).await;
        let oid = "SELECT 'audit_log'::regclass::oid::bigint AS n";
        let audit_log = if env.backend == "postgres" {
            Some(env.count(oid, &[]).await)
        } else {
            None
        };
        for projection in all_projections(&NotifyConfig::default()) {
            let report = read
                .projections()
                .rebuild(projection.name(), 1_000)
                .await
                .expect("a running projection")
                .expect("rebuild");
            assert_eq!(
                report.position,
                head,
                "{}: {}",
                env.backend,
                projection.name()
            );
        }
        assert_eq!(dump(&env).await, live, "{}", env.backend);
        if let Some(before) = audit_log {
            assert_ne!(
                env.count(oid, &[]).await,
                before,
                "PostgreSQL moved the rebuilt tables into place"
            );
        }
        let after = catalog(&env).await;
        let lost: Vec<&String> = schema.iter().filter(|l| !after.contains(l)).collect();
        let gained: Vec<&String> = after.iter().filter(|l| !schema.contains(l)).collect();
        assert!(
            lost.is_empty() && gained.is_empty() && after.len() == schema.len(),
            "{}: every table, column, index, constraint and view stays as the migrations made \
             it; lost {lost:?}, gained {gained:?}",
            env.backend
        );
        read.shutdown().await;
        env.cleanup().await;
    }
}

/// The database's tables, columns, indexes, constraints and views, one line each, in a
/// stable order (a PostgreSQL rebuild moves new tables into place, which must leave all
/// of this as it was).
async fn catalog(env: &Env) -> Vec<String> {
    let sql = match env.backend {
        "postgres" => {
            "SELECT tablename || ' index ' || indexname || ' ' ||
                    regexp_replace(indexdef, 'INDEX \\S+ ON', '') AS line
             FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL
             SELECT conrelid::regclass::text || ' constraint ' || conname || ' ' ||
                    pg_get_constraintdef(oid)
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace
             UNION ALL
             SELECT 'view ' || viewname || ' ' || definition FROM pg_views
             WHERE schemaname = 'public'
             UNION ALL
             SELECT table_name || ' column ' || column_name || ' ' || data_type || ' ' ||
                    coalesce(column_default, '') || ' ' || is_nullable
             FROM information_schema.columns WHERE table_schema = 'public'
             UNION ALL
             SELECT 'schema ' || nspname FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
             ORDER BY 1"
        }
        _ => {
            "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS line FROM sqlite_master
              ORDER BY 1"
        }
    };
    db::fetch_all(&env.pool, sql, &[])
        .await
        .expect("read the catalog")
        .iter()
        .map(|r| r.text("line").unwrap())
        .collect()
}

#[tokio::test]
async fn a_projector_stopped_midway_resumes_without_gaps_or_doubles() {
    for env in backends().await {
        let start = || {
            Projections::start(
                Arc::clone(&env.store),
                env.pool.clone(),
                analysts(),
                fast_runtime(),
            )
        };
        let audit_rows = || env.count("SELECT count(*) AS n FROM audit_log", &[]);
        let checkpoint = || async {
            boxoffice_projections::load_checkpoint(&env.pool, "audit_log")
                .await
                .unwrap()
                .unwrap()
                .position
        };
        let mut log = Log::new(&env.store);
        mixed_workload(&mut log, 11, 80).await;
        let first_head = head_of(&env);
        let first = start();
        assert!(first.wait_for_all(first_head, WAIT).await);
        first.shutdown().await;

        // More events while nothing runs; the next run is stopped as soon as it has
        // made progress, usually partway through its catch-up (batches of 7).
        mixed_workload(&mut log, 12, 80).await;
        let head = head_of(&env);
        let second = start();
        let audit = second.get("audit_log").unwrap().clone();
        eventually("progress after the restart", || {
            let position = audit.position();
            async move { (position > first_head).then_some(()) }
        })
        .await;
        second.shutdown().await;
        let stopped_at = checkpoint().await;
        assert!(stopped_at > first_head);
        assert_eq!(
            audit_rows().await,
            i64::try_from(stopped_at).unwrap(),
            "{}: exactly the events up to the checkpoint",
            env.backend
        );

        let third = start();
        assert!(third.wait_for_all(head, WAIT).await);
        third.shutdown().await;
        assert_eq!(checkpoint().await, head);
        assert_eq!(audit_rows().await, head as i64);
        assert_eq!(
            env.count("SELECT count(DISTINCT position) AS n FROM audit_log", &[])
                .await,
            head as i64
        );
        let resumed = dump(&env).await;
        for projection in analysts() {
            rebuild_projection(Arc::clone(&env.store), &env.pool, projection.as_ref(), 500)
                .await
                .expect("rebuild");
        }
        assert_eq!(dump(&env).await, resumed, "{}", env.backend);
        env.cleanup().await;
    }
}
