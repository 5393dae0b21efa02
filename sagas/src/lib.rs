//! Payment saga, provider client, payment provider simulator.
//!
//! - [`signature`]: webhook signatures, made by the simulator and checked by the server.
//! - [`provider`]: the HTTP client for a Stripe-PaymentIntents-like provider and the
//!   wire types it shares with the simulator.
//! - [`paysim`]: the simulator itself, a stand-alone HTTP server with its own database.

pub mod inbox;
pub mod paysim;
pub mod provider;
pub mod saga;
pub mod signature;
