//! The seat-map page in a real headless browser (Debian's Chromium through
//! chromedriver), against the real server on port 0: two buyers, one buys two seats
//! while the other sees them turn sold; a hold expires on screen; a sold-out show offers
//! the waitlist and the offer arrives; the organizer's dashboard follows the sales. The
//! tests take the screenshots the README links: into a temporary directory, or into
//! `SCREENSHOT_DIR` when set, so that a test run leaves the committed ones alone and
//! `SCREENSHOT_DIR=$PWD/docs/screenshots` refreshes them.
//!
//! Skipped, saying so, when Chromium or chromedriver is not installed. SQLite only: the
//! page sees the same API on both backends, which the HTTP suites already cover. The
//! tests run one at a time (a lock) so that two browsers never compete with another
//! test's two for this machine's cores; each wait is a bounded poll of the page.
//!
//! `WEB_DIR=$PWD/web` serves the page from the working tree instead of the copy built
//! into the binary, so an edit to the page needs no rebuild to be tested.

use std::path::PathBuf;

use boxoffice_api::auth::Role;
use boxoffice_tests::browser::{Browser, Driver, keys};
use boxoffice_tests::fresh_sqlite_url;
use boxoffice_tests::http::{Server, TestUser};
use reqwest::Method as M;
use serde_json::{Value, json};
use tokio::time::Instant;

/// One browser test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest a page may take to show something the API already did.
const PAGE_WAIT_MS: u64 = 10_000;
/// Longest a seat change may take to reach another buyer's page. The issue asks for
/// "within a second"; the bound leaves room for a loaded CI machine, and the time
/// actually taken is printed.
const LIVE_WAIT_MS: u64 = 3_000;

fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("boxoffice-screenshots"));
    let path = dir.join(format!("{name}.png"));
    println!("screenshot: {}", path.display());
    path
}

/// The server, serving the page from `WEB_DIR` if that is set.
async fn start_server() -> Server {
    let dir = std::env::temp_dir().join(format!("boxoffice-web-{}", uuid::Uuid::new_v4().simple()));
    let mut config = boxoffice_api::Config::for_tests(fresh_sqlite_url(), dir);
    config.web_dir = std::env::var_os("WEB_DIR").map(PathBuf::from);
    Server::start_with(config).await
}

