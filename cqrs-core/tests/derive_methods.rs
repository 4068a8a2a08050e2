//! With the prelude in scope, a derived aggregate's logic is callable as plain methods:
//! `Handle::handle` and `Apply::apply` as `state.handle(..)` and `state.apply(..)`, and
//! the `Aggregate` methods the pipeline calls as `state.handle_command(..)` and
//! `state.apply_event(..)`, with no call by path.
#![cfg(feature = "derive")]

use std::convert::Infallible;

use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Event)]
enum TabEvent {
    Opened,
    Ordered { item: String, cents: u64 },
}

#[derive(Debug, Command)]
struct Open {
    #[cqrs(id)]
    tab: String,
}

#[derive(Debug, Command)]
struct Order {
    #[cqrs(id)]
    tab: String,
    item: String,
}

#[derive(Debug, Command)]
#[cqrs(aggregate = Tab)]
enum TabCommand {
    Open(Open),
    Order(Order),
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(command = TabCommand, event = TabEvent, error = Infallible)]
struct Tab {
    open: bool,
    total: u64,
}

impl Handle<Open> for Tab {
    async fn handle(&self, _: &Open, (): &()) -> Result<Vec<TabEvent>, Infallible> {
        Ok(vec![TabEvent::Opened])
    }
}

impl Handle<Order> for Tab {
    async fn handle(&self, command: &Order, (): &()) -> Result<Vec<TabEvent>, Infallible> {
        Ok(vec![TabEvent::Ordered {
            item: command.item.clone(),
            cents: 350,
        }])
    }
}

impl Apply<TabEvent> for Tab {
    fn apply(&mut self, event: &TabEvent) {
        match event {
            TabEvent::Opened => self.open = true,
            TabEvent::Ordered { cents, .. } => self.total += cents,
        }
    }
}

fn order() -> Order {
    Order {
        tab: "t-1".to_owned(),
        item: "tea".to_owned(),
    }
}

#[tokio::test]
async fn handle_and_apply_are_methods_with_the_prelude() {
    let mut state = Tab::default();
    let opened = state
        .handle(
            &Open {
                tab: "t-1".to_owned(),
            },
            &(),
        )
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(opened, [TabEvent::Opened]);
    state.apply(&opened[0]);
    // The command enum the derive routes is one more `Handle` impl.
    let routed = state
        .handle(&TabCommand::Order(order()), &())
        .await
        .unwrap_or_else(|never| match never {});
    let direct = state
        .handle(&order(), &())
        .await
        .unwrap_or_else(|never| match never {});
    assert_eq!(routed, direct);
    for event in &direct {
        state.apply(event);
    }
    assert!(state.open);
    assert_eq!(state.total, 350);
}

#[tokio::test]
async fn the_pipeline_methods_forward_to_the_same_logic() {
    let mut state = Tab::default();
    let open = TabCommand::Open(Open {
        tab: "t-1".to_owned(),
    });
    for command in [open, TabCommand::Order(order())] {
        let events = state
            .handle_command(&command, &())
            .await
            .unwrap_or_else(|never| match never {});
        for event in &events {
            state.apply_event(event);
        }
    }
    assert!(state.open);
    assert_eq!(state.total, 350);
}
