//! The suite's tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::model::{ACCOUNT, NOTEBOOK, OWNER, OwnerEvent, SuiteEvent};
use super::{
    Check, DocumentRunner, Holdings, Last, Owners, Statement, SuiteDocument, Verdict, WAIT,
};
use crate::memory::Documents;
use crate::store::{AppendRequest, NewEvent};
use crate::{Comparison, Direction, DocumentQuery, EventStore, Metadata, Position, Token};

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{}: got {:?}, expected {:?}", format!($($msg)+), left, right));
        }
    }};
}

/// Every test, by name.
pub(super) fn tests<R: DocumentRunner>() -> Vec<(&'static str, Check<R>)> {
    fn boxed<F: Future<Output = Verdict> + Send + 'static>(
        check: F,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send>> {
        Box::pin(check)
    }
    vec![
        (
            "every_wanted_event_is_folded_once_in_stream_order_into_its_documents_key",
            |runner| boxed(folds_each_wanted_event_once(runner)),
        ),
        (
            "a_writer_that_waited_for_its_token_sees_its_write",
            |runner| boxed(writers_see_their_writes(runner)),
        ),
        ("a_rebuild_gives_the_same_documents", |runner| {
            boxed(a_rebuild_gives_the_same_documents(runner))
        }),
        ("queries_select_order_and_page_as_in_memory", |runner| {
            boxed(queries_select_as_in_memory(runner))
        }),
        ("a_view_folds_the_events_of_several_aggregates", |runner| {
            boxed(folds_several_aggregates(runner))
        }),
    ]
}

fn entry(amount: i64, owner: &str) -> SuiteEvent {
    SuiteEvent::Entered {
        amount,
        owner: owner.to_owned(),
    }
}

fn note(text: &str) -> SuiteEvent {
    SuiteEvent::Noted {
        text: text.to_owned(),
    }
}