/// A show made by `organizer` through the API; returns its id.
async fn create_show(server: &Server, organizer: &TestUser, body: Value) -> String {
    let response = server
        .req(M::POST, "/v1/shows", &organizer.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let show: Value = response.json().await.unwrap();
    show["show_id"].as_str().unwrap().to_string()
}

fn show_body(name: &str, limits: Value, sections: Value) -> Value {
    json!({
        "name": name,
        "venue": {"name": "Coliseu", "city": "Lisbon", "country": "PT", "timezone": "Europe/Lisbon"},
        "starts_at": "2030-05-01T20:00:00Z",
        "currency": "EUR",
        "limits": limits,
        "price_tiers": [{"id": "A", "name": "Front", "price": "80.00"},
                        {"id": "B", "name": "Back", "price": "45.00"}],
        "sections": sections,
    })
}

/// What every test starts with: its turn (one browser test at a time), the WebDriver,
/// a fresh server, an organizer and the show the test buys from. `None` (the test is
/// skipped) without Chromium or chromedriver.
struct Stage {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    driver: Driver,
    started: Instant,
    server: Server,
    base: String,
    organizer: TestUser,
    show_id: String,
}

async fn stage(name: &str, limits: Value, sections: Value) -> Option<Stage> {
    let serial = SERIAL.lock().await;
    let driver = Driver::start().await?;
    let started = Instant::now();
    let server = start_server().await;
    let base = server.base.clone();
    let organizer = server.user(&[Role::Organizer]).await;
    let show_id = create_show(&server, &organizer, show_body(name, limits, sections)).await;
    Some(Stage {
        _serial: serial,
        driver,
        started,
        server,
        base,
        organizer,
        show_id,
    })
}

/// Signs in through the page's form (the account exists already).
async fn sign_in(browser: &Browser, base: &str, user: &TestUser, path: &str) {
    browser.goto(&format!("{base}{path}")).await;
    browser.fill("#auth-email", &user.email).await;
    browser.fill("#auth-password", &user.password).await;
    browser.click("#sign-in").await;
    browser
        .wait_for("signed in", "document.getElementById('who')", PAGE_WAIT_MS)
        .await;
}

fn seat(id: &str) -> String {
    format!("[data-seat=\"{id}\"]")
}

fn seat_status(id: &str) -> String {
    format!("document.querySelector('{}')?.dataset.status", seat(id))
}

async fn wait_seat(browser: &Browser, id: &str, status: &str, timeout_ms: u64) {
    browser
        .wait_for(
            &format!("seat {id} {status}"),
            &format!("{} === '{status}'", seat_status(id)),
            timeout_ms,
        )
        .await;
}

/// Lists what falls short of WCAG AA contrast on the page: seat outlines under 3:1
/// against the white map, texts under 4.5:1 against their nearest opaque background
/// (disabled controls are exempt, as WCAG says).
const CONTRAST_CHECK: &str = r#"
const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
const parse = (c) => c.match(/[\d.]+/g).map(Number);
const lum = (c) => { const [r, g, b] = parse(c); return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b); };
const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    const p = parse(c);
    if (p.length < 4 || p[3] === 1) return c;
  }
  return 'rgb(255, 255, 255)';
};
const poor = [];
for (const c of document.querySelectorAll('[data-seat] circle')) {
  const r = ratio(getComputedStyle(c).stroke, 'rgb(255, 255, 255)');
  if (r < 3) poor.push(`${c.parentNode.dataset.seat} outline ${r.toFixed(2)}`);
}
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') || el.matches(':disabled') || el.offsetParent === null) continue;
  const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!text) continue;
  const r = ratio(getComputedStyle(el).color, background(el));
  if (r < 4.5) poor.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${r.toFixed(2)}`);
}
return poor;
"#;

/// The text of the page's notice.
async fn notice(browser: &Browser) -> String {
    browser
        .exec(
            "return document.getElementById('notice').textContent;",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buyers_one_buys_while_the_other_watches_and_the_organizer_sees_the_sales() {
    let Some(Stage {
        _serial,
        driver,
        started,
        server,
        base,
        organizer,
        show_id,
    }) = stage(
        "Fado night",
        json!({"max_tickets_per_user": 6}),
        json!([
            {"id": "101", "name": "Stalls", "kind": "seated",
             "rows": [{"row": "A", "seats": 12, "tier": "A"}, {"row": "B", "seats": 12, "tier": "A"},
                      {"row": "C", "seats": 14, "tier": "B"}, {"row": "D", "seats": 14, "tier": "B"}]},
            {"id": "floor", "name": "Standing", "kind": "general_admission", "capacity": 40, "tier": "B"}
        ]),
    )
    .await
    else {
        return;
    };

    // Buyer one signs up on the page, finds the show by searching, and opens it.
    let one = driver.browser(1280, 1000).await;
    one.goto(&format!("{base}/")).await;
    one.click("#open-sign-in").await;
    let email = format!("{}@example.test", uuid::Uuid::now_v7().simple());
    one.fill("#auth-email", &email).await;
    one.fill("#auth-password", "a long password").await;
    one.fill("#auth-name", "Ana").await;
    one.click("#sign-up").await;
    one.wait_for("signed up", "document.getElementById('who')", PAGE_WAIT_MS)
        .await;
    one.fill("#search-q", "fado").await;
    one.press("#search-q", keys::ENTER).await;
    one.wait_for(
        "the show in the search results",
        &format!("document.querySelector('[data-show=\"{show_id}\"] a')"),
        PAGE_WAIT_MS,
    )
    .await;
    one.click(&format!("[data-show=\"{show_id}\"] a")).await;
    wait_seat(&one, "101-A-6", "available", PAGE_WAIT_MS).await;

    // Buyer two, signed in, watches the same map.
    let buyer_two = server.user(&[]).await;
    let two = driver.browser(1280, 1000).await;
    sign_in(&two, &base, &buyer_two, &format!("/shows/{show_id}")).await;
    wait_seat(&two, "101-A-6", "available", PAGE_WAIT_MS).await;
    two.wait_for(
        "the live stream",
        "document.getElementById('live').dataset.state === 'live'",
        PAGE_WAIT_MS,
    )
    .await;

    // Buyer one picks two seats by clicking and holds them.
    one.click(&seat("101-A-6")).await;
    one.click(&seat("101-A-7")).await;
    one.wait_for(
        "two seats selected",
        "document.querySelectorAll('[data-seat].selected').length === 2",
        PAGE_WAIT_MS,
    )
    .await;
    one.click("#hold-button").await;
    one.wait_for(
        "the hold with its countdown",
        "document.getElementById('countdown')?.textContent.includes(':')",
        PAGE_WAIT_MS,
    )
    .await;
    let held_at = Instant::now();
    wait_seat(&two, "101-A-6", "held", LIVE_WAIT_MS).await;
    wait_seat(&two, "101-A-7", "held", LIVE_WAIT_MS).await;
    println!(
        "the hold reached the other browser within {} ms",
        held_at.elapsed().as_millis()
    );
    // The other buyer cannot pick a held seat, and is told why.
    two.click(&seat("101-A-6")).await;
    two.wait_for(
        "the reason a held seat cannot be chosen",
        "document.getElementById('notice').textContent.includes('held')",
        PAGE_WAIT_MS,
    )
    .await;
    assert_eq!(
        two.exec(
            "return document.querySelectorAll('[data-seat].selected').length;",
            vec![]
        )
        .await,
        json!(0)
    );
    // Some seats around them sold and held, so the screenshot shows every state.
    let other = server.user(&[]).await;
    for (seats, pay) in [
        (json!(["101-B-5", "101-B-6", "101-B-7"]), true),
        (json!(["101-C-2"]), false),
    ] {
        let r: Value = server
            .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &other.token)
            .json(&json!({"seats": seats}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pay {
            let paid = server
                .req(
                    M::POST,
                    &format!(
                        "/v1/reservations/{}/checkout?wait_seconds=10",
                        r["reservation_id"].as_str().unwrap()
                    ),
                    &other.token,
                )
                .json(&json!({"payment_token": "tok_visa"}))
                .send()
                .await
                .unwrap();
            assert_eq!(paid.status(), 200);
        }
    }
    wait_seat(&two, "101-B-6", "sold", PAGE_WAIT_MS).await;
    two.click(&seat("101-B-10")).await;
    two.click(&seat("101-B-11")).await;
    two.resize(1280, 1150).await;
    two.screenshot(&screenshot_path("seat-map")).await;
    // Contrast (WCAG AA): every seat's outline at least 3:1 against the map, every text
    // at least 4.5:1 against the background it is drawn on.
    let poor = two.exec(CONTRAST_CHECK, vec![]).await;
    assert_eq!(poor, json!([]), "colours below WCAG AA contrast");
    // The same page on a phone: the map above the panels, scaled to the screen.
    two.resize(390, 844).await;
    two.wait_for(
        "the phone layout",
        "document.querySelector('svg.map').getBoundingClientRect().width < 390",
        PAGE_WAIT_MS,
    )
    .await;
    two.screenshot(&screenshot_path("seat-map-phone")).await;
    two.resize(1280, 1000).await;
    two.click(&seat("101-B-10")).await;
    two.click(&seat("101-B-11")).await;

    // Buyer one pays with the test card: the order with both tickets and their QR codes.
    one.click("#pay-button").await;
    one.wait_for(
        "the order's two tickets with their QR codes",
        "document.querySelectorAll('#tickets img').length === 2 && \
         [...document.querySelectorAll('#tickets img')].every(i => i.complete && i.naturalWidth > 0)",
        PAGE_WAIT_MS,
    )
    .await;
    one.screenshot(&screenshot_path("checkout")).await;
    // ... and buyer two sees both seats turn sold.
    wait_seat(&two, "101-A-6", "sold", LIVE_WAIT_MS).await;
    wait_seat(&two, "101-A-7", "sold", LIVE_WAIT_MS).await;

    // A reload keeps the order on screen (the page remembers the reservation).
    one.goto(&format!("{base}/shows/{show_id}")).await;
    one.wait_for(
        "the order after a reload",
        "document.querySelectorAll('#tickets li').length === 2",
        PAGE_WAIT_MS,
    )
    .await;

    // The organizer's dashboard: five sold (two here, three by the API), revenue by tier,
    // and it follows a new hold live.
    let org = driver.browser(1280, 1000).await;
    sign_in(
        &org,
        &base,
        &organizer,
        &format!("/organizer/shows/{show_id}"),
    )
    .await;
    org.wait_for(
        "five tickets sold",
        "document.querySelector('#stat-sold .value').textContent === '5'",
        PAGE_WAIT_MS,
    )
    .await;
    org.wait_for(
        "the revenue by tier",
        "document.querySelector('#tiers [data-tier=\"A\"]')?.textContent.includes('400.00 EUR')",
        PAGE_WAIT_MS,
    )
    .await;
    let held_before: u64 = org
        .exec(
            "return document.querySelector('#stat-held .value').textContent;",
            vec![],
        )
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let third = server.user(&[]).await;
    let ga = server
        .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &third.token)
        .json(&json!({"section": "floor", "quantity": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(ga.status(), 201);
    org.wait_for(
        "four more held, live",
        &format!(
            "document.querySelector('#stat-held .value').textContent === '{}'",
            held_before + 4
        ),
        PAGE_WAIT_MS,
    )
    .await;
    org.wait_for(
        "the new hold in the report",
        "document.querySelector('#holds [data-hold=\"created\"] .num')?.textContent === '4'",
        PAGE_WAIT_MS,
    )
    .await;
    org.resize(1280, 1350).await;
    org.screenshot(&screenshot_path("organizer-dashboard"))
        .await;

    // A buyer is told the dashboard is not theirs.
    two.goto(&format!("{base}/organizer/shows/{show_id}")).await;
    two.wait_for(
        "the dashboard refusing a buyer",
        "document.getElementById('notice').textContent.includes('organizer')",
        PAGE_WAIT_MS,
    )
    .await;

    for browser in [one, two, org] {
        browser.close().await;
    }
    server.stop().await;
    drop(driver);
    println!(
        "two buyers and the organizer: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_selection_a_hold_that_expires_on_screen_and_a_declined_card() {
    // The shortest hold a show may have, so that it expires within the test.
    let Some(Stage {
        _serial,
        driver,
        started,
        server,
        base,
        organizer: _,
        show_id,
    }) = stage(
        "Matinee",
        json!({"hold_ttl_seconds": 10}),
        json!([{"id": "1", "name": "Hall", "kind": "seated",
                "rows": [{"row": "A", "seats": 6, "tier": "A"}, {"row": "B", "seats": 6, "tier": "B"}]}]),
    )
    .await
    else {
        return;
    };
    let buyer = server.user(&[]).await;
    let page = driver.browser(1000, 900).await;
    sign_in(&page, &base, &buyer, &format!("/shows/{show_id}")).await;
    wait_seat(&page, "1-A-1", "available", PAGE_WAIT_MS).await;

    // The keyboard alone: the first seat is the tab stop; right, down, Space chooses B-2;
    // Enter on it again unchooses it, Space chooses it again.
    let tab_stop = page
        .exec(
            "return document.querySelector('.seat[tabindex=\"0\"]').dataset.seat;",
            vec![],
        )
        .await;
    assert_eq!(tab_stop, json!("1-A-1"));
    page.press(&seat("1-A-1"), keys::ARROW_RIGHT).await;
    page.wait_for(
        "focus on A-2",
        "document.activeElement?.dataset.seat === '1-A-2'",
        PAGE_WAIT_MS,
    )
    .await;
    page.press(&seat("1-A-2"), keys::ARROW_DOWN).await;
    page.wait_for(
        "focus on B-2",
        "document.activeElement?.dataset.seat === '1-B-2'",
        PAGE_WAIT_MS,
    )
    .await;
    page.press(&seat("1-B-2"), keys::SPACE).await;
    page.wait_for(
        "B-2 checked",
        &format!(
            "document.querySelector('{}').getAttribute('aria-checked') === 'true'",
            seat("1-B-2")
        ),
        PAGE_WAIT_MS,
    )
    .await;
    page.press(&seat("1-B-2"), keys::ENTER).await;
    page.wait_for(
        "B-2 unchecked",
        &format!(
            "document.querySelector('{}').getAttribute('aria-checked') === 'false'",
            seat("1-B-2")
        ),
        PAGE_WAIT_MS,
    )
    .await;
    page.press(&seat("1-B-2"), keys::SPACE).await;
    let label = page
        .exec(
            &format!(
                "return document.querySelector('{}').getAttribute('aria-label');",
                seat("1-B-2")
            ),
            vec![],
        )
        .await;
    assert_eq!(
        label,
        json!("Row B seat 2, Hall, tier Back, 45.00 EUR, available")
    );

    // Held: the countdown runs, and when it reaches zero the page says the hold expired
    // and the seat is back on the map.
    page.click("#hold-button").await;
    page.wait_for(
        "the countdown",
        "document.getElementById('countdown')?.textContent.includes(':')",
        PAGE_WAIT_MS,
    )
    .await;
    wait_seat(&page, "1-B-2", "held", PAGE_WAIT_MS).await;
    let held = Instant::now();
    page.wait_for(
        "the hold expiring on screen",
        "document.getElementById('hold-expired') !== null",
        25_000,
    )
    .await;
    println!(
        "the hold expired on screen after {} ms",
        held.elapsed().as_millis()
    );
    assert!(notice(&page).await.contains("expired"));
    wait_seat(&page, "1-B-2", "available", PAGE_WAIT_MS).await;

    // A declined card: the page says so in words and the seat is released.
    page.click("[id='hold-expired'] button").await;
    page.click(&seat("1-A-3")).await;
    page.click("#hold-button").await;
    page.wait_for(
        "the pay form",
        "document.getElementById('card-token')",
        PAGE_WAIT_MS,
    )
    .await;
    page.click("#card-token").await;
    page.click("#card-token option[value='tok_declined']").await;
    page.wait_for(
        "the declined test card chosen",
        "document.getElementById('card-token').value === 'tok_declined'",
        PAGE_WAIT_MS,
    )
    .await;
    page.click("#pay-button").await;
    page.wait_for(
        "the declined card explained",
        "document.getElementById('notice').textContent.includes('declined')",
        PAGE_WAIT_MS,
    )
    .await;
    let text = notice(&page).await;
    assert!(!text.contains('{'), "a raw problem on screen: {text}");
    wait_seat(&page, "1-A-3", "available", PAGE_WAIT_MS).await;

    // Seats taken by someone else between choosing and holding: the page drops them and
    // says so.
    page.click(&seat("1-A-5")).await;
    let rival = server.user(&[]).await;
    let taken = server
        .req(M::POST, &format!("/v1/shows/{show_id}/holds"), &rival.token)
        .json(&json!({"seats": ["1-A-5"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 201);
    page.wait_for(
        "the taken seat explained",
        "document.getElementById('notice').textContent.includes('just taken')",
        PAGE_WAIT_MS,
    )
    .await;
    assert_eq!(
        page.exec(
            "return document.querySelectorAll('[data-seat].selected').length;",
            vec![]
        )
        .await,
        json!(0)
    );

    // Best available, then a cancelled hold: the seat the server chose comes back.
    page.click("#best-button").await;
    page.wait_for(
        "the best available seat held",
        "document.querySelectorAll('#held-seats li').length === 1",
        PAGE_WAIT_MS,
    )
    .await;
    let chosen = page
        .wait_for(
            "the chosen seat shown held on the map",
            "[...document.querySelectorAll('[data-seat]')].filter(s => s.dataset.status === 'held' \
             && s.dataset.seat !== '1-A-5').map(s => s.dataset.seat)[0]",
            PAGE_WAIT_MS,
        )
        .await;
    let chosen = chosen.as_str().unwrap().to_string();
    page.click("#cancel-hold").await;
    page.wait_for(
        "the seat choice again after cancelling",
        "document.getElementById('choose') && !document.getElementById('hold-panel')",
        PAGE_WAIT_MS,
    )
    .await;
    wait_seat(&page, &chosen, "available", PAGE_WAIT_MS).await;

    page.close().await;
    server.stop().await;
    drop(driver);
    println!(
        "keyboard, expiry and decline: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_show_offers_the_waitlist_and_the_offer_arrives() {
    let Some(Stage {
        _serial,
        driver,
        started,
        server,
        base,
        organizer: _,
        show_id,
    }) = stage(
        "Last tickets",
        json!({"waitlist_claim_seconds": 60}),
        json!([{"id": "1", "name": "Box", "kind": "seated",
                "rows": [{"row": "A", "seats": 2, "tier": "A"}]}]),
    )
    .await
    else {
        return;
    };
    // Someone holds every seat: the show is sold out.
    let holder = server.user(&[]).await;
    let hold: Value = server
        .req(
            M::POST,
            &format!("/v1/shows/{show_id}/holds"),
            &holder.token,
        )
        .json(&json!({"seats": ["1-A-1", "1-A-2"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reservation = hold["reservation_id"].as_str().unwrap().to_string();

    let buyer = server.user(&[]).await;
    let page = driver.browser(1000, 900).await;
    sign_in(&page, &base, &buyer, &format!("/shows/{show_id}")).await;
    page.wait_for(
        "the waitlist offered",
        "document.getElementById('join-waitlist')",
        PAGE_WAIT_MS,
    )
    .await;
    page.click("#join-waitlist").await;
    page.wait_for(
        "the waitlist position",
        "document.getElementById('waitlist-position')?.textContent === '1'",
        PAGE_WAIT_MS,
    )
    .await;

    // The holder lets go; the seat goes to the waitlist, and the offer shows up on the
    // page with its claim countdown.
    let cancelled = server
        .req(
            M::DELETE,
            &format!("/v1/reservations/{reservation}"),
            &holder.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    page.wait_for(
        "the offer with its countdown",
        "document.getElementById('hold-panel')?.dataset.origin === 'waitlist' && \
         document.getElementById('countdown')?.textContent.includes(':')",
        PAGE_WAIT_MS,
    )
    .await;
    page.click("#pay-button").await;
    page.wait_for(
        "the claimed ticket",
        "document.querySelectorAll('#tickets li').length === 1",
        PAGE_WAIT_MS,
    )
    .await;
    let sold = page
        .exec(
            "return document.querySelectorAll('[data-seat].sold').length;",
            vec![],
        )
        .await;
    assert!(sold.as_u64().unwrap() >= 1, "{sold}");

    page.close().await;
    server.stop().await;
    drop(driver);
    println!("waitlist: {} ms", started.elapsed().as_millis());
}
