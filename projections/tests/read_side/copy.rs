//! Bulk inserts with COPY (PostgreSQL): every kind of value reads back as the same value
//! bound as a parameter does.

use boxoffice_projections::db::{self, Param, Tx};
use chrono::{TimeZone, Utc};
use serde_json::json;

use crate::support::*;

const COLUMNS: [&str; 9] = ["k", "t", "ot", "i", "oi", "ts", "ots", "j", "b"];

/// Rows with the values COPY's text format must escape or mark: tabs, newlines, carriage
/// returns, backslashes, a literal `\N`, empty and non-ASCII text, NULLs, the extreme
/// integers, sub-second times, JSON with escapes and every byte.
fn awkward_rows() -> Vec<Vec<Param>> {
    let texts = [
        "plain",
        "tab\there",
        "new\nline",
        "carriage\rreturn",
        "back\\slash",
        "\\N",
        "",
        "é ✓ 日本",
        "\\\t\n\r mixed \\x00",
    ];
    (0..100i64)
        .map(|n| {
            let text = texts[n as usize % texts.len()];
            let time = Utc.with_ymd_and_hms(2026, 11, 24, 5, 6, 7).unwrap()
                + chrono::Duration::microseconds(n * 1_234_567);
            vec![
                Param::Text(format!("key-{n:03}")),
                Param::Text(format!("{text}/{n}")),
                Param::OptText((n % 3 != 0).then(|| text.to_owned())),
                Param::Int(match n % 3 {
                    0 => i64::MIN,
                    1 => i64::MAX,
                    _ => n - 50,
                }),
                Param::OptInt((n % 2 == 0).then_some(n)),
                Param::Time(time),
                Param::OptTime((n % 4 != 0).then_some(time)),
                Param::Json(json!({"text": text, "n": n, "nested": {"list": [1, "two\t", null]}})),
                Param::Bytes((0..=255u8).map(|b| b.wrapping_add(n as u8)).collect()),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_reads_back_every_value_as_bound_parameters_do() {
    for env in backends().await {
        if env.backend != "postgres" {
            // SQLite has no COPY: the caller is told to use INSERTs.
            let mut tx = Tx::begin(&env.pool).await.unwrap();
            assert!(
                !tx.copy_in("audit_log", &["position"], &[]).await.unwrap(),
                "no COPY on SQLite"
            );
            tx.rollback().await.unwrap();
            env.cleanup().await;
            continue;
        }
        for table in ["copied", "bound"] {
            db::execute(
                &env.pool,
                &format!(
                    "CREATE TABLE {table} (k text PRIMARY KEY, t text NOT NULL, ot text,
                     i bigint NOT NULL, oi bigint, ts timestamptz NOT NULL, ots timestamptz,
                     j jsonb NOT NULL, b bytea NOT NULL)"
                ),
                &[],
            )
            .await
            .unwrap();
        }
        let rows = awkward_rows();
        let mut tx = Tx::begin(&env.pool).await.unwrap();
        assert!(tx.copy_in("copied", &COLUMNS, &rows).await.unwrap());
        let marks = db::placeholders(1, COLUMNS.len());
        for row in &rows {
            tx.execute(
                &format!(
                    "INSERT INTO bound ({}) VALUES ({marks})",
                    COLUMNS.join(", ")
                ),
                row,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();

        let differing = |from: &str, minus: &str| {
            format!(
                "SELECT count(*) AS n FROM (SELECT * FROM {from} EXCEPT SELECT * FROM {minus}) d"
            )
        };
        for (from, minus) in [("copied", "bound"), ("bound", "copied")] {
            let row = db::fetch_optional(&env.pool, &differing(from, minus), &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                row.int("n").unwrap(),
                0,
                "rows of {from} missing from {minus}"
            );
        }
        let copied = db::fetch_all(&env.pool, "SELECT * FROM copied ORDER BY k", &[])
            .await
            .unwrap();
        assert_eq!(copied.len(), rows.len());
        // And spot checks against the values themselves, not only against each other.
        for (row, values) in copied.iter().zip(&rows) {
            let Param::Text(t) = &values[1] else {
                unreachable!()
            };
            assert_eq!(&row.text("t").unwrap(), t);
            let Param::OptText(ot) = &values[2] else {
                unreachable!()
            };
            assert_eq!(&row.opt_text("ot").unwrap(), ot);
            let Param::Bytes(b) = &values[8] else {
                unreachable!()
            };
            assert_eq!(&row.bytes("b").unwrap(), b);
            let Param::Time(ts) = &values[5] else {
                unreachable!()
            };
            assert_eq!(&row.time("ts").unwrap(), ts);
        }
        env.cleanup().await;
    }
}
