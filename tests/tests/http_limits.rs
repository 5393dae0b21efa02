//! Rate limits over HTTP: a user or an IP over its limit gets 429 `rate_limited` with
//! `Retry-After`, and others are not affected.

use boxoffice_api::Config;
use boxoffice_tests::backends;
use boxoffice_tests::http::Server;
use reqwest::Method as M;
use serde_json::Value;

async fn burst(
    server: &Server,
    token: Option<&str>,
    n: usize,
) -> (usize, Option<Value>, Option<String>) {
    let mut limited = 0;
    let mut example = None;
    let mut retry_after = None;
    for _ in 0..n {
        let request = match token {
            Some(t) => server.req(M::GET, "/v1/shows", t),
            None => server.client.get(format!("{}/v1/shows", server.base)),
        };
        let response = request.send().await.unwrap();
        if response.status() == 429 {
            limited += 1;
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            example = Some(response.json().await.unwrap());
        }
    }
    (limited, example, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_ips_over_their_limits_get_429() {
    let backend = backends().await.remove(0);
    let dir = std::env::temp_dir().join(format!(
        "boxoffice-limits-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut config = Config::for_tests(backend.url.clone(), dir.clone());
    config.rate_limit_per_user = 2;
    config.rate_limit_per_ip = 0;
    let server = Server::start_with(config).await;
    let greedy = server.user(&[]).await.token;
    let calm = server.user(&[]).await.token;
    // A burst of 4 is allowed, then about 2 per second: 20 at once must hit the limit.
    let (limited, example, retry_after) = burst(&server, Some(&greedy), 20).await;
    assert!(limited >= 10, "only {limited} of 20 were limited");
    let example = example.unwrap();
    assert_eq!(example["code"], "rate_limited");
    assert_eq!(example["status"], 429);
    assert!(retry_after.unwrap().parse::<u32>().unwrap() >= 1);
    // Another user is not affected.
    assert_eq!(burst(&server, Some(&calm), 3).await.0, 0);
    server.stop().await;

    let mut config = Config::for_tests(backend.url.clone(), dir);
    config.rate_limit_per_user = 0;
    config.rate_limit_per_ip = 3;
    let server = Server::start_with(config).await;
    let (limited, example, _) = burst(&server, None, 20).await;
    assert!(limited >= 10, "only {limited} of 20 were limited by IP");
    assert_eq!(example.unwrap()["code"], "rate_limited");
    server.stop().await;
}
