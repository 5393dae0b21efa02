//! Given / when / then tests for every booking command and rejection.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::*;
use crate::show::{Limits, PriceTier, RowDef, SectionDef, Venue};

const T0: &str = "2027-03-01T10:00:00Z";

fn t0() -> DateTime<Utc> {
    T0.parse().unwrap()
}
fn show_id() -> ShowId {
    ShowId(Uuid::from_u128(1))
}
fn organizer() -> UserId {
    UserId(Uuid::from_u128(2))
}
fn user(n: u128) -> UserId {
    UserId(Uuid::from_u128(100 + n))
}
fn rsv(n: u128) -> ReservationId {
    ReservationId(Uuid::from_u128(1000 + n))
}
fn entry(n: u128) -> EntryId {
    EntryId(Uuid::from_u128(5000 + n))
}
fn pay(n: u128) -> PaymentId {
    PaymentId(Uuid::from_u128(7000 + n))
}
fn order(n: u128) -> OrderId {
    OrderId(Uuid::from_u128(8000 + n))
}

pub(crate) fn definition() -> ShowDefinition {
    ShowDefinition {
        name: "Night 1".into(),
        venue: Venue {
            name: "Arena".into(),
            city: "Lisbon".into(),
            country: "PT".into(),
            timezone: "Europe/Lisbon".into(),
        },
        starts_at: "2027-05-01T20:00:00Z".parse().unwrap(),
        currency: "EUR".into(),
        sales_open_at: None,
        sales_close_at: None,
        limits: Limits {
            max_tickets_per_user: 4,
            max_active_holds_per_user: 2,
            ..Limits::default()
        },
        price_tiers: vec![
            PriceTier {
                id: "A".into(),
                name: "Front".into(),
                price: Minor(12_000),
            },
            PriceTier {
                id: "B".into(),
                name: "Back".into(),
                price: Minor(6_000),
            },
        ],
        sections: vec![
            SectionDef {
                id: "101".into(),
                name: "Section 101".into(),
                layout: SectionLayout::Seated {
                    rows: vec![
                        RowDef {
                            row: "A".into(),
                            seats: 4,
                            tier: "A".into(),
                        },
                        RowDef {
                            row: "B".into(),
                            seats: 4,
                            tier: "B".into(),
                        },
                    ],
                },
            },
            SectionDef {
                id: "floor".into(),
                name: "Floor".into(),
                layout: SectionLayout::GeneralAdmission {
                    capacity: 3,
                    tier: "B".into(),
                },
            },
        ],
    }
}

/// A show's state built from a history, and a clock.
struct Given {
    state: ShowState,
    now: DateTime<Utc>,
}

fn given_nothing() -> Given {
    Given {
        state: ShowState::new(show_id()),
        now: t0(),
    }
}

fn given_show() -> Given {
    given_nothing().when_ok(Command::Show(ShowCommand::Schedule {
        show_id: show_id(),
        organizer_id: organizer(),
        definition: definition().into(),
    }))
}

fn seats(ids: &[&str]) -> Selection {
    Selection::Seats(ids.iter().map(|s| s.to_string()).collect())
}

fn hold(n: u128, u: u128, selection: Selection) -> Command {
    Command::Hold(HoldRequest {
        reservation_id: rsv(n),
        user_id: user(u),
        idempotency_key: None,
        selection,
    })
}

impl Given {
    fn when(&self, command: Command) -> Result<Vec<DomainEvent>, BookingError> {
        self.state.decide(command, self.now)
    }

    /// Decides and applies, checking the invariants and that a replay agrees.
    fn when_ok(mut self, command: Command) -> Given {
        let events = self
            .when(command.clone())
            .unwrap_or_else(|e| panic!("{command:?} refused: {e:?}"));
        for e in &events {
            self.state.apply(e);
        }
        self.state.check_invariants().unwrap();
        self
    }

    fn after(mut self, by: Duration) -> Given {
        self.now += by;
        self
    }

    fn types(&self, command: Command) -> Vec<&'static str> {
        self.when(command)
            .unwrap()
            .iter()
            .map(|e| e.event_type())
            .collect()
    }
}

#[test]
fn scheduling_creates_the_layout() {
    let g = given_show();
    assert_eq!(g.state.seats.len(), 8);
    assert_eq!(g.state.seats_available(), 8);
    assert_eq!(g.state.pools["floor"].available(), 3);
    assert_eq!(g.state.seat("101-B-4").unwrap().tier, 1);
    assert_eq!(g.state.status(g.now), Some(ShowStatus::OnSale));
}

#[test]
fn scheduling_twice_or_acting_on_no_show_is_refused() {
    let g = given_show();
    let again = Command::Show(ShowCommand::Schedule {
        show_id: show_id(),
        organizer_id: organizer(),
        definition: definition().into(),
    });
    assert_eq!(g.when(again), Err(BookingError::ShowAlreadyExists));
    let none = given_nothing();
    assert_eq!(
        none.when(hold(1, 1, seats(&["101-A-1"]))),
        Err(BookingError::ShowNotFound)
    );
    assert_eq!(
        none.when(Command::Show(ShowCommand::Cancel { reason: "x".into() })),
        Err(BookingError::ShowNotFound)
    );
}

