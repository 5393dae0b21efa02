//! A small WebDriver client for the browser suite: starts Debian's `chromedriver`, opens
//! headless Chromium sessions (each with a fresh profile), and drives them with the W3C
//! WebDriver protocol over plain HTTP (`reqwest`, already a dependency; a full WebDriver
//! crate would add a large dependency tree for the dozen commands used here).
//!
//! Every wait polls a condition in the page until a deadline; nothing sleeps and hopes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Where Debian puts the driver and the browser (`CHROMEDRIVER` and `CHROMIUM` in the
/// environment name others).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

fn program(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_string())
}
/// Longest the driver may take to start answering.
const DRIVER_START_MS_MAX: u64 = 15_000;
/// How often a condition is polled.
const POLL_INTERVAL_MS: u64 = 50;
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Keys as WebDriver codes them.
pub mod keys {
    pub const ARROW_LEFT: &str = "\u{E012}";
    pub const ARROW_UP: &str = "\u{E013}";
    pub const ARROW_RIGHT: &str = "\u{E014}";
    pub const ARROW_DOWN: &str = "\u{E015}";
    pub const SPACE: &str = "\u{E00D}";
    pub const ENTER: &str = "\u{E007}";
}

/// A running `chromedriver`, stopped when dropped.
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
    profiles: PathBuf,
    browser_path: String,
}

impl Driver {
    /// Starts the driver, or `None` (after printing why) if Chromium or its driver is not
    /// installed: the browser suite is then skipped, as the PostgreSQL suites are without
    /// `DATABASE_URL`. `.ci/run` installs both.
    pub async fn start() -> Option<Driver> {
        let driver_path = program("CHROMEDRIVER", CHROMEDRIVER);
        let browser_path = program("CHROMIUM", CHROMIUM);
        for needed in [&driver_path, &browser_path] {
            if !Path::new(needed).exists() {
                println!(
                    "skipped: browser tests ({needed} not found; `apt-get install chromium chromium-driver`)"
                );
                return None;
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profiles = std::env::temp_dir().join(format!(
            "boxoffice-browser-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profiles).expect("profile dir");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            profiles,
            browser_path,
        };
        let deadline = Instant::now() + Duration::from_millis(DRIVER_START_MS_MAX);
        loop {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        Some(driver)
    }

    /// A new headless browser with a fresh profile, its window `width` × `height`.
    pub async fn browser(&self, width: u32, height: u32) -> Browser {
        let profile = self
            .profiles
            .join(uuid::Uuid::new_v4().simple().to_string());
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let body = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.browser_path, "args": args},
        }}});
        let response: Value = self
            .http
            .post(format!("{}/session", self.url))
            .json(&body)
            .send()
            .await
            .expect("POST /session")
            .json()
            .await
            .expect("session JSON");
        let id = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {response}"))
            .to_string();
        Browser {
            http: self.http.clone(),
            session: format!("{}/session/{id}", self.url),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(error) = response["value"]["error"].as_str() {
            panic!("{method} {path}: {error}: {}", response["value"]["message"]);
        }
        response["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until the JavaScript expression `expr` is truthy and returns its value;
    /// fails naming `what`, with the page's notice, after `timeout_ms`.
    pub async fn wait_for(&self, what: &str, expr: &str, timeout_ms: u64) -> Value {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        loop {
            let value = self.exec(&script, vec![]).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let notice = self
                    .exec(
                        "const n = document.getElementById('notice'); return n ? n.textContent : '';",
                        vec![],
                    )
                    .await;
                let shot = std::env::temp_dir().join(format!(
                    "boxoffice-browser-failure-{}.png",
                    uuid::Uuid::new_v4().simple()
                ));
                self.screenshot(&shot).await;
                panic!(
                    "timed out after {timeout_ms} ms waiting for {what} ({expr}); notice: {notice}; \
                     screenshot: {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// The element matching `css`, waiting up to 5 s for it to appear.
    async fn element(&self, css: &str) -> String {
        let selector = serde_json::to_string(css).expect("a string");
        self.wait_for(
            &format!("an element {css}"),
            &format!("document.querySelector({selector}) !== null"),
            5_000,
        )
        .await;
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {found}"))
            .to_string()
    }

    /// Clicks the element matching `css` as a person would (a real pointer event).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Replaces the text of the input matching `css` with `text`, typed key by key.
    pub async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.send_keys_to(&id, text).await;
    }

    /// Sends keys (see [`keys`]) to the element matching `css`, which gets the focus.
    pub async fn press(&self, css: &str, keys: &str) {
        let id = self.element(css).await;
        self.send_keys_to(&id, keys).await;
    }

    async fn send_keys_to(&self, id: &str, text: &str) {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("the screenshot decodes");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Resizes the window (for a screenshot of a whole page).
    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}
