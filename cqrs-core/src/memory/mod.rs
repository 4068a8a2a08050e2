//! The in-memory store and projection runner: the whole contract without a database.

mod documents;
mod process;
mod projector;
mod store;

pub use documents::Documents;
pub use process::ProcessRunner;
pub use projector::{Projector, ProjectorTask};
pub use store::MemoryEventStore;
