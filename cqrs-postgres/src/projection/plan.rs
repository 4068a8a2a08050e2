//! What a projection's worker does with a batch it has read, decided by a pure function
//! over the projection's row ([`Row`]) and the window ([`Window`]): the [`Plan`].

use cqrs_core::Position;

use crate::db::Header;

/// The projection's row as a batch read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Row {
    /// The row is gone (deleted by an operator): register and claim it again.
    Gone,
    /// An operator asked for a rebuild.
    RebuildRequested,
    /// Stopped at a failing event until an operator acts.
    Failed,
    /// Running.
    Live {
        /// The checkpoint.
        position: Position,
        /// The newest event a reader can see.
        head: Position,
        /// Whether this version is served, or which one is.
        serving: Serving,
        /// Replaying the log from the start after a rebuild.
        rebuilding: bool,
    },
}

/// Whether a version is the one readers are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serving {
    /// It is.
    Served,
    /// It is not; `current` is the served version of its name, if any.
    Beside { current: Option<u32> },
}

impl Row {
    /// The row of a batch's header (`None`: no row).
    pub(super) fn of(header: Option<&Header>) -> Self {
        let Some(header) = header else {
            return Self::Gone;
        };
        if header.rebuild_requested {
            return Self::RebuildRequested;
        }
        if header.failed {
            return Self::Failed;
        }
        let serving = if header.active {
            Serving::Served
        } else {
            Serving::Beside {
                // A stored version that is not a u32 is older than any of ours.
                current: header.active_version.map(|v| u32::try_from(v).unwrap_or(0)),
            }
        };
        Self::Live {
            position: header.position,
            head: header.head,
            serving,
            rebuilding: header.rebuilding,
        }
    }
}

/// The window a batch read, and where the worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// The worker's checkpoint: the window starts after it.
    pub(super) at: Position,
    /// Where the window was cut short, while a failing event is narrowed down.
    pub(super) until: Option<Position>,
    /// Whether the batch was read ahead, before the previous one committed (its row may
    /// show the checkpoint before that commit).
    pub(super) read_ahead: bool,
    /// How many events the window held, wanted or not.
    pub(super) scanned: u64,
    /// The last event the window held, if any.
    pub(super) covered: Option<Position>,
    /// How many of them the projection wants.
    pub(super) wanted: usize,
    /// The most events a window holds.
    pub(super) limit: usize,
}

/// The `state` a checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    Running,
    CaughtUp,
    Rebuilding,
}

impl Stored {
    /// As stored in the `state` column.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::CaughtUp => "caught_up",
            Self::Rebuilding => "rebuilding",
        }
    }
}

/// A batch to commit: its events (if any) applied, then the checkpoint moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Commit {
    /// The new checkpoint.
    pub(super) to: Position,
    /// The state it records.
    pub(super) state: Stored,
    /// Whether the version is still replaying the log after a rebuild.
    pub(super) rebuilding: bool,
    /// Whether this version becomes the served one (blue/green), in the same transaction.
    pub(super) serve: bool,
    /// Whether this batch ends a rebuild.
    pub(super) ends_rebuild: bool,
    /// Whether the window reached the head: the view is current up to `to`.
    pub(super) caught_up: bool,
    /// The newest event a reader could see.
    pub(super) head: Position,
    /// Whether to read the next window while this one is applied.
    pub(super) read_next: bool,
}

impl Commit {
    /// Whether the batch needs a transaction of the view's: it has events to apply, or
    /// makes the version the served one. Otherwise the checkpoint moves on its own.
    pub(super) fn needs_view(self, wanted: usize) -> bool {
        wanted > 0 || self.serve
    }
}

/// What the worker does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// The row is gone: stop, to be registered and claimed again.
    Missing,
    /// Reset the view and the checkpoint, as an operator asked.
    Rebuild,
    /// Wait for an operator (the projection is stopped at a failing event).
    Failed,
    /// Someone else moved the checkpoint (an operator's skip, another owner): take it.
    Moved(Position),
    /// Nothing to do; everything up to `head` is applied.
    Idle { head: Position },
    /// Commit a batch.
    Commit(Commit),
}