#[test]
fn an_invalid_show_names_every_bad_field() {
    let mut d = definition();
    d.price_tiers[1].price = Minor(-1);
    d.sections.push(d.sections[0].clone());
    if let SectionLayout::Seated { rows } = &mut d.sections[0].layout {
        rows[1].row = "A".into();
        rows[0].tier = "Z".into();
        rows[0].seats = 0;
    }
    let g = given_nothing();
    let Err(BookingError::Invalid(errors)) = g.when(Command::Show(ShowCommand::Schedule {
        show_id: show_id(),
        organizer_id: organizer(),
        definition: d.into(),
    })) else {
        panic!("expected Invalid");
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "price_tiers[1].price",
        "sections[2].id",
        "sections[0].rows[1].row",
        "sections[0].rows[0].tier",
        "sections[0].rows[0].seats",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    let mut big = definition();
    big.sections[0].layout = SectionLayout::Seated {
        rows: (0..101)
            .map(|i| RowDef {
                row: format!("R{i}"),
                seats: 2_000,
                tier: "A".into(),
            })
            .collect(),
    };
    let Err(BookingError::Invalid(errors)) =
        given_nothing().when(Command::Show(ShowCommand::Schedule {
            show_id: show_id(),
            organizer_id: organizer(),
            definition: big.into(),
        }))
    else {
        panic!("expected Invalid");
    };
    assert!(
        errors
            .iter()
            .any(|e| e.field == "sections" && e.message.contains("200000"))
    );
}

#[test]
fn holding_seats_places_a_reservation_and_holds_each_seat() {
    let g = given_show();
    let events = g.when(hold(1, 1, seats(&["101-A-1", "101-B-1"]))).unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(types, ["ReservationPlaced", "SeatHeld", "SeatHeld"]);
    let DomainEvent::Reservation(ReservationEvent::ReservationPlaced {
        total,
        expires_at,
        origin,
        ..
    }) = &events[0]
    else {
        panic!()
    };
    assert_eq!(*total, Minor(18_000));
    assert_eq!(*expires_at, t0() + Duration::seconds(300));
    assert_eq!(*origin, Origin::Direct);
    assert_eq!(
        events[1].stream_id(show_id()),
        format!("seat-{}-101-A-1", show_id())
    );
    let g = g.when_ok(hold(1, 1, seats(&["101-A-1", "101-B-1"])));
    assert_eq!(g.state.tickets_of(user(1)), 2);
    assert_eq!(g.state.seats_available(), 6);
}

#[test]
fn a_taken_seat_makes_the_whole_hold_fail_and_names_it() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-2"])));
    assert_eq!(
        g.when(hold(2, 2, seats(&["101-A-1", "101-A-2"]))),
        Err(BookingError::SeatsUnavailable {
            seats: vec!["101-A-2".into()]
        })
    );
}

#[test]
fn malformed_seat_lists_are_invalid() {
    let g = given_show();
    for (selection, field) in [
        (seats(&[]), "seats"),
        (seats(&["101-A-1", "101-A-1"]), "seats[1]"),
        (seats(&["101-Z-1"]), "seats[0]"),
        (
            Selection::General {
                section: "floor".into(),
                quantity: 0,
            },
            "quantity",
        ),
        (
            Selection::General {
                section: "nope".into(),
                quantity: 1,
            },
            "section",
        ),
        (
            Selection::General {
                section: "101".into(),
                quantity: 1,
            },
            "section",
        ),
        (
            Selection::BestAvailable {
                section: "floor".into(),
                quantity: 1,
            },
            "section",
        ),
        (
            Selection::BestAvailable {
                section: "101".into(),
                quantity: 11,
            },
            "quantity",
        ),
    ] {
        match g.when(hold(1, 1, selection.clone())) {
            Err(BookingError::Invalid(errors)) => assert!(
                errors.iter().any(|e| e.field == field),
                "{selection:?}: {errors:?}"
            ),
            other => panic!("{selection:?}: {other:?}"),
        }
    }
    let eleven: Vec<String> = (1..=11).map(|i| format!("101-A-{i}")).collect();
    assert!(matches!(
        g.when(hold(1, 1, Selection::Seats(eleven))),
        Err(BookingError::Invalid(_))
    ));
}

#[test]
fn general_admission_holds_until_the_pool_is_empty() {
    let g = given_show().when_ok(hold(
        1,
        1,
        Selection::General {
            section: "floor".into(),
            quantity: 2,
        },
    ));
    assert_eq!(g.state.pools["floor"].held, 2);
    assert_eq!(
        g.when(hold(
            2,
            2,
            Selection::General {
                section: "floor".into(),
                quantity: 2
            }
        )),
        Err(BookingError::SoldOut { available: 1 })
    );
    assert_eq!(
        g.types(hold(
            2,
            2,
            Selection::General {
                section: "floor".into(),
                quantity: 1
            }
        )),
        ["ReservationPlaced", "PoolSeatsHeld"]
    );
}

#[test]
fn best_available_picks_adjacent_seats_in_the_lowest_row_or_refuses() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-2"])));
    let events = g
        .when(hold(
            2,
            2,
            Selection::BestAvailable {
                section: "101".into(),
                quantity: 2,
            },
        ))
        .unwrap();
    let DomainEvent::Reservation(ReservationEvent::ReservationPlaced { seats, .. }) = &events[0]
    else {
        panic!()
    };
    assert_eq!(seats, &["101-A-3", "101-A-4"]);
    let g = g.when_ok(hold(3, 3, self::seats(&["101-B-2", "101-A-4"])));
    // Row A: 1 and 3 free, not adjacent; row B: 3-4 adjacent.
    let events = g
        .when(hold(
            2,
            2,
            Selection::BestAvailable {
                section: "101".into(),
                quantity: 2,
            },
        ))
        .unwrap();
    let DomainEvent::Reservation(ReservationEvent::ReservationPlaced { seats, .. }) = &events[0]
    else {
        panic!()
    };
    assert_eq!(seats, &["101-B-3", "101-B-4"]);
    assert_eq!(
        g.when(hold(
            2,
            2,
            Selection::BestAvailable {
                section: "101".into(),
                quantity: 3
            }
        )),
        Err(BookingError::SeatsUnavailable { seats: vec![] })
    );
}

