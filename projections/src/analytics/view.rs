//! [`SalesView`]: one show's sales report (`GET /v1/shows/{show_id}/sales`) from the
//! sales, reservations and waitlist read models. Money is in minor units of `currency`;
//! the API formats it.

use boxoffice_domain::ShowId;
use boxoffice_store::tables::TablePool;
use serde::{Deserialize, Serialize};

use crate::ViewError;
use crate::db::{self, DbRow};

/// Tickets and money of one tier or one section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesLine {
    /// The tier id (in `by_tier`) or section id (in `by_section`).
    pub key: String,
    pub tickets_sold: i64,
    pub tickets_refunded: i64,
    pub revenue_minor: i64,
    pub refunds_minor: i64,
}

/// What became of the show's holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldStats {
    pub created: i64,
    /// Still held or waiting for their payment.
    pub open: i64,
    pub expired: i64,
    pub cancelled: i64,
    pub payment_failed: i64,
    pub payment_timed_out: i64,
    /// Paid and ticketed (refunded later or not).
    pub converted: i64,
    /// Mean seconds from hold to captured payment over converted holds.
    pub avg_seconds_to_checkout: Option<i64>,
}

/// The show's waiting list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistStats {
    pub joined: i64,
    /// Entries waiting now (the list's size).
    pub size: i64,
    /// Entries holding an open offer now.
    pub offered_now: i64,
    pub offers: i64,
    pub claims: i64,
    pub offer_expiries: i64,
    pub left: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowSales {
    pub show_id: ShowId,
    pub currency: String,
    pub tickets_sold: i64,
    pub tickets_refunded: i64,
    /// Gross: what was paid for the tickets sold.
    pub revenue_minor: i64,
    pub refunds_minor: i64,
    pub net_revenue_minor: i64,
    pub by_tier: Vec<SalesLine>,
    pub by_section: Vec<SalesLine>,
    pub holds: HoldStats,
    pub waitlist: WaitlistStats,
}

/// Reads the per-show sales report.
#[derive(Clone)]
pub struct SalesView {
    pool: TablePool,
}

/// `CAST(sum(..) AS bigint)`: PostgreSQL sums bigints as numeric.
fn sum(column: &str) -> String {
    format!("CAST(coalesce(sum({column}), 0) AS bigint) AS {column}")
}

fn line(row: &DbRow) -> Result<SalesLine, sqlx::Error> {
    Ok(SalesLine {
        key: row.text("k")?,
        tickets_sold: row.int("tickets_sold")?,
        tickets_refunded: row.int("tickets_refunded")?,
        revenue_minor: row.int("revenue_minor")?,
        refunds_minor: row.int("refunds_minor")?,
    })
}

impl SalesView {
    pub fn new(pool: TablePool) -> Self {
        Self { pool }
    }

    /// The report of a show, `None` if the sales projection has not seen it scheduled.
    pub async fn for_show(&self, show_id: ShowId) -> Result<Option<ShowSales>, ViewError> {
        let show = show_id.to_string();
        let Some(currency) = db::fetch_optional(
            &self.pool,
            "SELECT currency FROM sales_tier_prices WHERE show_id = $1 LIMIT 1",
            &[show.clone().into()],
        )
        .await?
        else {
            return Ok(None);
        };
        let currency = currency.text("currency")?;
        let sums = [
            sum("tickets_sold"),
            sum("tickets_refunded"),
            sum("revenue_minor"),
            sum("refunds_minor"),
        ]
        .join(", ");
        let mut by = Vec::new();
        for key in ["tier", "section"] {
            let rows = db::fetch_all(
                &self.pool,
                &format!(
                    "SELECT {key} AS k, {sums} FROM sales WHERE show_id = $1 GROUP BY {key} ORDER BY {key}"
                ),
                &[show.clone().into()],
            )
            .await?;
            by.push(rows.iter().map(line).collect::<Result<Vec<_>, _>>()?);
        }
        let by_section = by.pop().expect("two groupings");
        let by_tier = by.pop().expect("two groupings");
        let total = |f: fn(&SalesLine) -> i64| by_tier.iter().map(f).sum::<i64>();
        let (tickets_sold, tickets_refunded) =
            (total(|l| l.tickets_sold), total(|l| l.tickets_refunded));
        let (revenue_minor, refunds_minor) =
            (total(|l| l.revenue_minor), total(|l| l.refunds_minor));

        let count = |condition: &str, name: &str| {
            format!(
                "CAST(coalesce(sum(CASE WHEN {condition} THEN 1 ELSE 0 END), 0) AS bigint) AS {name}"
            )
        };
        let holds_sql = format!(
            "SELECT count(*) AS created, {}, {}, {}, {}, {}, {},
                    count(seconds_to_checkout) AS timed,
                    {}
             FROM reservations WHERE show_id = $1",
            count("status IN ('held', 'payment_pending')", "open"),
            count("status = 'expired'", "expired"),
            count("status = 'cancelled'", "cancelled"),
            count("status = 'payment_failed'", "payment_failed"),
            count("status = 'payment_timed_out'", "payment_timed_out"),
            count("status IN ('confirmed', 'refunded')", "converted"),
            sum("seconds_to_checkout"),
        );
        let rows = db::fetch_all(&self.pool, &holds_sql, &[show.clone().into()]).await?;
        let r = &rows[0];
        let timed = r.int("timed")?;
        let holds = HoldStats {
            created: r.int("created")?,
            open: r.int("open")?,
            expired: r.int("expired")?,
            cancelled: r.int("cancelled")?,
            payment_failed: r.int("payment_failed")?,
            payment_timed_out: r.int("payment_timed_out")?,
            converted: r.int("converted")?,
            avg_seconds_to_checkout: (timed > 0)
                .then(|| r.int("seconds_to_checkout").map(|s| s / timed))
                .transpose()?,
        };

        let waitlist_sql = format!(
            "SELECT count(*) AS joined, {}, {}, {}, {}, {}, {} FROM waitlist_entries WHERE show_id = $1",
            count("status = 'waiting'", "size"),
            count("status = 'offered'", "offered_now"),
            count("status = 'left'", "left_list"),
            sum("offers"),
            sum("claims"),
            sum("offer_expiries"),
        );
        let rows = db::fetch_all(&self.pool, &waitlist_sql, &[show.into()]).await?;
        let w = &rows[0];
        let waitlist = WaitlistStats {
            joined: w.int("joined")?,
            size: w.int("size")?,
            offered_now: w.int("offered_now")?,
            offers: w.int("offers")?,
            claims: w.int("claims")?,
            offer_expiries: w.int("offer_expiries")?,
            left: w.int("left_list")?,
        };
        Ok(Some(ShowSales {
            show_id,
            currency,
            tickets_sold,
            tickets_refunded,
            revenue_minor,
            refunds_minor,
            net_revenue_minor: revenue_minor - refunds_minor,
            by_tier,
            by_section,
            holds,
            waitlist,
        }))
    }
}
