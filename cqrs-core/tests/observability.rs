//! The pipeline and the projector report through `tracing` with stable span and field
//! names; the library never installs a subscriber of its own.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Ledger, LedgerCommand};
use cqrs_core::memory::{MemoryEventStore, Projector};
use cqrs_core::{Cqrs, EventStore, Projection};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type FieldMap = BTreeMap<String, String>;

/// Everything recorded: spans (name and fields) and events (message and fields).
#[derive(Clone, Default)]
struct Recorded {
    spans: Arc<Mutex<Vec<(String, FieldMap)>>>,
    ids: Arc<Mutex<BTreeMap<u64, usize>>>,
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorded {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().expect("lock");
        self.ids
            .lock()
            .expect("lock")
            .insert(id.into_u64(), spans.len());
        spans.push((attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(&index) = self.ids.lock().expect("lock").get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.spans.lock().expect("lock")[index].1));
        }
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().expect("lock").push(fields);
    }
}

impl Recorded {
    fn span(&self, name: &str) -> BTreeMap<String, String> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .find(|(span, _)| span == name)
            .map(|(_, fields)| fields.clone())
            .unwrap_or_else(|| panic!("no span named {name}"))
    }
    fn has_event(&self, message: &str) -> bool {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .any(|fields| fields.get("message").is_some_and(|m| m.contains(message)))
    }
}

#[test]
fn commands_and_projections_are_traced_with_stable_field_names() {
    let recorded = Recorded::default();
    let subscriber = tracing_subscriber::registry().with(recorded.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = MemoryEventStore::new();
        let cqrs = Cqrs::<Ledger, _>::new(store.clone());
        cqrs.execute("l-1", LedgerCommand::Multiply { factor: 2 })
            .await
            .expect("execute");
        cqrs.execute("l-1", LedgerCommand::Multiply { factor: 99 })
            .await
            .expect_err("refused");
        let projector = Projector::new(store.clone(), View);
        projector.catch_up().await.expect("catch up");
        assert!(store.head().await.expect("head") > cqrs_core::Position::START);
    });

    let execute = recorded.span("cqrs.execute");
    assert_eq!(execute["aggregate_type"], "ledger");
    assert_eq!(execute["aggregate_id"], "l-1");
    assert_eq!(execute["command"], "Multiply");
    assert_eq!(execute["stream_version"], "1");
    assert_eq!(execute["retries"], "0");

    let load = recorded.span("cqrs.load");
    assert_eq!(load["aggregate_type"], "ledger");
    assert_eq!(load["aggregate_id"], "l-1");
    assert!(load.contains_key("stream_version"));

    let append = recorded.span("cqrs.append");
    assert_eq!(append["expected_version"], "0");
    assert_eq!(append["events"], "1");

    assert!(
        recorded.has_event("command rejected"),
        "refusals are reported"
    );

    let projection = recorded.span("cqrs.projection.catch_up");
    assert_eq!(projection["projection"], "ledger_view");
    assert!(recorded.has_event("projection batch applied"));
}

#[derive(Debug)]
struct View;

impl Projection for View {
    const NAME: &'static str = "ledger_view";
    type Event = common::LedgerEvent;
    type Context = ();
    type Error = std::convert::Infallible;
    async fn handle(
        &mut self,
        (): &mut (),
        _: &cqrs_core::EventEnvelope<common::LedgerEvent>,
    ) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}
