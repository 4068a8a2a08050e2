//! One `LISTEN` connection per runner, fanned out to its workers and waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::Position;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::db::{Notice, parse_position_notice};

/// What the runner's listener has heard, as watch channels: a receiver never misses that
/// something changed since it last looked.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The newest append position announced on the store's channel. Also touched
    /// (without a new value) after the listener reconnected, since announcements may have
    /// been lost meanwhile.
    log: watch::Sender<Position>,
    /// Touched on every failure or operator request announced.
    control: watch::Sender<u64>,
    /// Counts the listener's (re)connections; waiters look again when it moves.
    connections: watch::Sender<u64>,
    /// The newest checkpoint announced for the served version of each name waited on.
    served: Mutex<HashMap<String, watch::Sender<Option<Position>>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            log: watch::channel(Position::START).0,
            control: watch::channel(0).0,
            connections: watch::channel(0).0,
            served: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn subscribe_log(&self) -> watch::Receiver<Position> {
        self.log.subscribe()
    }

    pub(crate) fn subscribe_control(&self) -> watch::Receiver<u64> {
        self.control.subscribe()
    }

    pub(crate) fn subscribe_connections(&self) -> watch::Receiver<u64> {
        self.connections.subscribe()
    }

    pub(crate) fn subscribe_served(&self, name: &str) -> watch::Receiver<Option<Position>> {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        match served.get(name) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(None);
                served.insert(name.to_owned(), sender);
                receiver
            }
        }
    }

    /// Wakes every worker: announcements may have been missed.
    fn touch_all(&self) {
        self.log.send_modify(|_| {});
        self.control.send_modify(|n| *n = n.wrapping_add(1));
        self.connections.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn dispatch(&self, events_channel: &str, channel: &str, payload: &str) {
        if channel == events_channel {
            match parse_position_notice(payload) {
                Some(position) => {
                    self.log.send_if_modified(|newest| {
                        if position > *newest {
                            *newest = position;
                        }
                        // Wake the workers either way: an equal or older announcement is
                        // still a commit they may not have read.
                        true
                    });
                }
                None => self.log.send_modify(|_| {}),
            }
            return;
        }
        match Notice::parse(payload) {
            Some(Notice::Checkpoint {
                name,
                served: true,
                position,
                ..
            }) => {
                let served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(sender) = served.get(&name) {
                    sender.send_replace(Some(position));
                }
            }
            Some(Notice::Control { .. }) => {
                self.control.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Notice::Checkpoint { served: false, .. }) | None => {}
        }
    }

    /// Listens on the store's channel and the projections' channel until `shutdown`,
    /// reconnecting whenever the connection is lost.
    pub(crate) async fn listen(
        self: Arc<Self>,
        options: PgConnectOptions,
        events_channel: String,
        projections_channel: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let mut backoff = Duration::from_millis(50);
        'connect: loop {
            let connected = tokio::select! {
                connected = connect(&pool, &events_channel, &projections_channel) => connected,
                _ = shutdown.changed() => break 'connect,
            };
            let mut listener = match connected {
                Ok(listener) => listener,
                Err(error) => {
                    warn!(%error, "cannot listen for notifications; polling until reconnected");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break 'connect,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue 'connect;
                }
            };
            backoff = Duration::from_millis(50);
            debug!("listening for notifications");
            self.touch_all();
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            self.dispatch(&events_channel, notification.channel(), notification.payload());
                        }
                        Ok(None) => {
                            // The connection was lost and re-established: anything
                            // announced in between is gone.
                            debug!("notification connection re-established");
                            self.touch_all();
                        }
                        Err(error) => {
                            warn!(%error, "notification connection lost");
                            self.touch_all();
                            continue 'connect;
                        }
                    },
                    _ = shutdown.changed() => break 'connect,
                }
            }
        }
        pool.close().await;
    }
}

async fn connect(
    pool: &sqlx::PgPool,
    events_channel: &str,
    projections_channel: &str,
) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener
        .listen_all([events_channel, projections_channel])
        .await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_announcements_of_the_served_version_reach_waiters() {
        let hub = Hub::new();
        let mut waiter = hub.subscribe_served("balances");
        hub.dispatch("s_events", "s_proj", "c\tbalances\t2\tfalse\t9.1");
        assert_eq!(*waiter.borrow_and_update(), None);
        hub.dispatch("s_events", "s_proj", "c\tbalances\t2\ttrue\t9.1");
        assert_eq!(*waiter.borrow_and_update(), Some(Position::new(9, 1)));
        hub.dispatch("s_events", "s_proj", "c\tother\t1\ttrue\t12.3");
        assert!(!waiter.has_changed().unwrap_or(true));
    }

    #[test]
    fn appends_wake_workers_and_keep_the_newest_position() {
        let hub = Hub::new();
        let mut log = hub.subscribe_log();
        hub.dispatch("s_events", "s_events", "7.2");
        hub.dispatch("s_events", "s_events", "5.1");
        assert!(log.has_changed().unwrap_or(false));
        assert_eq!(*log.borrow_and_update(), Position::new(7, 2));
    }
}
