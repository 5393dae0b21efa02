//! Payment saga, provider client, payment provider simulator.
