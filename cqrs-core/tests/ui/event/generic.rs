use cqrs_core::Event;

#[derive(Debug, Event)]
enum Wrapped<T> {
    Happened(T),
}

fn main() {}