#[test]
fn holds_need_open_sales() {
    let g = given_show().when_ok(Command::Show(ShowCommand::ChangeSalesWindow {
        sales_open_at: Some(t0() + Duration::hours(1)),
        sales_close_at: None,
    }));
    assert_eq!(g.state.status(g.now), Some(ShowStatus::Scheduled));
    assert_eq!(
        g.when(hold(1, 1, seats(&["101-A-1"]))),
        Err(BookingError::SalesClosed)
    );
    let g = g.after(Duration::hours(2));
    assert!(g.when(hold(1, 1, seats(&["101-A-1"]))).is_ok());
    let g = g.when_ok(Command::Show(ShowCommand::ChangeSalesWindow {
        sales_open_at: None,
        sales_close_at: Some(t0() + Duration::hours(3)),
    }));
    let g = g.after(Duration::hours(2));
    assert_eq!(g.state.status(g.now), Some(ShowStatus::SalesClosed));
    assert_eq!(
        g.when(hold(1, 1, seats(&["101-A-1"]))),
        Err(BookingError::SalesClosed)
    );
}

#[test]
fn the_ticket_cap_counts_held_and_bought() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-1", "101-A-2", "101-A-3"])));
    assert_eq!(
        g.when(hold(2, 1, seats(&["101-B-1", "101-B-2"]))),
        Err(BookingError::TicketLimitExceeded {
            limit: 4,
            current: 3,
            requested: 2
        })
    );
    let g = g.when_ok(hold(2, 1, seats(&["101-B-1"])));
    assert_eq!(g.state.tickets_of(user(1)), 4);
    // Cancelling gives the allowance back.
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(2),
        by: user(1).to_string(),
    });
    assert_eq!(g.state.tickets_of(user(1)), 3);
}

#[test]
fn a_user_has_a_bounded_number_of_active_holds() {
    let g = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .when_ok(hold(2, 1, seats(&["101-A-2"])));
    assert_eq!(
        g.when(hold(3, 1, seats(&["101-A-3"]))),
        Err(BookingError::TooManyActiveHolds { limit: 2 })
    );
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_hold() {
    let keyed = |n: u128, selection: Selection| {
        Command::Hold(HoldRequest {
            reservation_id: rsv(n),
            user_id: user(1),
            idempotency_key: Some("k1".into()),
            selection,
        })
    };
    let g = given_show().when_ok(keyed(1, seats(&["101-A-1", "101-A-2"])));
    assert_eq!(g.when(keyed(2, seats(&["101-A-2", "101-A-1"]))), Ok(vec![]));
    assert_eq!(g.state.reservation_for_key(user(1), "k1"), Some(rsv(1)));
    assert_eq!(
        g.when(keyed(2, seats(&["101-A-3"]))),
        Err(BookingError::IdempotencyKeyReused)
    );
    // Another user's key is another key.
    let other = Command::Hold(HoldRequest {
        reservation_id: rsv(3),
        user_id: user(2),
        idempotency_key: Some("k1".into()),
        selection: seats(&["101-A-3"]),
    });
    assert!(g.when(other).is_ok());
}

#[test]
fn cancelling_releases_the_seats_once() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-1"])));
    let cancel = Command::Cancel {
        reservation_id: rsv(1),
        by: user(1).to_string(),
    };
    assert_eq!(
        g.types(cancel.clone()),
        ["ReservationCancelled", "SeatReleased"]
    );
    let g = g.when_ok(cancel.clone());
    assert_eq!(g.when(cancel), Err(BookingError::ReservationNotHeld));
    assert_eq!(
        g.when(Command::Cancel {
            reservation_id: rsv(9),
            by: "x".into()
        }),
        Err(BookingError::ReservationNotFound)
    );
    assert!(g.state.seat("101-A-1").unwrap().state.is_available());
}

#[test]
fn holds_expire_only_when_due_and_not_while_paying() {
    let g = given_show().when_ok(hold(
        1,
        1,
        Selection::General {
            section: "floor".into(),
            quantity: 2,
        },
    ));
    assert_eq!(
        g.state.next_hold_deadline(),
        Some(t0() + Duration::seconds(300))
    );
    assert_eq!(
        g.when(Command::Expire {
            reservation_id: rsv(1)
        }),
        Err(BookingError::NotDue)
    );
    assert_eq!(g.state.due_holds(g.now).count(), 0);
    let g = g.after(Duration::seconds(300));
    assert_eq!(g.state.due_holds(g.now).collect::<Vec<_>>(), vec![rsv(1)]);
    assert_eq!(
        g.types(Command::Expire {
            reservation_id: rsv(1)
        }),
        ["HoldExpired", "PoolSeatsReleased"]
    );
    let g = g.when_ok(Command::Expire {
        reservation_id: rsv(1),
    });
    assert_eq!(g.state.next_hold_deadline(), None);
    assert_eq!(g.state.pools["floor"].available(), 3);

    let paying = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .when_ok(Command::StartPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            payment_token: None,
        })
        .after(Duration::seconds(400));
    assert_eq!(paying.state.due_holds(paying.now).count(), 0);
    assert_eq!(
        paying.when(Command::Expire {
            reservation_id: rsv(1)
        }),
        Err(BookingError::ReservationNotHeld)
    );
}