/// Appends `events` to `stream_type/stream_id` at `expected`.
async fn append<S: EventStore>(
    store: &S,
    stream_type: &'static str,
    stream_id: &str,
    expected: u64,
    events: &[SuiteEvent],
) -> Result<Position, String> {
    let events = events
        .iter()
        .map(|e| NewEvent::from_event(e, Metadata::default()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("encoding: {e}"))?;
    let outcome = store
        .append(AppendRequest::new(stream_type, stream_id, expected, events))
        .await
        .map_err(|e| format!("append to {stream_type}/{stream_id}: {e}"))?;
    Ok(outcome.position)
}

/// The documents of `D` folded from the store's whole log: what every runner must serve.
async fn fold<D: SuiteDocument, S: EventStore>(store: &S) -> Result<BTreeMap<String, D>, String> {
    let mut documents = Documents::<D>::default();
    let filter = D::filter();
    let mut after = Position::START;
    loop {
        let batch = store
            .read_all(after, 500, &filter)
            .await
            .map_err(|e| format!("read_all: {e}"))?;
        let Some(last) = batch.last() else {
            return Ok(documents.into_map());
        };
        after = last.position;
        for recorded in batch {
            let event = recorded
                .into_decoded::<D::Event>()
                .map_err(|e| format!("decoding the log: {e}"))?;
            documents.apply(&event);
        }
    }
}

/// Waits for `token` on `D`'s view and checks its documents against the fold of the log.
async fn served_equals_the_log<D: SuiteDocument, R: DocumentRunner>(
    runner: &R,
    token: Token,
) -> Result<BTreeMap<String, D>, String> {
    runner.wait_for::<D>(token, WAIT).await.map_err(|e| {
        format!(
            "waiting for `{}` to pass {}: {e}",
            D::NAME,
            token.position()
        )
    })?;
    let served = runner
        .documents::<D>()
        .await
        .map_err(|e| format!("reading `{}`: {e}", D::NAME))?;
    let folded = fold::<D, _>(&runner.store()).await?;
    if runner.folds_in_log_order() {
        ensure_eq!(served, folded, "the documents of `{}`", D::NAME);
    } else {
        let unordered = |documents: &BTreeMap<String, D>| -> BTreeMap<String, D> {
            documents
                .iter()
                .map(|(key, d)| (key.clone(), d.across_streams_unordered()))
                .collect()
        };
        ensure_eq!(
            unordered(&served),
            unordered(&folded),
            "the documents of `{}` (across streams in any order)",
            D::NAME
        );
    }
    Ok(served)
}

async fn keep_both<R: DocumentRunner>(runner: &mut R) -> Result<(), String> {
    runner
        .keep::<Statement>()
        .await
        .map_err(|e| format!("keeping `{}`: {e}", Statement::NAME))?;
    runner
        .keep::<Holdings>()
        .await
        .map_err(|e| format!("keeping `{}`: {e}", Holdings::NAME))
}

use crate::Document as _;

/// Five accounts written round-robin (alone and three entries at a time), notes among
/// them and in a stream of their own, one account nobody holds.
async fn folds_each_wanted_event_once<R: DocumentRunner>(mut runner: R) -> Verdict {
    keep_both(&mut runner).await?;
    let store = runner.store();
    let owners = ["ada", "ada", "bob", "", "bob"];
    let mut versions = [0_u64; 5];
    let mut expected: BTreeMap<String, Statement> = BTreeMap::new();
    let mut token = Token::default();
    for round in 0..8_i64 {
        for (a, owner) in owners.iter().enumerate() {
            let account = format!("acct-{a}");
            let mut events = vec![entry(round * 10 + 1, owner)];
            if round % 3 == 1 {
                events.push(note("between"));
                events.push(entry(-(round + 1), owner));
            }
            let position = append(&store, ACCOUNT, &account, versions[a], &events).await?;
            token = token.join(position);
            let statement = expected.entry(account).or_default();
            for event in &events {
                versions[a] += 1;
                if let SuiteEvent::Entered { amount, owner } = event {
                    statement.entries.push((versions[a], *amount));
                    statement.balance += amount;
                    statement.owner.clone_from(owner);
                    statement.last = Last {
                        version: versions[a],
                        amount: *amount,
                    };
                }
            }
        }
        let position = append(
            &store,
            NOTEBOOK,
            "notes",
            u64::try_from(round).unwrap_or(0),
            &[note("unrelated")],
        )
        .await?;
        token = token.join(position);
    }
    let statements = served_equals_the_log::<Statement, R>(&runner, token).await?;
    ensure_eq!(
        statements,
        expected,
        "each account's entries, in stream order, once"
    );
    let holdings = served_equals_the_log::<Holdings, R>(&runner, token).await?;
    ensure_eq!(
        holdings.keys().collect::<Vec<_>>(),
        ["ada", "bob"],
        "one document per owner; nobody's entries are in none"
    );
    let ada = &holdings["ada"];
    ensure_eq!(
        ada.accounts,
        ["acct-0", "acct-1"],
        "ada's accounts in the order first seen"
    );
    ensure_eq!(
        ada.total,
        expected["acct-0"].balance + expected["acct-1"].balance,
        "ada's total"
    );
    Ok(())
}

/// Eight writers, each on an account of its own, each waiting for its token after every
/// append and then reading its document.
async fn writers_see_their_writes<R: DocumentRunner>(mut runner: R) -> Verdict {
    const WRITERS: usize = 8;
    const APPENDS: u64 = 12;
    keep_both(&mut runner).await?;
    let runner = Arc::new(runner);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let runner = Arc::clone(&runner);
        writers.spawn(async move {
            let store = runner.store();
            let account = format!("writer-{w}");
            let mut token = Token::default();
            for n in 0..APPENDS {
                let amount = i64::try_from(n).unwrap_or(0) + 1;
                let position =
                    append(&store, ACCOUNT, &account, n, &[entry(amount, "many")]).await?;
                token = token.join(position);
                runner
                    .wait_for::<Statement>(position.into(), WAIT)
                    .await
                    .map_err(|e| format!("{account} waiting for {position}: {e}"))?;
                let documents = runner
                    .documents::<Statement>()
                    .await
                    .map_err(|e| format!("{account} reading: {e}"))?;
                let seen = documents.get(&account).map_or(0, |s| s.entries.len());
                ensure_eq!(
                    u64::try_from(seen).unwrap_or(0),
                    n + 1,
                    "{account}'s entries right after waiting for its append {n}"
                );
            }
            Ok::<Token, String>(token)
        });
    }
    let mut token = Token::default();
    while let Some(joined) = writers.join_next().await {
        token = token.join(joined.map_err(|e| format!("a writer panicked: {e}"))??);
    }
    served_equals_the_log::<Statement, R>(&runner, token).await?;
    let holdings = served_equals_the_log::<Holdings, R>(&runner, token).await?;
    let many = holdings.get("many").map(|h| (h.accounts.len(), h.entries));
    ensure_eq!(
        many,
        Some((WRITERS, u64::try_from(WRITERS).unwrap_or(0) * APPENDS)),
        "the owner of every writer's account"
    );
    Ok(())
}

