//! Appends that wait at the same time, sent together as one statement.
//!
//! Each statement's fixed cost on the server (its round trip, its transaction, its
//! commit) is several times the cost of writing one event, so under concurrency the store
//! sends the appends that are waiting together, as one statement (`append_batch.sql`),
//! with at most a few such statements in flight. There is no timer: an append that
//! finds a statement slot free goes at once, taking along whatever else is waiting, so a
//! lone append costs what it did alone.
//!
//! Whoever takes a free slot leads: it takes the waiting appends (its own among them, if
//! still waiting), has them sent (by the function the append path gives it, see
//! `append.rs` and `together.rs`), and each gets its reply. Appends wait here unless their
//! store notifies in the statement or has inline handlers; never two for one stream, or
//! with one command id, share a statement. A statement that fails hands every one of its
//! appends back to be sent alone (`Reply::Alone`), which tells them apart: which
//! conflicted, which event id is taken, which inline SQL failed. If its connection
//! failed, or its leader was dropped, with the statement in flight, the appends are sent
//! alone as appends sent again: they may have been written.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cqrs_core::store::{AppendOutcome, AppendRequest};
use tokio::sync::{Semaphore, oneshot};

use super::prepared::Prepared;

/// At most this many appends share a statement.
const MAX_APPENDS: usize = 64;
/// At most this many events share a statement (an append with more goes alone).
const MAX_EVENTS: usize = 1024;

/// The appends waiting to be sent, and the slots for statements in flight.
pub(crate) struct Batcher {
    in_flight: usize,
    slots: Semaphore,
    waiting: Mutex<VecDeque<Entry>>,
}

pub(crate) struct Entry {
    /// Also how its caller finds it in the queue (by pointer).
    append: Arc<Prepared>,
    reply: oneshot::Sender<Reply>,
}

impl Entry {
    pub(crate) fn append(&self) -> &Prepared {
        &self.append
    }

