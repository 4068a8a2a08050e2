//! What an append does after each sending, as data: the outcome of one sending
//! ([`Sent`]) and the next step ([`Next`]), decided by pure functions.
//!
//! The one subtle case is an append sent again after its connection failed with it in
//! flight: the first sending may have committed. Sent again with the same event ids and
//! expected version, at most one of the two can commit, and if the first did, the
//! second runs into it on the log's keys (its version or its event ids are taken, or its
//! command id is recorded). The append is then looked for by its own events, and
//! reported written when they are where it put them: never as a conflict, nor as a
//! duplicate of itself.

use cqrs_core::store::AppendOutcome;

/// Whether an append is sent for the first time, or again after its connection failed
/// with it in flight (so it may already have been written), with the number of sendings
/// so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    First,
    Again(u8),
}

/// How many times an append is sent at most while its connections keep failing. Each
/// sending again runs on a connection checked just before, so this takes a connection
/// failing between its check and its statement, twice in a row.
pub(crate) const SENDINGS: u8 = 3;

impl Attempt {
    /// How many times the append has been sent, this sending included.
    pub(crate) fn sendings(self) -> u8 {
        match self {
            Self::First => 1,
            Self::Again(n) => n,
        }
    }

    /// The sending after this one.
    pub(crate) fn next(self) -> Self {
        match self {
            Self::First => Self::Again(2),
            Self::Again(n) => Self::Again(n.saturating_add(1)),
        }
    }
}

/// One of the log's keys an append ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// (stream type, stream id, version): another append to the stream committed first.
    StreamVersion,
    /// An event id of the append is stored already.
    EventId,
    /// The append's command id is recorded already.
    CommandId,
}

/// What one sending of an append came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written now.
    Written(AppendOutcome),
    /// Its command id was recorded: the original outcome.
    Duplicate(AppendOutcome),
    /// The stream is not at the expected version; nothing was written.
    Stale,
    /// The connection failed with the append in flight: written or not, unknown.
    Lost,
    /// It ran into one of the log's keys; nothing was written.
    Taken(Key),
    /// An inline SQL projection failed; nothing was written.
    InlineSql,
    /// The statement failed otherwise; nothing was written.
    Failed,
}

/// Why an append fails, when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The stream is at another version.
    Conflict,
    /// An event id is taken (which one is looked up for the error).
    EventIdTaken,
    /// An inline SQL projection refused the events.
    InlineSql,
    /// The statement failed.
    Statement,
    /// Its connection failed with it in flight every time it was sent: whether it was
    /// written is unknown.
    Unknown,
}

/// The next step of the append path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The append's outcome.
    Done(AppendOutcome),
    /// Send it again, as [`Attempt::Again`].
    SendAgain,
    /// Look up the outcome recorded for the command id, then [`after_command`].
    FindCommand(Key),
    /// Look for the append's own events (see [`after_own`]).
    FindOwn {
        /// The command id's recorded outcome, which may be the first sending's own.
        recorded: Option<AppendOutcome>,
        /// The failure if the events are not the append's own.
        otherwise: Failure,
    },
    /// Fail.
    Fail(Failure),
}

/// After one sending.
pub(crate) fn after_send(attempt: Attempt, has_command_id: bool, sent: Sent) -> Next {
    match sent {
        Sent::Written(outcome) => Next::Done(outcome),
        Sent::Duplicate(outcome) => duplicate(attempt, outcome),
        Sent::Stale => conflict(attempt),
        // Another append committed the version first: it may be one with this command id.
        Sent::Taken(Key::StreamVersion) if has_command_id => Next::FindCommand(Key::StreamVersion),
        Sent::Taken(Key::StreamVersion) => conflict(attempt),
        Sent::Taken(Key::CommandId) if has_command_id => Next::FindCommand(Key::CommandId),
        Sent::Taken(Key::CommandId) | Sent::Failed => Next::Fail(Failure::Statement),
        Sent::Taken(Key::EventId) => match attempt {
            Attempt::First => Next::Fail(Failure::EventIdTaken),
            Attempt::Again(_) => Next::FindOwn {
                recorded: None,
                otherwise: Failure::EventIdTaken,
            },
        },
        Sent::Lost => match attempt {
            Attempt::Again(sent) if sent >= SENDINGS => Next::Fail(Failure::Unknown),
            Attempt::First | Attempt::Again(_) => Next::SendAgain,
        },
        Sent::InlineSql => Next::Fail(Failure::InlineSql),
    }
}

/// After looking up the command id, because the append ran into `key`: `recorded` is
/// the outcome recorded for it, if any.
///
/// A unique violation is only raised once the competing transaction has committed, so
/// the lookup sees what it recorded.
pub(crate) fn after_command(attempt: Attempt, key: Key, recorded: Option<AppendOutcome>) -> Next {
    match (recorded, key) {
        (Some(outcome), _) => duplicate(
            attempt,
            AppendOutcome {
                duplicate: true,
                ..outcome
            },
        ),
        (None, Key::StreamVersion) => conflict(attempt),
        (None, Key::CommandId | Key::EventId) => Next::Fail(Failure::Statement),
    }
}

/// After looking for the append's own events: `own` is its outcome if all of them are
/// where it put them.
pub(crate) fn after_own(
    own: Option<AppendOutcome>,
    recorded: Option<AppendOutcome>,
    otherwise: Failure,
) -> Next {
    match (own, recorded) {
        // The command id's original is the first sending of this very append.
        (Some(own), Some(recorded)) if own.position == recorded.position => Next::Done(own),
        (_, Some(recorded)) => Next::Done(recorded),
        (Some(own), None) => Next::Done(own),
        (None, None) => Next::Fail(otherwise),
    }
}

