//! Ownership of projections across processes: one session advisory lock per
//! projection, held on a connection of the runner's own.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::db::Sql;

/// A projection as the supervisor sees it.
pub(super) struct Slot {
    pub(super) name: &'static str,
    pub(super) version: u32,
    pub(super) key: i64,
    pub(super) owned: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

/// Holds the session advisory locks that make this process the owner of projections:
/// tries to take the ones nobody holds, notices when its connection dies (and with it
/// the locks), and tells the workers.
pub(super) async fn supervise(
    mut slots: Vec<Slot>,
    options: PgConnectOptions,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut backoff = interval;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(connected) => {
                    debug!("lock connection open");
                    conn = Some(connected);
                    backoff = interval;
                }
                Err(error) => {
                    warn!(%error, "cannot open the lock connection");
                    backoff = (backoff * 2).min(Duration::from_secs(5)).max(interval);
                }
            }
        }
        if let Some(connected) = conn.as_mut()
            && let Err(error) = claim_round(connected, &mut slots).await
        {
            warn!(%error, "lock connection lost; giving up every projection");
            for slot in &slots {
                slot.owned.send_replace(false);
            }
            conn = None;
        }
        let pause = if conn.is_some() { interval } else { backoff };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
    // Stop the workers before giving up the locks, so no other process starts while
    // one of ours still writes.
    for slot in &slots {
        slot.owned.send_replace(false);
    }
    for slot in &mut slots {
        if tokio::time::timeout(Duration::from_secs(10), &mut slot.task)
            .await
            .is_err()
        {
            slot.task.abort();
        }
    }
    if let Some(mut connected) = conn {
        if let Err(error) = Sql::new("projection_unlock_all", "SELECT pg_advisory_unlock_all()")
            .try_execute(&mut connected)
            .await
        {
            debug!(%error, "releasing the locks failed; closing the connection releases them");
        }
        if let Err(error) = connected.close().await {
            debug!(%error, "closing the lock connection failed");
        }
    }
}

/// One round: give up projections whose worker ended, try to take the free ones. Also
/// proves the connection (and so the locks) alive.
async fn claim_round(conn: &mut PgConnection, slots: &mut [Slot]) -> Result<(), sqlx::Error> {
    for slot in slots.iter() {
        if slot.task.is_finished() && *slot.owned.borrow() {
            warn!(
                projection = slot.name,
                "projection task ended; releasing it"
            );
            Sql::new("projection_unlock", "SELECT pg_advisory_unlock($1::bigint)")
                .bind(slot.key)
                .try_execute(&mut *conn)
                .await?;
            slot.owned.send_replace(false);
        }
    }
    let wanted: Vec<i64> = slots
        .iter()
        .filter(|slot| !*slot.owned.borrow() && !slot.task.is_finished())
        .map(|slot| slot.key)
        .collect();
    let taken: Vec<(i64, bool)> = Sql::new(
        "projection_lock",
        "SELECT key, pg_try_advisory_lock(key) FROM unnest($1::bigint[]) AS t (key)",
    )
    .bind(&wanted)
    .try_fetch_all(&mut *conn)
    .await?;
    for (key, got) in taken {
        if !got {
            continue;
        }
        for slot in slots.iter().filter(|slot| slot.key == key) {
            info!(
                projection = slot.name,
                version = slot.version,
                "took ownership"
            );
            slot.owned.send_replace(true);
        }
    }
    Ok(())
}