#[test]
fn a_paid_reservation_gets_tickets_and_its_seats_are_sold() {
    let g = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1", "101-A-2"])))
        .after(Duration::seconds(10))
        .when_ok(Command::StartPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            payment_token: None,
        });
    let payment = g
        .state
        .reservation(rsv(1))
        .unwrap()
        .payment
        .clone()
        .unwrap();
    assert_eq!(payment.deadline, t0() + Duration::seconds(130));
    assert_eq!(
        g.when(Command::StartPayment {
            reservation_id: rsv(1),
            payment_id: pay(2),
            payment_token: None,
        }),
        Err(BookingError::ReservationNotHeld)
    );
    assert_eq!(
        g.when(Command::Cancel {
            reservation_id: rsv(1),
            by: "u".into()
        }),
        Err(BookingError::ReservationNotHeld)
    );
    assert_eq!(
        g.when(Command::CapturePayment {
            reservation_id: rsv(1),
            payment_id: pay(2),
            amount: Minor(24_000),
            provider_ref: None,
        }),
        Err(BookingError::Payment(ReservationError::NoSuchPayment))
    );
    assert_eq!(
        g.when(Command::CapturePayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            amount: Minor(1),
            provider_ref: None,
        }),
        Err(BookingError::Payment(ReservationError::AmountMismatch))
    );
    let tickets = |seats: &[&str]| -> Vec<Ticket> {
        seats
            .iter()
            .enumerate()
            .map(|(i, s)| Ticket {
                ticket_id: crate::ids::TicketId(Uuid::from_u128(i as u128)),
                seat: Some(s.to_string()),
                section: None,
                code: format!("c{i}"),
            })
            .collect()
    };
    assert_eq!(
        g.when(Command::IssueTickets {
            reservation_id: rsv(1),
            order_id: order(1),
            tickets: tickets(&["101-A-1", "101-A-2"])
        }),
        Err(BookingError::Payment(ReservationError::NotCaptured))
    );
    let g = g.when_ok(Command::CapturePayment {
        reservation_id: rsv(1),
        payment_id: pay(1),
        amount: Minor(24_000),
        provider_ref: None,
    });
    // Once captured, the payment can neither fail nor time out: tickets must follow (rule 2).
    assert_eq!(
        g.when(Command::FailPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            reason: "late".into()
        }),
        Err(BookingError::Payment(ReservationError::AlreadyCaptured))
    );
    assert_eq!(
        g.when(Command::TimeOutPayment {
            reservation_id: rsv(1),
            payment_id: pay(1)
        }),
        Err(BookingError::Payment(ReservationError::AlreadyCaptured))
    );
    assert_eq!(
        g.when(Command::IssueTickets {
            reservation_id: rsv(1),
            order_id: order(1),
            tickets: tickets(&["101-A-1"])
        }),
        Err(BookingError::Payment(ReservationError::TicketsMismatch))
    );
    let issue = Command::IssueTickets {
        reservation_id: rsv(1),
        order_id: order(1),
        tickets: tickets(&["101-A-1", "101-A-2"]),
    };
    assert_eq!(
        g.types(issue.clone()),
        ["TicketsIssued", "SeatSold", "SeatSold"]
    );
    let g = g.when_ok(issue.clone());
    assert_eq!(
        g.when(issue),
        Err(BookingError::Payment(ReservationError::AlreadyIssued))
    );
    assert_eq!(
        g.state.reservation(rsv(1)).unwrap().status,
        ReservationStatus::Confirmed
    );
    assert_eq!(g.state.tickets_of(user(1)), 2);
    assert_eq!(
        g.types(Command::Refund {
            reservation_id: rsv(1)
        }),
        ["RefundIssued", "SeatReleased", "SeatReleased"]
    );
    let g = g.when_ok(Command::Refund {
        reservation_id: rsv(1),
    });
    assert_eq!(
        g.when(Command::Refund {
            reservation_id: rsv(1)
        }),
        Err(BookingError::Payment(ReservationError::NotConfirmed))
    );
    assert_eq!(g.state.tickets_of(user(1)), 0);
}

#[test]
fn a_failed_or_voided_payment_releases_the_seats() {
    let paying = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .when_ok(Command::StartPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            payment_token: None,
        });
    assert_eq!(
        paying.types(Command::FailPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            reason: "declined".into()
        }),
        ["PaymentFailed", "SeatReleased"]
    );
    assert_eq!(
        paying.types(Command::TimeOutPayment {
            reservation_id: rsv(1),
            payment_id: pay(1)
        }),
        ["PaymentTimedOut", "SeatReleased"]
    );
    let g = paying.when_ok(Command::TimeOutPayment {
        reservation_id: rsv(1),
        payment_id: pay(1),
    });
    assert_eq!(
        g.state.reservation(rsv(1)).unwrap().status,
        ReservationStatus::Expired
    );
    let late = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .after(Duration::seconds(300));
    assert_eq!(
        late.when(Command::StartPayment {
            reservation_id: rsv(1),
            payment_id: pay(1),
            payment_token: None,
        }),
        Err(BookingError::HoldExpired)
    );
}

#[test]
fn blocking_and_unblocking_seats() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-1"])));
    assert_eq!(
        g.when(Command::BlockSeats {
            seats: vec!["101-A-1".into(), "101-A-2".into()],
            reason: "camera".into()
        }),
        Err(BookingError::SeatsUnavailable {
            seats: vec!["101-A-1".into()]
        })
    );
    let g = g.when_ok(Command::BlockSeats {
        seats: vec!["101-A-2".into()],
        reason: "camera".into(),
    });
    assert_eq!(
        g.when(hold(2, 2, seats(&["101-A-2"]))),
        Err(BookingError::SeatsUnavailable {
            seats: vec!["101-A-2".into()]
        })
    );
    assert!(matches!(
        g.when(Command::UnblockSeats {
            seats: vec!["101-A-3".into()]
        }),
        Err(BookingError::Invalid(_))
    ));
    assert!(matches!(
        g.when(Command::BlockSeats {
            seats: vec![],
            reason: "x".into()
        }),
        Err(BookingError::Invalid(_))
    ));
    let g = g.when_ok(Command::UnblockSeats {
        seats: vec!["101-A-2".into()],
    });
    assert!(g.state.seat("101-A-2").unwrap().state.is_available());
}

