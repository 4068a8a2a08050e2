//! Placeholder replaced by the runnable walkthrough.
fn main() {}