/// A view rebuilt from the log holds what it held, and goes on folding.
async fn a_rebuild_gives_the_same_documents<R: DocumentRunner>(mut runner: R) -> Verdict {
    keep_both(&mut runner).await?;
    let store = runner.store();
    let mut token = Token::default();
    for a in 0..4_u64 {
        for n in 0..6_u64 {
            let owner = if a % 2 == 0 { "even" } else { "odd" };
            let amount = i64::try_from(a * 100 + n).unwrap_or(0);
            token = token.join(
                append(
                    &store,
                    ACCOUNT,
                    &format!("r-{a}"),
                    n,
                    &[entry(amount, owner)],
                )
                .await?,
            );
        }
    }
    let before = served_equals_the_log::<Statement, R>(&runner, token).await?;
    let rebuilt = runner
        .rebuild::<Statement>()
        .await
        .map_err(|e| format!("rebuilding `{}`: {e}", Statement::NAME))?;
    if !rebuilt {
        // This runner leaves rebuilds to another one: nothing more to check.
        return Ok(());
    }
    let after = served_equals_the_log::<Statement, R>(&runner, token).await?;
    ensure_eq!(after, before, "the documents after the rebuild");
    for a in 0..4_u64 {
        token =
            token.join(append(&store, ACCOUNT, &format!("r-{a}"), 6, &[entry(1, "late")]).await?);
    }
    served_equals_the_log::<Statement, R>(&runner, token).await?;
    served_equals_the_log::<Holdings, R>(&runner, token).await?;
    Ok(())
}

/// Runs `query` on the runner and on the fold of the log in memory: the same documents,
/// in the same order. Returns the keys.
async fn same_answer<R: DocumentRunner>(
    runner: &R,
    query: &DocumentQuery,
    what: &str,
) -> Result<Vec<String>, String> {
    let served = runner
        .query::<Statement>(query)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let documents = Documents::from(fold::<Statement, _>(&runner.store()).await?);
    let expected: Vec<(String, Statement)> = documents
        .query(query)
        .map_err(|e| format!("{what} in memory: {e}"))?
        .into_iter()
        .map(|(key, document)| (key.to_owned(), document.clone()))
        .collect();
    ensure_eq!(served, expected, "{what}");
    Ok(served.into_iter().map(|(key, _)| key).collect())
}

fn query_error(e: crate::QueryError) -> String {
    format!("building a query: {e}")
}

