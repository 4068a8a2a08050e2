//! An aggregate's state from its stream: the newest usable snapshot and the events after
//! it, folded.

use tracing::{Instrument, field, warn};

use super::{Cqrs, Loaded};
use crate::store::ReplayEvent;
use crate::{Aggregate, Error, EventStore};

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    /// Loads the current state of aggregate `id` (snapshot + tail).
    ///
    /// A snapshot whose state does not deserialise is ignored (with a warning) and the
    /// whole stream is replayed.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a stored event that does not decode, [`Error::Backend`] when
    /// the store fails.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, Error> {
        let span = tracing::debug_span!(
            "cqrs.load",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            stream_version = field::Empty,
            replayed = field::Empty,
        );
        self.load_state(id).instrument(span).await
    }

    async fn load_state(&self, id: &str) -> Result<Loaded<A>, Error> {
        let loaded = self
            .store
            .load_for_command(A::TYPE, id, A::STATE_VERSION)
            .await?;
        let (state, version, events) = match loaded
            .snapshot
            .filter(|snapshot| snapshot.state_version == A::STATE_VERSION)
        {
            None => (A::default(), 0, loaded.events),
            Some(snapshot) => match serde_json::from_value::<A>(snapshot.state) {
                Ok(state) => (state, snapshot.stream_version, loaded.events),
                Err(error) => {
                    warn!(%error, aggregate_id = %id, "snapshot does not deserialise; replaying the whole stream");
                    let events = self.store.load(A::TYPE, id, 0).await?;
                    (
                        A::default(),
                        0,
                        events.into_iter().map(ReplayEvent::from).collect(),
                    )
                }
            },
        };
        let replayed = events.len();
        let loaded = fold(id, state, version, events)?;
        let span = tracing::Span::current();
        span.record("stream_version", loaded.version);
        span.record("replayed", replayed);
        Ok(loaded)
    }
}

/// Folds stored events of aggregate `id` onto a state at `version`, checking that
/// versions are contiguous.
fn fold<A: Aggregate>(
    id: &str,
    mut state: A,
    mut version: u64,
    events: Vec<ReplayEvent>,
) -> Result<Loaded<A>, Error> {
    for raw in events {
        if raw.stream_version != version + 1 {
            return Err(Error::BrokenStream {
                stream_type: A::TYPE.to_owned(),
                stream_id: id.to_owned(),
                expected: version + 1,
                found: raw.stream_version,
            });
        }
        version = raw.stream_version;
        let event = raw.decode::<A::Event>(A::TYPE, id)?;
        state.apply_event(&event);
    }
    Ok(Loaded { state, version })
}