/// Decides what to do with a batch of `version` that read `row` and `window`.
pub(super) fn plan(row: Row, window: Window, version: u32) -> Plan {
    let (position, head, serving, rebuilding) = match row {
        Row::Gone => return Plan::Missing,
        Row::RebuildRequested => return Plan::Rebuild,
        Row::Failed => return Plan::Failed,
        Row::Live {
            position,
            head,
            serving,
            rebuilding,
        } => (position, head, serving, rebuilding),
    };
    // A batch read ahead saw the row before the previous batch committed; the fence of
    // the commit still catches a checkpoint moved by someone else.
    if !window.read_ahead && position != window.at {
        return Plan::Moved(position);
    }
    let full = usize::try_from(window.scanned).unwrap_or(usize::MAX) >= window.limit;
    // Not cut short by the window's size or bound: it covered the log up to the head, and
    // the view is current up to there.
    let caught_up = !full && window.until.is_none();
    let covered = window.covered.unwrap_or(window.at).max(window.at);
    let to = if caught_up {
        covered.max(head)
    } else {
        covered
    };
    let serve = caught_up
        && match serving {
            Serving::Served => false,
            Serving::Beside { current } => current.is_none_or(|current| current < version),
        };
    let ends_rebuild = caught_up && rebuilding;
    if window.wanted == 0 && to == window.at && !serve && !ends_rebuild {
        return Plan::Idle { head };
    }
    let still_rebuilding = rebuilding && !caught_up;
    let served_after = serving == Serving::Served || serve;
    let state = if still_rebuilding || !served_after {
        Stored::Rebuilding
    } else if caught_up {
        Stored::CaughtUp
    } else {
        Stored::Running
    };
    Plan::Commit(Commit {
        to,
        state,
        rebuilding: still_rebuilding,
        serve,
        ends_rebuild,
        caught_up,
        head,
        read_next: full && window.until.is_none(),
    })
}