/// Every seated seat and the floor held, so the show is sold out.
fn sold_out() -> Given {
    given_show()
        .when_ok(hold(
            1,
            1,
            seats(&["101-A-1", "101-A-2", "101-A-3", "101-A-4"]),
        ))
        .when_ok(hold(
            2,
            2,
            seats(&["101-B-1", "101-B-2", "101-B-3", "101-B-4"]),
        ))
        .when_ok(hold(
            3,
            3,
            Selection::General {
                section: "floor".into(),
                quantity: 3,
            },
        ))
}

fn join(n: u128, u: u128, quantity: u32, section: Option<&str>) -> Command {
    Command::JoinWaitlist {
        entry_id: entry(n),
        user_id: user(u),
        quantity,
        section: section.map(String::from),
    }
}

#[test]
fn joining_the_waitlist_needs_a_sold_out_request() {
    let g = given_show();
    assert_eq!(
        g.when(join(1, 9, 2, None)),
        Err(BookingError::SeatsAvailable)
    );
    let g = sold_out();
    assert_eq!(g.state.status(g.now), Some(ShowStatus::SoldOut));
    let g = g.when_ok(join(1, 9, 2, None));
    assert_eq!(
        g.when(join(2, 9, 1, None)),
        Err(BookingError::AlreadyWaiting)
    );
    assert!(matches!(
        g.when(join(2, 8, 0, None)),
        Err(BookingError::Invalid(_))
    ));
    assert!(matches!(
        g.when(join(2, 8, 1, Some("nope"))),
        Err(BookingError::Invalid(_))
    ));
    assert_eq!(g.state.waitlist.position(entry(1)), Some(1));
}

#[test]
fn released_seats_go_to_the_first_fitting_entry_in_the_same_decision() {
    let g = sold_out()
        .when_ok(join(1, 7, 3, Some("101")))
        .when_ok(join(2, 8, 2, Some("101")))
        .when_ok(join(3, 9, 1, Some("floor")));
    // Two adjacent seats come free: entry 1 wants three, so entry 2 gets them.
    let cancel = Command::Cancel {
        reservation_id: rsv(1),
        by: user(1).to_string(),
    };
    let events = g.when(cancel.clone()).unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        types,
        [
            "ReservationCancelled",
            "SeatReleased",
            "SeatReleased",
            "SeatReleased",
            "SeatReleased",
            "ReservationPlaced",
            "SeatHeld",
            "SeatHeld",
            "SeatHeld",
            "WaitlistOffered",
        ]
    );
    // Four seats came free in row A: entry 1 (three) fits first and takes the middle run.
    let DomainEvent::Waitlist(WaitlistEvent::WaitlistOffered {
        entry_id, seats, ..
    }) = events.last().unwrap()
    else {
        panic!()
    };
    assert_eq!(*entry_id, entry(1));
    assert_eq!(seats, &["101-A-1", "101-A-2", "101-A-3"]);
    let g = g.when_ok(cancel);
    let offer = g.state.reservation(ReservationId(entry(1).0)).unwrap();
    assert_eq!(offer.origin, Origin::Waitlist);
    assert_eq!(offer.expires_at, g.now + Duration::seconds(600));
    // Seat 4 alone fits nobody in section 101; it stays on sale.
    assert!(g.state.seat("101-A-4").unwrap().state.is_available());
    assert_eq!(
        g.state.waitlist.entry(entry(2)).unwrap().status,
        EntryStatus::Waiting
    );
}

#[test]
fn an_unclaimed_offer_expires_and_passes_the_seats_on() {
    let g = sold_out()
        .when_ok(join(1, 7, 1, Some("floor")))
        .when_ok(join(2, 8, 1, Some("floor")));
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(3),
        by: user(3).to_string(),
    });
    let offer1 = ReservationId(entry(1).0);
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Offered
    );
    // Three places came free: entry 1 and entry 2 each get one.
    assert_eq!(
        g.state.waitlist.entry(entry(2)).unwrap().status,
        EntryStatus::Offered
    );
    // One place is left after the two offers, so a request for two has to wait.
    let g = g.when_ok(join(3, 9, 2, Some("floor")));
    let g = g.after(Duration::seconds(600));
    assert_eq!(
        g.types(Command::Expire {
            reservation_id: offer1
        }),
        [
            "HoldExpired",
            "WaitlistOfferExpired",
            "PoolSeatsReleased",
            "ReservationPlaced",
            "PoolSeatsHeld",
            "WaitlistOffered"
        ]
    );
    let g = g.when_ok(Command::Expire {
        reservation_id: offer1,
    });
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Expired
    );
    assert_eq!(
        g.state.waitlist.entry(entry(3)).unwrap().status,
        EntryStatus::Offered
    );
}

#[test]
fn claiming_an_offer_happens_when_its_payment_starts_and_only_once() {
    let g = sold_out().when_ok(join(1, 7, 2, Some("101")));
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(2),
        by: user(2).to_string(),
    });
    let offer = ReservationId(entry(1).0);
    assert_eq!(
        g.types(Command::StartPayment {
            reservation_id: offer,
            payment_id: pay(1),
            payment_token: None,
        }),
        ["PaymentStarted", "WaitlistOfferClaimed"]
    );
    let g = g.when_ok(Command::StartPayment {
        reservation_id: offer,
        payment_id: pay(1),
        payment_token: None,
    });
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Claimed
    );
    assert_eq!(
        g.when(Command::StartPayment {
            reservation_id: offer,
            payment_id: pay(2),
            payment_token: None,
        }),
        Err(BookingError::ReservationNotHeld)
    );
}