fn duplicate(attempt: Attempt, outcome: AppendOutcome) -> Next {
    match attempt {
        Attempt::First => Next::Done(outcome),
        // The original may be this append's own first sending.
        Attempt::Again(_) => Next::FindOwn {
            recorded: Some(outcome),
            otherwise: Failure::Statement,
        },
    }
}

fn conflict(attempt: Attempt) -> Next {
    match attempt {
        Attempt::First => Next::Fail(Failure::Conflict),
        Attempt::Again(_) => Next::FindOwn {
            recorded: None,
            otherwise: Failure::Conflict,
        },
    }
}

#[cfg(test)]
mod tests {
    use cqrs_core::Position;

    use super::*;

    fn outcome(commit: u64, duplicate: bool) -> AppendOutcome {
        AppendOutcome {
            first_version: 1,
            stream_version: 1,
            position: Position::new(commit, 1),
            duplicate,
        }
    }

    #[test]
    fn a_first_sending_reports_what_the_statement_says() {
        let first = Attempt::First;
        assert_eq!(
            after_send(first, false, Sent::Written(outcome(5, false))),
            Next::Done(outcome(5, false))
        );
        assert_eq!(
            after_send(first, true, Sent::Duplicate(outcome(5, true))),
            Next::Done(outcome(5, true))
        );
        assert_eq!(
            after_send(first, true, Sent::Stale),
            Next::Fail(Failure::Conflict)
        );
        assert_eq!(
            after_send(first, false, Sent::Taken(Key::StreamVersion)),
            Next::Fail(Failure::Conflict)
        );
        assert_eq!(
            after_send(first, false, Sent::Taken(Key::EventId)),
            Next::Fail(Failure::EventIdTaken)
        );
        assert_eq!(
            after_send(first, false, Sent::InlineSql),
            Next::Fail(Failure::InlineSql)
        );
        assert_eq!(
            after_send(first, false, Sent::Failed),
            Next::Fail(Failure::Statement)
        );
    }

    #[test]
    fn a_lost_connection_sends_again_up_to_the_limit_then_the_outcome_is_unknown() {
        let mut attempt = Attempt::First;
        for _ in 1..SENDINGS {
            assert_eq!(after_send(attempt, false, Sent::Lost), Next::SendAgain);
            attempt = attempt.next();
        }
        assert_eq!(attempt, Attempt::Again(SENDINGS));
        assert_eq!(
            after_send(attempt, false, Sent::Lost),
            Next::Fail(Failure::Unknown)
        );
    }

    #[test]
    fn a_race_on_a_command_id_returns_the_original() {
        for key in [Key::StreamVersion, Key::CommandId] {
            assert_eq!(
                after_send(Attempt::First, true, Sent::Taken(key)),
                Next::FindCommand(key)
            );
            assert_eq!(
                after_command(Attempt::First, key, Some(outcome(3, false))),
                Next::Done(outcome(3, true)),
                "the recorded outcome is reported as a duplicate"
            );
        }
        assert_eq!(
            after_command(Attempt::First, Key::StreamVersion, None),
            Next::Fail(Failure::Conflict)
        );
        assert_eq!(
            after_command(Attempt::First, Key::CommandId, None),
            Next::Fail(Failure::Statement)
        );
    }

    #[test]
    fn a_sending_again_that_runs_into_the_log_looks_for_its_own_events() {
        for sent in [Sent::Stale, Sent::Taken(Key::StreamVersion)] {
            assert_eq!(
                after_send(Attempt::Again(2), false, sent),
                Next::FindOwn {
                    recorded: None,
                    otherwise: Failure::Conflict
                }
            );
        }
        assert_eq!(
            after_send(Attempt::Again(2), false, Sent::Taken(Key::EventId)),
            Next::FindOwn {
                recorded: None,
                otherwise: Failure::EventIdTaken
            }
        );
        assert_eq!(
            after_send(Attempt::Again(2), true, Sent::Duplicate(outcome(4, true))),
            Next::FindOwn {
                recorded: Some(outcome(4, true)),
                otherwise: Failure::Statement
            }
        );
        assert_eq!(
            after_command(Attempt::Again(2), Key::StreamVersion, None),
            Next::FindOwn {
                recorded: None,
                otherwise: Failure::Conflict
            }
        );
    }

    #[test]
    fn own_events_make_the_append_written_never_a_duplicate_of_itself() {
        let own = outcome(7, false);
        assert_eq!(
            after_own(Some(own), None, Failure::Conflict),
            Next::Done(own)
        );
        assert_eq!(
            after_own(Some(own), Some(outcome(7, true)), Failure::Statement),
            Next::Done(own),
            "the recorded outcome is the first sending's own"
        );
        assert_eq!(
            after_own(Some(own), Some(outcome(2, true)), Failure::Statement),
            Next::Done(outcome(2, true)),
            "another append recorded the command id first"
        );
        assert_eq!(
            after_own(None, Some(outcome(2, true)), Failure::Statement),
            Next::Done(outcome(2, true))
        );
        assert_eq!(
            after_own(None, None, Failure::Conflict),
            Next::Fail(Failure::Conflict)
        );
    }
}
