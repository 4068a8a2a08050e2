//! Test support (feature `testing`): the storage conformance suite every backend runs,
//! the view conformance suite every projection runner runs, and given/when/then fixtures
//! for aggregates and projections.

pub mod conformance;
mod fixture;
mod golden;
mod process;
pub mod views;

pub use fixture::{AggregateFixture, FixtureResult, ProjectionFixture};
pub use golden::{GoldenError, GoldenSamples};
pub use process::{ProcessFixture, ProcessOutcome};
