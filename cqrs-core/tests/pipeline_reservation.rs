//! The reservation pattern: a unique user name kept by an aggregate of its own (one stream
//! per name), claimed in the same atomic unit as the user's registration. Racing
//! registrations of one name: exactly one wins, whatever the interleaving; reading a list
//! of taken names to decide would let several through.

use std::sync::Arc;

use cqrs_core::EventFilter;
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum UserEvent {
    Registered { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
enum UserCommand {
    Register { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum NameEvent {
    Claimed { user: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
enum NameCommand {
    Claim { user: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum Refused {
    #[error("the name is taken by `{0}`")]
    Taken(String),
    #[error("the user is already registered")]
    Registered,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "user", command = UserCommand, event = UserEvent, error = Refused)]
struct User {
    name: Option<String>,
}

impl Apply<UserEvent> for User {
    fn apply(&mut self, event: &UserEvent) {
        let UserEvent::Registered { name } = event;
        self.name = Some(name.clone());
    }
}

impl Handle<UserCommand> for User {
    async fn handle(&self, command: &UserCommand, (): &()) -> Result<Vec<UserEvent>, Refused> {
        let UserCommand::Register { name } = command;
        Ok(vec![UserEvent::Registered { name: name.clone() }])
    }
}

/// One per name: who holds it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "user_name", command = NameCommand, event = NameEvent, error = Refused)]
struct UserName {
    holder: Option<String>,
}

impl Apply<NameEvent> for UserName {
    fn apply(&mut self, event: &NameEvent) {
        let NameEvent::Claimed { user } = event;
        self.holder = Some(user.clone());
    }
}

impl Handle<NameCommand> for UserName {
    async fn handle(&self, command: &NameCommand, (): &()) -> Result<Vec<NameEvent>, Refused> {
        let NameCommand::Claim { user } = command;
        Ok(vec![NameEvent::Claimed { user: user.clone() }])
    }
}

/// Registers `user` under `name`: the user's event and the name's claim, one unit.
async fn register(
    users: &Cqrs<User, MemoryEventStore>,
    names: &Cqrs<UserName, MemoryEventStore>,
    user: &str,
    name: &str,
) -> Result<(), CommandError<Refused>> {
    users
        .execute_across(user, names, name, CommandMetadata::default(), |u, n| {
            if u.name.is_some() {
                return Err(Refused::Registered);
            }
            if let Some(holder) = &n.holder {
                return Err(Refused::Taken(holder.clone()));
            }
            Ok((
                vec![UserEvent::Registered {
                    name: name.to_owned(),
                }],
                vec![NameEvent::Claimed {
                    user: user.to_owned(),
                }],
            ))
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_of_one_name_let_exactly_one_through() {
    for round in 0..20 {
        let store = MemoryEventStore::new();
        let users = Arc::new(
            Cqrs::<User, _>::builder(store.clone())
                .retry(RetryPolicy::new(100))
                .build(),
        );
        let names = Arc::new(
            Cqrs::<UserName, _>::builder(store.clone())
                .retry(RetryPolicy::new(100))
                .build(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for u in 0..8 {
            let (users, names) = (Arc::clone(&users), Arc::clone(&names));
            tasks.spawn(async move { register(&users, &names, &format!("u{u}"), "ada").await });
        }
        let (mut won, mut taken) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task") {
                Ok(()) => won += 1,
                Err(CommandError::Rejected(Refused::Taken(_))) => taken += 1,
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!((won, taken), (1, 7), "round {round}");
        let claims = store.load("user_name", "ada", 0).await.expect("load");
        assert_eq!(claims.len(), 1, "one claim of the name");
        let registered = store
            .read_all(
                Position::START,
                100,
                &EventFilter::event_types(UserEvent::TYPES),
            )
            .await
            .expect("read_all");
        assert_eq!(registered.len(), 1, "one user registered under it");
        assert_eq!(registered[0].position.commit(), claims[0].position.commit());
    }
}