#[test]
fn a_user_who_reached_the_cap_while_waiting_is_passed_over() {
    let g = given_show()
        .when_ok(hold(
            1,
            1,
            seats(&["101-A-1", "101-A-2", "101-A-3", "101-A-4"]),
        ))
        .when_ok(hold(
            2,
            2,
            seats(&["101-B-1", "101-B-2", "101-B-3", "101-B-4"]),
        ))
        .when_ok(hold(
            3,
            9,
            Selection::General {
                section: "floor".into(),
                quantity: 2,
            },
        ))
        .when_ok(hold(
            4,
            3,
            Selection::General {
                section: "floor".into(),
                quantity: 1,
            },
        ))
        .when_ok(join(1, 9, 2, Some("101")))
        .when_ok(join(2, 8, 2, Some("101")));
    // A floor place fits no waiting entry, so it goes back on sale, and user 9 takes it.
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(4),
        by: user(3).to_string(),
    });
    let g = g.when_ok(hold(
        5,
        9,
        Selection::General {
            section: "floor".into(),
            quantity: 1,
        },
    ));
    assert_eq!(g.state.tickets_of(user(9)), 3);
    // Now two seats in 101 free up: user 9 would pass the cap, so entry 2 gets them.
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(2),
        by: user(2).to_string(),
    });
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Waiting
    );
    assert_eq!(
        g.state.waitlist.entry(entry(2)).unwrap().status,
        EntryStatus::Offered
    );
}

#[test]
fn leaving_with_an_offer_passes_it_on() {
    let g = sold_out()
        .when_ok(join(1, 7, 2, Some("101")))
        .when_ok(join(2, 8, 2, Some("101")));
    let g = g.when_ok(Command::Cancel {
        reservation_id: rsv(2),
        by: user(2).to_string(),
    });
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Offered
    );
    let types = g.types(Command::LeaveWaitlist { entry_id: entry(1) });
    assert_eq!(types[..2], ["WaitlistLeft", "ReservationCancelled"]);
    let g = g.when_ok(Command::LeaveWaitlist { entry_id: entry(1) });
    assert_eq!(
        g.state.waitlist.entry(entry(2)).unwrap().status,
        EntryStatus::Offered
    );
    assert_eq!(
        g.when(Command::LeaveWaitlist { entry_id: entry(1) }),
        Err(BookingError::WaitlistEntryClosed)
    );
    assert_eq!(
        g.when(Command::LeaveWaitlist { entry_id: entry(9) }),
        Err(BookingError::WaitlistEntryNotFound)
    );
}

#[test]
fn unblocked_seats_go_to_the_waitlist_first() {
    let g = given_show()
        .when_ok(Command::BlockSeats {
            seats: vec!["101-B-1".into(), "101-B-2".into()],
            reason: "desk".into(),
        })
        .when_ok(hold(
            1,
            1,
            seats(&["101-A-1", "101-A-2", "101-A-3", "101-A-4"]),
        ))
        .when_ok(hold(2, 2, seats(&["101-B-3", "101-B-4"])))
        .when_ok(join(1, 7, 2, Some("101")));
    let g = g.when_ok(Command::UnblockSeats {
        seats: vec!["101-B-1".into(), "101-B-2".into()],
    });
    assert_eq!(
        g.state.waitlist.entry(entry(1)).unwrap().status,
        EntryStatus::Offered
    );
    assert_eq!(
        g.state.seat("101-B-1").unwrap().state.reservation(),
        Some(ReservationId(entry(1).0))
    );
}

#[test]
fn cancelling_a_show_ends_its_holds_and_sales() {
    let g = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .when_ok(hold(
            2,
            2,
            Selection::General {
                section: "floor".into(),
                quantity: 1,
            },
        ));
    let cancel = Command::Show(ShowCommand::Cancel {
        reason: "storm".into(),
    });
    let mut types = g.types(cancel.clone());
    types.sort();
    assert_eq!(
        types,
        [
            "PoolSeatsReleased",
            "ReservationCancelled",
            "ReservationCancelled",
            "SeatReleased",
            "ShowCancelled"
        ]
    );
    let g = g.when_ok(cancel.clone());
    assert_eq!(g.state.status(g.now), Some(ShowStatus::Cancelled));
    assert_eq!(
        g.when(hold(3, 3, seats(&["101-A-2"]))),
        Err(BookingError::SalesClosed)
    );
    assert_eq!(g.when(cancel), Err(BookingError::ShowCancelled));
}

#[test]
fn show_changes_are_validated_and_prices_apply_to_new_holds_only() {
    let g = given_show().when_ok(hold(1, 1, seats(&["101-A-1"])));
    let g = g.when_ok(Command::Show(ShowCommand::ChangeTierPrice {
        tier_id: "A".into(),
        price: Minor(13_000),
    }));
    assert_eq!(g.state.reservation(rsv(1)).unwrap().total, Minor(12_000));
    let events = g.when(hold(2, 2, seats(&["101-A-2"]))).unwrap();
    let DomainEvent::Reservation(ReservationEvent::ReservationPlaced { total, .. }) = &events[0]
    else {
        panic!()
    };
    assert_eq!(*total, Minor(13_000));
    assert!(matches!(
        g.when(Command::Show(ShowCommand::ChangeTierPrice {
            tier_id: "Z".into(),
            price: Minor(1)
        })),
        Err(BookingError::Invalid(_))
    ));
    assert!(matches!(
        g.when(Command::Show(ShowCommand::ChangeTierPrice {
            tier_id: "A".into(),
            price: Minor(-1)
        })),
        Err(BookingError::Invalid(_))
    ));
    assert!(matches!(
        g.when(Command::Show(ShowCommand::Rename { name: " ".into() })),
        Err(BookingError::Invalid(_))
    ));
    let g = g.when_ok(Command::Show(ShowCommand::Reschedule {
        starts_at: t0() + Duration::days(1),
    }));
    assert_eq!(
        g.state.definition().unwrap().starts_at,
        t0() + Duration::days(1)
    );
}

