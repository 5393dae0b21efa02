//! Beginning a transaction on a pooled connection so that a caller who gives up meanwhile
//! cannot leave that connection in the pool inside a transaction.
//!
//! sqlx 0.8's `Pool::begin` is not cancel-safe on PostgreSQL
//! ([transact-rs/sqlx#4393](https://github.com/transact-rs/sqlx/issues/4393)): it counts
//! the transaction only once the server has answered the `BEGIN`. A future dropped before
//! that answer (a timeout around the operation, an HTTP client that went away, an aborted
//! task) leaves the session inside a transaction that nothing rolls back, and the pool
//! hands the connection to the next user, whose statements then run inside it. For the
//! event store's append, whose `BEGIN` also takes the append lock, that would be a lock
//! held by an idle connection: every append would wait behind it.
//!
//! [`begin`] runs the `BEGIN` in a task of its own. A caller that stops waiting does not
//! stop the task: the `BEGIN` completes, and the transaction it made is dropped in the
//! task, which rolls it back before the connection is used again.

/// Begins a transaction on a connection of `pool`, with `statement` (a custom `BEGIN`) or
/// the backend's plain one, in a task of its own; see the module's documentation.
pub async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    let begun = tokio::spawn(async move {
        match statement {
            Some(statement) => pool.begin_with(statement).await,
            None => pool.begin().await,
        }
    });
    match begun.await {
        Ok(transaction) => transaction,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels the task.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}
