use cqrs_core::Event;

#[derive(Debug, Event)]
enum Nothing {}

fn main() {}
