//! `boxoffice-bench checkout`: end-to-end checkout latency over real HTTP. Starts the
//! real server in-process (with its in-process payment simulator at the given latency)
//! on a fresh store, then `buyers` concurrent buyers each hold one seat (best available)
//! and check it out with `tok_visa`, waiting for the answer, `rounds` times. Reports the
//! hold and checkout latencies as a client sees them (request sent to answer read).

use std::time::Instant;

use boxoffice_api::auth::Role;
use boxoffice_api::{Application, Config};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Serialize)]
pub struct CheckoutRun {
    pub backend: String,
    pub buyers: usize,
    pub paysim_latency_ms: u64,
    pub checkouts: u64,
    pub confirmed: u64,
    pub other_outcomes: u64,
    pub seconds: f64,
    pub checkouts_per_second: f64,
    pub hold_ms_p50: f64,
    pub hold_ms_p99: f64,
    pub checkout_ms_p50: f64,
    pub checkout_ms_p90: f64,
    pub checkout_ms_p99: f64,
    pub checkout_ms_max: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}

pub async fn run(
    backend: &str,
    url: &str,
    buyers: usize,
    rounds: usize,
    paysim_latency_ms: u64,
) -> anyhow::Result<CheckoutRun> {
    let dir = std::env::temp_dir().join(format!(
        "boxoffice-bench-checkout-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut config = Config::for_tests(url.to_string(), dir.clone());
    config.rate_limit_per_user = 0;
    config.rate_limit_per_ip = 0;
    config.paysim_latency_ms = paysim_latency_ms;
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let (users, auth) = app.user_admin();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let token_for = |roles: &[Role]| {
        let (users, auth) = (users.clone(), auth.clone());
        let roles = roles.to_vec();
        async move {
            let email = format!("{}@bench.test", uuid::Uuid::now_v7().simple());
            let user = boxoffice_api::auth::create_user(
                &users,
                &auth,
                &email,
                "correct horse battery".into(),
                None,
                &roles,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            let mut all = vec![Role::Buyer];
            all.extend(roles);
            auth.issue(&user.user_id, &all)
        }
    };
    let organizer = token_for(&[Role::Organizer]).await?;
    let client = reqwest::Client::new();
    let seats = (buyers * rounds) as u32;
    let rows: Vec<Value> = (0..seats.div_ceil(100))
        .map(|r| json!({"row": format!("R{r}"), "seats": 100, "tier": "A"}))
        .collect();
    let show: Value = client
        .post(format!("{base}/v1/shows"))
        .bearer_auth(&organizer)
        .json(&json!({
            "name": "Checkout bench",
            "venue": {"name": "Arena", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
            "starts_at": "2030-05-01T20:00:00Z",
            "currency": "EUR",
            "limits": {"max_tickets_per_user": 100, "max_active_holds_per_user": 20},
            "price_tiers": [{"id": "A", "name": "All", "price": "40.00"}],
            "sections": [{"id": "S", "name": "Stalls", "kind": "seated", "rows": rows}]
        }))
        .send()
        .await?
        .json()
        .await?;
    let show = show["show_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("show not created: {show}"))?
        .to_string();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..buyers {
        let token = token_for(&[]).await?;
        let (client, base, show) = (client.clone(), base.clone(), show.clone());
        tasks.push(tokio::spawn(async move {
            let mut holds = Histogram::<u64>::new(3).expect("histogram");
            let mut checkouts = Histogram::<u64>::new(3).expect("histogram");
            let (mut confirmed, mut other) = (0u64, 0u64);
            for _ in 0..rounds {
                let t = Instant::now();
                let held: Value = match client
                    .post(format!("{base}/v1/shows/{show}/holds"))
                    .bearer_auth(&token)
                    .json(&json!({"section": "S", "quantity": 1, "best_available": true}))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                holds.record(t.elapsed().as_micros() as u64).ok();
                let Some(reservation) = held["reservation_id"].as_str() else {
                    other += 1;
                    continue;
                };
                let t = Instant::now();
                let answer = client
                    .post(format!(
                        "{base}/v1/reservations/{reservation}/checkout?wait_seconds=30"
                    ))
                    .bearer_auth(&token)
                    .json(&json!({"payment_token": "tok_visa"}))
                    .send()
                    .await;
                let status = match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                checkouts.record(t.elapsed().as_micros() as u64).ok();
                if status == 200 {
                    confirmed += 1;
                } else {
                    other += 1;
                }
            }
            (holds, checkouts, confirmed, other)
        }));
    }
    let mut holds = Histogram::<u64>::new(3)?;
    let mut checkouts = Histogram::<u64>::new(3)?;
    let (mut confirmed, mut other) = (0, 0);
    for task in tasks {
        let (h, c, ok, not) = task.await?;
        holds.add(h)?;
        checkouts.add(c)?;
        confirmed += ok;
        other += not;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await??;
    std::fs::remove_dir_all(&dir).ok();
    Ok(CheckoutRun {
        backend: backend.to_string(),
        buyers,
        paysim_latency_ms,
        checkouts: checkouts.len(),
        confirmed,
        other_outcomes: other,
        seconds,
        checkouts_per_second: confirmed as f64 / seconds,
        hold_ms_p50: ms(&holds, 0.5),
        hold_ms_p99: ms(&holds, 0.99),
        checkout_ms_p50: ms(&checkouts, 0.5),
        checkout_ms_p90: ms(&checkouts, 0.9),
        checkout_ms_p99: ms(&checkouts, 0.99),
        checkout_ms_max: ms(&checkouts, 1.0),
    })
}

pub fn print(run: &CheckoutRun) {
    println!(
        "{:>8}: {} buyers, provider latency {} ms: {} checkouts ({} confirmed, {} other) in {:.1} s = {:.0}/s",
        run.backend,
        run.buyers,
        run.paysim_latency_ms,
        run.checkouts,
        run.confirmed,
        run.other_outcomes,
        run.seconds,
        run.checkouts_per_second
    );
    println!(
        "          hold p50 {:.1} ms p99 {:.1} ms; checkout p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms",
        run.hold_ms_p50,
        run.hold_ms_p99,
        run.checkout_ms_p50,
        run.checkout_ms_p90,
        run.checkout_ms_p99,
        run.checkout_ms_max
    );
}