    /// Hands the append its reply (its caller may be gone: then no one needs it).
    pub(crate) fn reply(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// What became of an append that waited.
pub(crate) enum Reply {
    /// Its outcome: written, or refused on its expected version.
    Done(cqrs_core::Result<AppendOutcome>),
    /// To be sent alone; `unknown`: it was in flight on a connection that failed, so it
    /// may have been written.
    Alone { unknown: bool },
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Up to `in_flight` statements at once (0: every append is sent alone).
    pub(crate) fn new(in_flight: usize) -> Self {
        Self {
            in_flight,
            slots: Semaphore::new(in_flight.min(Semaphore::MAX_PERMITS)),
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Has `append` sent with whatever else waits, by `send` (which replies to each
    /// append of the batch it is given), and returns what became of it.
    pub(crate) async fn append<F, Fut>(&self, append: &Arc<Prepared>, mut send: F) -> Reply
    where
        F: FnMut(Vec<Entry>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (reply, mut replied) = oneshot::channel();
        self.waiting().push_back(Entry {
            append: Arc::clone(append),
            reply,
        });
        // Lead while this append still waits; once another statement carries it, wait
        // for its reply. (A leader that dropped its statement dropped the reply too.)
        loop {
            tokio::select! {
                biased;
                reply = &mut replied => return reply.unwrap_or(Reply::Alone { unknown: true }),
                slot = self.slots.acquire() => {
                    let Ok(_slot) = slot else {
                        return Reply::Alone { unknown: false };
                    };
                    let (batch, still_waiting) = self.take(append);
                    if !batch.is_empty() {
                        send(batch).await;
                    }
                    if !still_waiting {
                        break;
                    }
                }
            }
        }
        replied.await.unwrap_or(Reply::Alone { unknown: true })
    }

    /// The next statement's appends, oldest first, and whether `own` still waits after
    /// them. Appends whose caller is gone are dropped; an append for a stream, or with a
    /// command id, already in the statement stays for the next one.
    fn take(&self, own: &Arc<Prepared>) -> (Vec<Entry>, bool) {
        let mut queue = self.waiting();
        let mut batch: Vec<Entry> = Vec::new();
        let mut events = 0;
        let mut kept = VecDeque::new();
        while let Some(entry) = queue.pop_front() {
            if entry.reply.is_closed() {
                continue;
            }
            let count = entry.append.request.events.len();
            let full =
                batch.len() == MAX_APPENDS || (!batch.is_empty() && events + count > MAX_EVENTS);
            let clashes = batch
                .iter()
                .any(|taken| clash(&taken.append.request, &entry.append.request));
            if full || clashes {
                kept.push_back(entry);
                if full {
                    break;
                }
                continue;
            }
            events += count;
            batch.push(entry);
        }
        kept.append(&mut queue);
        *queue = kept;
        let still_waiting = queue.iter().any(|entry| Arc::ptr_eq(&entry.append, own));
        (batch, still_waiting)
    }
}

/// Whether `a` and `b` must not share a statement: they are for one stream (the second
/// must see the first's outcome), or carry one command id.
fn clash(a: &AppendRequest, b: &AppendRequest) -> bool {
    (a.stream_id == b.stream_id && a.stream_type == b.stream_type)
        || (a.command_id.is_some() && a.command_id == b.command_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_core::store::NewEvent;
    use uuid::Uuid;

    /// A waiting append: what finds it in the queue, and its reply (dropped: its caller
    /// is gone).
    type Waiting = (Arc<Prepared>, oneshot::Receiver<Reply>);

    fn wait(batcher: &Batcher, request: AppendRequest) -> Waiting {
        let (reply, replied) = oneshot::channel();
        let append = Arc::new(Prepared::new(request).expect("a valid append"));
        batcher.waiting().push_back(Entry {
            append: Arc::clone(&append),
            reply,
        });
        (append, replied)
    }

    fn waiting(batcher: &Batcher, stream: &str, events: usize) -> Waiting {
        let events = (0..events)
            .map(|_| NewEvent::new("Deposited", 1, serde_json::json!({})))
            .collect();
        wait(batcher, AppendRequest::new("account", stream, 0, events))
    }

    fn streams(batch: &[Entry]) -> Vec<&str> {
        batch
            .iter()
            .map(|entry| entry.append.request.stream_id.as_str())
            .collect()
    }

    #[test]
    fn a_statement_takes_each_stream_once_in_order() {
        let batcher = Batcher::new(2);
        let _a = waiting(&batcher, "a", 1);
        let _b = waiting(&batcher, "b", 1);
        let a2 = waiting(&batcher, "a", 1);
        let _c = waiting(&batcher, "c", 1);
        let (batch, still) = batcher.take(&a2.0);
        assert_eq!(streams(&batch), ["a", "b", "c"]);
        assert!(
            still,
            "the second append to `a` waits for the next statement"
        );
        let (batch, still) = batcher.take(&a2.0);
        assert_eq!(streams(&batch), ["a"]);
        assert!(!still);
    }

    #[test]
    fn one_command_id_waits_for_the_next_statement() {
        let batcher = Batcher::new(1);
        let id = Uuid::new_v4();
        let one = |stream: &str| {
            AppendRequest::new(
                "account",
                stream,
                0,
                vec![NewEvent::new("Opened", 1, 0.into())],
            )
        };
        let _x = wait(&batcher, one("x").with_command_id(id));
        let _plain = wait(&batcher, one("p"));
        let y = wait(&batcher, one("y").with_command_id(id));
        let (batch, still) = batcher.take(&y.0);
        assert_eq!(streams(&batch), ["x", "p"]);
        assert!(still);
    }

    #[test]
    fn appends_whose_caller_is_gone_are_dropped() {
        let batcher = Batcher::new(1);
        let (_, gone) = waiting(&batcher, "a", 1);
        drop(gone);
        let b = waiting(&batcher, "b", 1);
        let (batch, still) = batcher.take(&b.0);
        assert_eq!(streams(&batch), ["b"]);
        assert!(!still);
        assert!(batcher.waiting().is_empty());
    }

    #[test]
    fn a_statement_stops_at_its_size() {
        let batcher = Batcher::new(1);
        let _big = waiting(&batcher, "big", MAX_EVENTS + 1);
        let small = waiting(&batcher, "small", 1);
        let (batch, still) = batcher.take(&small.0);
        assert_eq!(
            streams(&batch),
            ["big"],
            "an append over the limit goes alone"
        );
        assert!(still);
        let mut waiters = Vec::new();
        for i in 0..=MAX_APPENDS {
            waiters.push(waiting(&batcher, &format!("s{i}"), 1));
        }
        let (batch, _) = batcher.take(&small.0);
        assert_eq!(batch.len(), MAX_APPENDS);
        let (batch, _) = batcher.take(&small.0);
        assert_eq!(batch.len(), 2, "the two left over");
    }
}
