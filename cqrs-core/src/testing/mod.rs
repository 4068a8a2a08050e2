//! Test support (feature `testing`): the storage conformance suite every backend runs,
//! and given/when/then fixtures for aggregates and projections.

pub mod conformance;
mod fixture;

pub use fixture::{AggregateFixture, FixtureResult, ProjectionFixture};