/// Whether a batch of `version` that brings its checkpoint to `to` may become the served
/// version of its name, given the served version and its checkpoint (locked in the
/// batch's transaction): only in place of an older version that is not ahead of it, so
/// that the served checkpoint never moves back and a reader never loses a write it was
/// told the view holds.
pub(super) fn may_take_over(served: Option<(u32, Position)>, version: u32, to: Position) -> bool {
    served.is_none_or(|(current, at)| current < version && at <= to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 10;

    fn p(commit: u64) -> Position {
        Position::new(commit, 1)
    }

    fn live(position: Position, head: Position) -> Row {
        Row::Live {
            position,
            head,
            serving: Serving::Served,
            rebuilding: false,
        }
    }

    fn window(at: Position, scanned: u64, wanted: usize) -> Window {
        Window {
            at,
            until: None,
            read_ahead: false,
            scanned,
            covered: (scanned > 0).then(|| p(at.commit() + scanned)),
            wanted,
            limit: LIMIT,
        }
    }

    fn commit(plan: Plan) -> Commit {
        match plan {
            Plan::Commit(commit) => commit,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[test]
    fn the_row_decides_first() {
        let any = window(p(1), 3, 3);
        assert_eq!(plan(Row::Gone, any, 1), Plan::Missing);
        assert_eq!(plan(Row::RebuildRequested, any, 1), Plan::Rebuild);
        assert_eq!(plan(Row::Failed, any, 1), Plan::Failed);
        assert_eq!(plan(live(p(7), p(9)), any, 1), Plan::Moved(p(7)));
        let ahead = Window {
            read_ahead: true,
            ..any
        };
        assert!(
            matches!(plan(live(p(0), p(9)), ahead, 1), Plan::Commit(_)),
            "a batch read ahead does not trust the checkpoint it saw"
        );
    }

    #[test]
    fn a_window_that_reached_the_head_catches_up_to_it() {
        let done = commit(plan(live(p(1), p(20)), window(p(1), 3, 2), 1));
        assert_eq!(done.to, p(20), "events the filter skipped are passed too");
        assert!(done.caught_up);
        assert!(!done.read_next);
        assert_eq!(done.state, Stored::CaughtUp);
        assert!(done.needs_view(2));
    }

    #[test]
    fn a_full_window_moves_to_its_last_event_and_reads_on() {
        let part = commit(plan(live(p(1), p(50)), window(p(1), 10, 4), 1));
        assert_eq!(part.to, p(11));
        assert!(!part.caught_up);
        assert!(part.read_next);
        assert_eq!(part.state, Stored::Running);
    }

    #[test]
    fn a_window_cut_short_commits_up_to_its_bound_only() {
        let cut = Window {
            until: Some(p(3)),
            ..window(p(1), 2, 1)
        };
        let c = commit(plan(live(p(1), p(50)), cut, 1));
        assert_eq!(c.to, p(3));
        assert!(!c.caught_up && !c.read_next);
    }

    #[test]
    fn nothing_new_is_idle_and_skipped_events_move_the_checkpoint_alone() {
        assert_eq!(
            plan(live(p(5), p(5)), window(p(5), 0, 0), 1),
            Plan::Idle { head: p(5) }
        );
        let skipped = commit(plan(live(p(5), p(9)), window(p(5), 4, 0), 1));
        assert_eq!(skipped.to, p(9));
        assert!(
            !skipped.needs_view(0),
            "no events and no switch: no view transaction"
        );
    }

    #[test]
    fn a_new_version_is_served_once_caught_up_never_over_a_newer_one() {
        let beside = |current| Row::Live {
            position: p(1),
            head: p(4),
            serving: Serving::Beside { current },
            rebuilding: false,
        };
        let caught_up = window(p(1), 3, 3);
        let first = commit(plan(beside(None), caught_up, 1));
        assert!(first.serve);
        assert_eq!(first.state, Stored::CaughtUp);
        let newer = commit(plan(beside(Some(1)), caught_up, 2));
        assert!(newer.serve);
        let older = commit(plan(beside(Some(3)), caught_up, 2));
        assert!(!older.serve, "an older version never replaces a newer one");
        assert_eq!(older.state, Stored::Rebuilding);
        let behind = commit(plan(beside(Some(1)), window(p(1), 10, 10), 2));
        assert!(!behind.serve, "not before it has caught up");
        assert_eq!(behind.state, Stored::Rebuilding);
        let idle_beside = Row::Live {
            position: p(4),
            head: p(4),
            serving: Serving::Beside { current: Some(1) },
            rebuilding: false,
        };
        assert!(
            commit(plan(idle_beside, window(p(4), 0, 0), 2)).serve,
            "an idle version beside the served one still switches"
        );
    }

    #[test]
    fn a_rebuild_ends_when_the_replay_catches_up() {
        let rebuilding = |position| Row::Live {
            position,
            head: p(30),
            serving: Serving::Served,
            rebuilding: true,
        };
        let midway = commit(plan(rebuilding(p(1)), window(p(1), 10, 10), 1));
        assert!(midway.rebuilding && !midway.ends_rebuild);
        assert_eq!(midway.state, Stored::Rebuilding);
        let last = commit(plan(rebuilding(p(20)), window(p(20), 5, 5), 1));
        assert!(!last.rebuilding && last.ends_rebuild);
        assert_eq!(last.state, Stored::CaughtUp);
        let at_head = commit(plan(rebuilding(p(30)), window(p(30), 0, 0), 1));
        assert!(at_head.ends_rebuild, "even with nothing left to replay");
    }

    #[test]
    fn a_newer_version_takes_over_only_from_an_older_one_not_ahead_of_it() {
        assert!(may_take_over(None, 2, p(5)), "nothing served yet");
        assert!(may_take_over(Some((1, p(5))), 2, p(5)), "level");
        assert!(may_take_over(Some((1, p(4))), 2, p(5)), "behind");
        assert!(
            !may_take_over(Some((1, p(6))), 2, p(5)),
            "the served one is ahead"
        );
        assert!(
            !may_take_over(Some((3, p(1))), 2, p(5)),
            "a newer one is served"
        );
        assert!(!may_take_over(Some((2, p(1))), 2, p(5)), "already served");
    }
}