/// Accounts with balances around zero, owners that sort as bytes (upper case before lower
/// case, a multi-byte letter last), and queries over strings, numbers and a nested field.
async fn queries_select_as_in_memory<R: DocumentRunner>(mut runner: R) -> Verdict {
    keep_both(&mut runner).await?;
    let store = runner.store();
    let accounts: [(&str, &str, &[i64]); 7] = [
        ("q-0", "ada", &[5, 7]),
        ("q-1", "Bob", &[-3]),
        ("q-2", "ada", &[12, -12]),
        ("q-3", "\u{e9}mile", &[100]),
        ("q-4", "zoe", &[40, 2]),
        ("q-5", "Bob", &[7]),
        ("q-6", "ada", &[-50, 60]),
    ];
    let mut token = Token::default();
    for (account, owner, amounts) in accounts {
        for (n, amount) in amounts.iter().enumerate() {
            let version = u64::try_from(n).unwrap_or(0);
            let position =
                append(&store, ACCOUNT, account, version, &[entry(*amount, owner)]).await?;
            token = token.join(position);
        }
    }
    served_equals_the_log::<Statement, R>(&runner, token).await?;

    let by_key = same_answer(&runner, &DocumentQuery::new(), "every document").await?;
    ensure_eq!(
        by_key,
        ["q-0", "q-1", "q-2", "q-3", "q-4", "q-5", "q-6"],
        "every document, by key"
    );
    let q = DocumentQuery::new()
        .filter("owner", Comparison::Eq, "ada")
        .map_err(query_error)?;
    ensure_eq!(
        same_answer(&runner, &q, "owner = ada").await?,
        ["q-0", "q-2", "q-6"],
        "ada's accounts"
    );
    let q = DocumentQuery::new()
        .filter("balance", Comparison::Ge, 10)
        .map_err(query_error)?
        .order_by("balance", Direction::Descending)
        .map_err(query_error)?;
    ensure_eq!(
        same_answer(&runner, &q, "balance >= 10, largest first").await?,
        ["q-3", "q-4", "q-0", "q-6"],
        "balances of 10 or more"
    );
    let q = DocumentQuery::new()
        .filter("owner", Comparison::Gt, "Bob")
        .map_err(query_error)?
        .order_by("owner", Direction::Ascending)
        .map_err(query_error)?
        .order_by("balance", Direction::Ascending)
        .map_err(query_error)?;
    ensure_eq!(
        same_answer(&runner, &q, "owner > Bob, by owner then balance").await?,
        ["q-2", "q-6", "q-0", "q-4", "q-3"],
        "owners after `Bob`, byte by byte"
    );
    let q = DocumentQuery::new()
        .filter("last.amount", Comparison::Lt, 0)
        .map_err(query_error)?;
    ensure_eq!(
        same_answer(&runner, &q, "last.amount < 0").await?,
        ["q-1", "q-2"],
        "a nested field"
    );
    let q = DocumentQuery::new()
        .filter("owner", Comparison::Eq, 7)
        .map_err(query_error)?;
    ensure_eq!(
        same_answer(&runner, &q, "owner = 7").await?,
        Vec::<String>::new(),
        "a string field compared with a number"
    );
    let mut pages = Vec::new();
    for offset in [0, 3, 6, 9] {
        let page = DocumentQuery::new()
            .order_by("balance", Direction::Ascending)
            .map_err(query_error)?
            .offset(offset)
            .limit(3);
        pages.extend(same_answer(&runner, &page, &format!("the page at {offset}")).await?);
    }
    ensure_eq!(
        pages,
        ["q-1", "q-2", "q-5", "q-6", "q-0", "q-4", "q-3"],
        "pages of three by balance"
    );
    Ok(())
}

/// Renames `owner`, its stream at `expected`.
async fn rename<S: EventStore>(
    store: &S,
    owner: &str,
    expected: u64,
    name: &str,
) -> Result<Position, String> {
    let event = OwnerEvent::Renamed {
        name: name.to_owned(),
    };
    let new =
        NewEvent::from_event(&event, Metadata::default()).map_err(|e| format!("encoding: {e}"))?;
    let outcome = store
        .append(AppendRequest::new(OWNER, owner, expected, vec![new]))
        .await
        .map_err(|e| format!("append to {OWNER}/{owner}: {e}"))?;
    Ok(outcome.position)
}

/// Owners named in their own streams and entered in their accounts' streams, interleaved,
/// with notes the view decodes and ignores.
async fn folds_several_aggregates<R: DocumentRunner>(mut runner: R) -> Verdict {
    runner
        .keep::<Owners>()
        .await
        .map_err(|e| format!("keeping `{}`: {e}", Owners::NAME))?;
    let store = runner.store();
    let mut token = Token::default();
    token = token.join(rename(&store, "ada", 0, "Ada").await?);
    for (n, (account, owner)) in [("o-1", "ada"), ("o-2", "bob"), ("o-3", "ada")]
        .iter()
        .enumerate()
    {
        let amount = i64::try_from(n).unwrap_or(0) * 10 + 5;
        token = token.join(
            append(
                &store,
                ACCOUNT,
                account,
                0,
                &[entry(amount, owner), note("x")],
            )
            .await?,
        );
    }
    token = token.join(rename(&store, "ada", 1, "Ada Lovelace").await?);
    token = token.join(rename(&store, "carol", 0, "Carol").await?);
    token = token.join(append(&store, ACCOUNT, "o-2", 2, &[entry(1, "bob")]).await?);
    let owners = served_equals_the_log::<Owners, R>(&runner, token).await?;
    let summary: Vec<(&str, &str, usize, i64)> = owners
        .iter()
        .map(|(key, o)| (key.as_str(), o.name.as_str(), o.accounts.len(), o.total))
        .collect();
    ensure_eq!(
        summary,
        [
            ("ada", "Ada Lovelace", 2, 5 + 25),
            ("bob", "", 1, 15 + 1),
            ("carol", "Carol", 0, 0)
        ],
        "owners folded from their streams and their accounts'"
    );
    Ok(())
}
