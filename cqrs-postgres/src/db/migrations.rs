//! The store's embedded migrations.

/// The store's embedded migrations (`cqrs-postgres/migrations/`), tracked in their own
/// `_cqrs_migrations` table so they never mix with the application's `_sqlx_migrations`.
///
/// The migrations create unqualified tables: run them through
/// [`PgEventStore::migrate`](crate::PgEventStore::migrate), which creates the store's
/// schema and applies them inside it. Running `MIGRATOR` directly applies them to the
/// first schema on the connection's `search_path` (for example in
/// `#[sqlx::test(migrator = "cqrs_postgres::MIGRATOR")]`, then build the store with
/// `.schema("public")`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