#[test]
fn replaying_the_log_gives_the_same_state() {
    let g = sold_out()
        .when_ok(join(1, 7, 2, Some("101")))
        .when_ok(Command::Cancel {
            reservation_id: rsv(2),
            by: user(2).to_string(),
        });
    let mut log = Vec::new();
    let mut live = ShowState::new(show_id());
    let mut g2 = given_nothing();
    let commands = vec![
        Command::Show(ShowCommand::Schedule {
            show_id: show_id(),
            organizer_id: organizer(),
            definition: definition().into(),
        }),
        hold(1, 1, seats(&["101-A-1"])),
        hold(
            2,
            2,
            Selection::General {
                section: "floor".into(),
                quantity: 3,
            },
        ),
        join(1, 3, 2, Some("floor")),
        Command::Cancel {
            reservation_id: rsv(2),
            by: "u".into(),
        },
    ];
    for c in commands {
        let events = live.decide(c, g2.now).unwrap();
        for e in &events {
            live.apply(e);
        }
        log.extend(events);
        g2.now += Duration::seconds(1);
    }
    assert_eq!(ShowState::replay(show_id(), &log), live);
    assert!(g.state.check_invariants().is_ok());
}

#[test]
fn an_update_changes_several_fields_at_once_and_checks_the_version() {
    let g = given_show();
    assert_eq!(g.state.show.as_ref().unwrap().version, 1);
    let later = t0() + Duration::days(60);
    let update = ShowUpdate {
        expected_version: Some(1),
        name: Some("Night 2".into()),
        starts_at: Some(later),
        sales_window: Some((None, Some(later - Duration::hours(1)))),
    };
    assert_eq!(
        g.types(Command::UpdateShow(update.clone())),
        ["ShowRenamed", "ShowRescheduled", "SalesWindowChanged"]
    );
    let g = g.when_ok(Command::UpdateShow(update.clone()));
    let show = g.state.show.as_ref().unwrap();
    assert_eq!(show.version, 4);
    assert_eq!(show.definition.name, "Night 2");
    assert_eq!(show.definition.starts_at, later);
    // The same update against the old version is refused with the current one.
    assert_eq!(
        g.when(Command::UpdateShow(update)),
        Err(BookingError::VersionMismatch { current: 4 })
    );
    // Unchanged fields write nothing; no version means "whatever the current one is".
    let same = ShowUpdate {
        name: Some("Night 2".into()),
        ..ShowUpdate::default()
    };
    assert_eq!(g.when(Command::UpdateShow(same)), Ok(vec![]));
}

#[test]
fn an_update_is_all_or_nothing_and_validated_as_a_whole() {
    let g = given_show();
    let starts_at = g.state.definition().unwrap().starts_at;
    // A window that closes before it opens is invalid; nothing of the update is kept.
    let bad = ShowUpdate {
        name: Some("Renamed".into()),
        sales_window: Some((
            Some(starts_at - Duration::days(1)),
            Some(starts_at - Duration::days(2)),
        )),
        ..ShowUpdate::default()
    };
    assert!(matches!(
        g.when(Command::UpdateShow(bad)),
        Err(BookingError::Invalid(_))
    ));
    assert_eq!(g.state.definition().unwrap().name, definition().name);
    let cancelled = given_show().when_ok(Command::Show(ShowCommand::Cancel {
        reason: "storm".into(),
    }));
    assert_eq!(
        cancelled.when(Command::UpdateShow(ShowUpdate {
            name: Some("x".into()),
            ..ShowUpdate::default()
        })),
        Err(BookingError::ShowCancelled)
    );
}

/// Every command about a reservation, as a command about `id`.
fn commands_about(id: ReservationId) -> Vec<Command> {
    vec![
        Command::Cancel {
            reservation_id: id,
            by: "u".into(),
        },
        Command::Expire { reservation_id: id },
        Command::StartPayment {
            reservation_id: id,
            payment_id: pay(90),
            payment_token: None,
        },
        Command::CapturePayment {
            reservation_id: id,
            payment_id: pay(1),
            amount: Minor(12_000),
            provider_ref: None,
        },
        Command::FailPayment {
            reservation_id: id,
            payment_id: pay(1),
            reason: "late".into(),
        },
        Command::TimeOutPayment {
            reservation_id: id,
            payment_id: pay(1),
        },
        Command::IssueTickets {
            reservation_id: id,
            order_id: order(1),
            tickets: Vec::new(),
        },
        Command::Refund { reservation_id: id },
    ]
}

