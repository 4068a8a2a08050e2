//! The in-memory store and projection runner: the whole contract without a database.

mod projector;
mod store;

pub use projector::{Projector, ProjectorTask};
pub use store::MemoryEventStore;
