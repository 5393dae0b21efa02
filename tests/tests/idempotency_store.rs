//! The idempotency-key table on both backends: claim, in flight, mismatch, replay,
//! takeover of an abandoned claim, expiry and purge.

use boxoffice_store::idempotency::{Claim, IdempotencyKeys};
use boxoffice_store::tables::TablePool;
use boxoffice_tests::{backends, open};
use chrono::{Duration, Utc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_stripes_semantics() {
    for backend in backends().await {
        // Opening the event store applies the migrations.
        let _store = open(&backend.url).await;
        let keys = IdempotencyKeys::new(TablePool::connect(&backend.url).await.unwrap());
        let now = Utc::now();
        let (abandoned, ttl) = (Duration::seconds(120), Duration::hours(24));
        let claim = |fp: &'static str, at| keys.claim("usr_a", "k1", fp, at, abandoned, ttl);

        assert_eq!(
            claim("fp1", now).await.unwrap(),
            Claim::Started,
            "{}",
            backend.name
        );
        assert_eq!(claim("fp1", now).await.unwrap(), Claim::InFlight);
        assert_eq!(claim("fp2", now).await.unwrap(), Claim::Mismatch);
        // Keys are per user.
        assert_eq!(
            keys.claim("usr_b", "k1", "fp2", now, abandoned, ttl)
                .await
                .unwrap(),
            Claim::Started
        );

        keys.complete("usr_a", "k1", 201, b"{\"ok\":true}", Some("/v1/x"))
            .await
            .unwrap();
        assert_eq!(
            claim("fp1", now + Duration::hours(23)).await.unwrap(),
            Claim::Replay {
                status: 201,
                body: b"{\"ok\":true}".to_vec(),
                location: Some("/v1/x".into())
            }
        );
        // After the key's lifetime it is forgotten and can start anew.
        assert_eq!(
            claim("fp2", now + Duration::hours(25)).await.unwrap(),
            Claim::Started
        );

        // A claim left unanswered (its process died) is taken over after a while...
        assert_eq!(
            keys.claim("usr_a", "k2", "fp", now, abandoned, ttl)
                .await
                .unwrap(),
            Claim::Started
        );
        assert_eq!(
            keys.claim(
                "usr_a",
                "k2",
                "fp",
                now + Duration::seconds(60),
                abandoned,
                ttl
            )
            .await
            .unwrap(),
            Claim::InFlight
        );
        assert_eq!(
            keys.claim(
                "usr_a",
                "k2",
                "fp",
                now + Duration::seconds(200),
                abandoned,
                ttl
            )
            .await
            .unwrap(),
            Claim::Started
        );
        // ...and one released after a server error can be used again at once.
        keys.release("usr_a", "k2").await.unwrap();
        assert_eq!(
            keys.claim("usr_a", "k2", "other", now, abandoned, ttl)
                .await
                .unwrap(),
            Claim::Started
        );

        let purged = keys.purge(now + Duration::days(3)).await.unwrap();
        assert!(purged >= 3, "{}: purged {purged}", backend.name);
        assert_eq!(
            keys.claim("usr_b", "k1", "fp3", now, abandoned, ttl)
                .await
                .unwrap(),
            Claim::Started
        );
    }
}

/// Claims are group-committed by one writer: many at once, some for the same key, still
/// give each key to exactly one request, and the others see it in flight or replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_give_each_key_to_exactly_one_request() {
    for backend in backends().await {
        let _store = open(&backend.url).await;
        let keys = std::sync::Arc::new(IdempotencyKeys::new(
            TablePool::connect(&backend.url).await.unwrap(),
        ));
        let now = Utc::now();
        let (abandoned, ttl) = (Duration::seconds(120), Duration::hours(24));
        // 40 keys, each claimed by 5 requests at once.
        let mut tasks = tokio::task::JoinSet::new();
        for attempt in 0..5 {
            for k in 0..40 {
                let keys = std::sync::Arc::clone(&keys);
                tasks.spawn(async move {
                    let key = format!("k{k}");
                    let claim = keys
                        .claim("usr_c", &key, "fp", now, abandoned, ttl)
                        .await
                        .unwrap();
                    if claim == Claim::Started {
                        keys.complete("usr_c", &key, 201, key.as_bytes(), None)
                            .await
                            .unwrap();
                    }
                    (k, attempt, claim)
                });
            }
        }
        let mut started = vec![0; 40];
        let mut others = 0;
        while let Some(done) = tasks.join_next().await {
            let (k, _, claim) = done.unwrap();
            match claim {
                Claim::Started => started[k] += 1,
                Claim::InFlight => others += 1,
                Claim::Replay { status, body, .. } => {
                    assert_eq!((status, body), (201, format!("k{k}").into_bytes()));
                    others += 1;
                }
                Claim::Mismatch => panic!("{}: the same request is no mismatch", backend.name),
            }
        }
        assert!(
            started.iter().all(|&n| n == 1),
            "{}: each key started once: {started:?}",
            backend.name
        );
        assert_eq!(others, 160);
        // Afterwards every key replays what its first request stored.
        for k in 0..40 {
            let key = format!("k{k}");
            assert_eq!(
                keys.claim("usr_c", &key, "fp", now, abandoned, ttl)
                    .await
                    .unwrap(),
                Claim::Replay {
                    status: 201,
                    body: key.clone().into_bytes(),
                    location: None
                },
                "{}",
                backend.name
            );
        }
        // A day later every key has expired: three requests at once per key, another
        // request than before, find it stale in one batch; one takes it over and the
        // others see it in flight.
        let later = now + Duration::hours(25);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..3 {
            for k in 0..40 {
                let keys = std::sync::Arc::clone(&keys);
                tasks.spawn(async move {
                    let claim = keys
                        .claim("usr_c", &format!("k{k}"), "fp2", later, abandoned, ttl)
                        .await
                        .unwrap();
                    (k, claim)
                });
            }
        }
        let mut started = vec![0; 40];
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                (k, Claim::Started) => started[k] += 1,
                (_, Claim::InFlight) => {}
                (k, other) => panic!("{}: k{k} found {other:?}", backend.name),
            }
        }
        assert!(
            started.iter().all(|&n| n == 1),
            "{}: each stale key taken over once: {started:?}",
            backend.name
        );
        // Released in one go, the keys can be claimed again by any request.
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..40 {
            let keys = std::sync::Arc::clone(&keys);
            tasks.spawn(async move { keys.release("usr_c", &format!("k{k}")).await.unwrap() });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        for k in 0..40 {
            assert_eq!(
                keys.claim("usr_c", &format!("k{k}"), "fp3", later, abandoned, ttl)
                    .await
                    .unwrap(),
                Claim::Started,
                "{}",
                backend.name
            );
        }
    }
}
