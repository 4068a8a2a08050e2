//! The balance view, as the runner's projection with hooks, as a plain projection
//! (one statement per event), and as an inline handler.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_core::{Aggregate, EventEnvelope, Projection};
use cqrs_postgres::PgView;
use example_bank_account::{AccountEvent, BankAccount};
use sqlx::{AssertSqlSafe, PgConnection};

#[derive(Debug)]
pub(crate) struct Balances {
    pub(crate) table: String,
    pub(crate) deltas: HashMap<String, (i64, i64)>,
}

impl Balances {
    pub(crate) fn new(schema: &str) -> Self {
        Self {
            table: format!("\"{schema}\".bench_balances_v1"),
            deltas: HashMap::new(),
        }
    }
}

impl Projection for Balances {
    const NAME: &'static str = "bench_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    fn filter() -> cqrs_core::EventFilter {
        cqrs_core::EventFilter::event_types(<AccountEvent as cqrs_core::Event>::TYPES)
            .and_stream_type(BankAccount::TYPE)
    }

    async fn handle(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let entry = match self.deltas.get_mut(&event.stream_id) {
            Some(entry) => entry,
            None => self.deltas.entry(event.stream_id.clone()).or_default(),
        };
        match event.payload {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount } => {
                entry.0 += i64::try_from(amount).unwrap_or(i64::MAX);
                entry.1 += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                entry.0 -= i64::try_from(amount).unwrap_or(i64::MAX);
                entry.1 += 1;
            }
        }
        Ok(())
    }
}

impl PgView for Balances {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (account text PRIMARY KEY, \
             balance bigint NOT NULL, movements bigint NOT NULL)",
            self.table
        )))
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(cx)
            .await?;
        Ok(())
    }

    async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.deltas.is_empty() {
            return Ok(());
        }
        let mut accounts = Vec::with_capacity(self.deltas.len());
        let mut balances = Vec::with_capacity(self.deltas.len());
        let mut movements = Vec::with_capacity(self.deltas.len());
        for (account, (balance, moved)) in self.deltas.drain() {
            accounts.push(account);
            balances.push(balance);
            movements.push(moved);
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS b (account, balance, movements) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + excluded.movements",
            self.table
        )))
        .bind(&accounts)
        .bind(&balances)
        .bind(&movements)
        .execute(cx)
        .await?;
        Ok(())
    }

    fn discard(&mut self) {
        self.deltas.clear();
    }
}

/// The same view written by one statement per event, as a first projection usually is.
#[derive(Debug)]
pub(crate) struct PlainBalances {
    pub(crate) table: String,
}

impl Projection for PlainBalances {
    const NAME: &'static str = "bench_plain_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let amount = match event.payload {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { amount } => i64::try_from(amount).unwrap_or(i64::MAX),
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount).unwrap_or(i64::MAX),
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS b (account, balance, movements) VALUES ($1, $2, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + 1",
            self.table
        )))
        .bind(&event.stream_id)
        .bind(amount)
        .execute(cx)
        .await?;
        Ok(())
    }
}

/// The balance view kept inline: written in each append's transaction.
#[derive(Debug, Clone)]
pub(crate) struct InlineBalances {
    pub(crate) table: Arc<str>,
    pub(crate) upsert: Arc<str>,
}

impl PgView for InlineBalances {
    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(cx)
            .await?;
        Ok(())
    }
}

impl Projection for InlineBalances {
    const NAME: &'static str = "bench_inline_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let amount = match event.payload {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { amount } => i64::try_from(amount).unwrap_or(i64::MAX),
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount).unwrap_or(i64::MAX),
        };
        sqlx::query(AssertSqlSafe(Arc::clone(&self.upsert)))
            .bind(&event.stream_id)
            .bind(amount)
            .execute(cx)
            .await?;
        Ok(())
    }
}
