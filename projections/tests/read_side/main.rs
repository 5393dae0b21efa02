//! The read side against real stores: every test runs on a fresh SQLite database and,
//! when `DATABASE_URL` is set, on a fresh PostgreSQL database of its own.

mod analytics;
mod audit;
mod copy;
mod delivery;
mod notifications;
mod orders;
mod runtime;
mod support;
mod swap;
