//! Projector runtime and read models.