#[test]
fn closed_reservations_can_be_forgotten_and_are_refused_the_same_way() {
    let keyed = |n: u128, u: u128, seat: &str| {
        Command::Hold(HoldRequest {
            reservation_id: rsv(n),
            user_id: user(u),
            idempotency_key: Some(format!("k{n}")),
            selection: seats(&[seat]),
        })
    };
    let ticket = |seat: &str| Ticket {
        ticket_id: crate::ids::TicketId(Uuid::from_u128(1)),
        seat: Some(seat.to_string()),
        section: None,
        code: "c".into(),
    };
    let mut state = ShowState::new(show_id());
    let mut log = Vec::new();
    let mut now = t0();
    let mut run = |state: &mut ShowState, now: DateTime<Utc>, c: Command| {
        let events = state
            .decide(c.clone(), now)
            .unwrap_or_else(|e| panic!("{c:?}: {e:?}"));
        for e in &events {
            state.apply(e);
        }
        log.extend(events);
    };
    run(
        &mut state,
        now,
        Command::Show(ShowCommand::Schedule {
            show_id: show_id(),
            organizer_id: organizer(),
            definition: definition().into(),
        }),
    );
    // 1 expires, 2 is cancelled, 3's payment fails, 4 is refunded, 5 stays paid, 6 held.
    for (n, seat) in [
        (1, "101-A-1"),
        (2, "101-A-2"),
        (3, "101-A-3"),
        (4, "101-A-4"),
    ] {
        run(&mut state, now, keyed(n, n, seat));
    }
    now += Duration::seconds(10);
    run(&mut state, now, keyed(5, 5, "101-B-1"));
    for (n, p) in [(3, 3), (4, 4), (5, 5)] {
        run(
            &mut state,
            now,
            Command::StartPayment {
                reservation_id: rsv(n),
                payment_id: pay(p),
                payment_token: None,
            },
        );
    }
    run(
        &mut state,
        now,
        Command::Cancel {
            reservation_id: rsv(2),
            by: "u".into(),
        },
    );
    run(
        &mut state,
        now,
        Command::FailPayment {
            reservation_id: rsv(3),
            payment_id: pay(3),
            reason: "declined".into(),
        },
    );
    for (n, seat, price) in [(4, "101-A-4", 12_000), (5, "101-B-1", 6_000)] {
        run(
            &mut state,
            now,
            Command::CapturePayment {
                reservation_id: rsv(n),
                payment_id: pay(n),
                amount: Minor(price),
                provider_ref: None,
            },
        );
        run(
            &mut state,
            now,
            Command::IssueTickets {
                reservation_id: rsv(n),
                order_id: order(n),
                tickets: vec![ticket(seat)],
            },
        );
    }
    run(
        &mut state,
        now,
        Command::Refund {
            reservation_id: rsv(4),
        },
    );
    now += Duration::seconds(600);
    run(
        &mut state,
        now,
        Command::Expire {
            reservation_id: rsv(1),
        },
    );
    run(&mut state, now, keyed(6, 6, "101-B-2"));
    let closed = [rsv(2), rsv(3), rsv(4), rsv(1)];
    assert_eq!(state.closes(), 4);

    // While kept, the refusal read from the reservation alone is the state's.
    let mut refusals = Vec::new();
    for id in closed {
        let r = state.reservation(id).unwrap().clone();
        for c in commands_about(id) {
            let refusal = refusal_for_closed(&r, &c, now).expect("closed");
            assert_eq!(state.decide(c.clone(), now), Err(refusal.clone()), "{c:?}");
            refusals.push((c, r.clone(), refusal));
        }
    }
    for open in [rsv(5), rsv(6)] {
        let r = state.reservation(open).unwrap();
        assert!(
            refusal_for_closed(
                r,
                &Command::Expire {
                    reservation_id: open
                },
                now
            )
            .is_none()
        );
    }

    // Only the first `before` closes go, and `keep` stay.
    let replayed = ShowState::replay(show_id(), &log);
    let mut forgetting = state.clone();
    assert_eq!(forgetting.evict_closed(1, 2), [rsv(2), rsv(3)]);
    assert_eq!(forgetting.evict_closed(1, 2), []);
    assert_eq!(forgetting.evict_closed(1, u64::MAX), [rsv(4)]);
    assert_eq!(forgetting.evict_closed(0, u64::MAX), [rsv(1)]);
    forgetting.check_invariants().unwrap();
    // Whenever it is done, forgetting leaves the same state.
    let mut at_once = replayed;
    at_once.evict_closed(0, u64::MAX);
    assert_eq!(forgetting, at_once);
    for id in closed {
        assert!(forgetting.reservation(id).is_none());
    }
    for (c, r, refusal) in refusals {
        assert_eq!(
            forgetting.decide(c.clone(), now),
            Err(BookingError::ReservationNotFound)
        );
        assert_eq!(refusal_for_closed(&r, &c, now), Some(refusal));
    }
    // Open and paid reservations stay, with their keys; a forgotten key is free again.
    assert!(forgetting.reservation(rsv(5)).is_some());
    assert_eq!(forgetting.reservation_for_key(user(6), "k6"), Some(rsv(6)));
    assert_eq!(forgetting.reservation_for_key(user(1), "k1"), None);
    assert_eq!(forgetting.tickets_of(user(5)), 1);
    let again = Command::Hold(HoldRequest {
        reservation_id: rsv(7),
        user_id: user(1),
        idempotency_key: Some("k1".into()),
        selection: seats(&["101-A-1"]),
    });
    assert_eq!(state.decide(again.clone(), now), Ok(vec![]));
    assert!(!forgetting.decide(again, now).unwrap().is_empty());
}

#[test]
fn a_reservation_replays_from_its_stream() {
    let g = given_show()
        .when_ok(hold(1, 1, seats(&["101-A-1"])))
        .when_ok(Command::Cancel {
            reservation_id: rsv(1),
            by: "u".into(),
        });
    let mut log = Vec::new();
    let mut state = ShowState::new(show_id());
    for c in [
        Command::Show(ShowCommand::Schedule {
            show_id: show_id(),
            organizer_id: organizer(),
            definition: definition().into(),
        }),
        hold(1, 1, seats(&["101-A-1"])),
        Command::Cancel {
            reservation_id: rsv(1),
            by: "u".into(),
        },
    ] {
        for e in state.decide(c, t0()).unwrap() {
            state.apply(&e);
            log.push(e);
        }
    }
    let stream: Vec<&ReservationEvent> = log
        .iter()
        .filter_map(|e| match e {
            DomainEvent::Reservation(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        reservation::replay(stream).as_ref(),
        g.state.reservation(rsv(1))
    );
    assert_eq!(reservation::replay(std::iter::empty()), None);
}
