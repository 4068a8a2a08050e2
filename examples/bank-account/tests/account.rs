//! The bank account's rules, tested with the given/when/then fixtures.

use cqrs_core::testing::{AggregateFixture, ProjectionFixture};
use example_bank_account::{AccountCommand, AccountError, AccountEvent, Balances, BankAccount};

fn opened() -> AccountEvent {
    AccountEvent::Opened {
        owner: "Ada".to_owned(),
    }
}

#[tokio::test]
async fn an_account_opens_once() {
    AggregateFixture::<BankAccount>::new()
        .when(AccountCommand::Open {
            owner: "Ada".to_owned(),
        })
        .await
        .then_expect_events([opened()])
        .then_state(|account| assert!(account.open));

    AggregateFixture::<BankAccount>::new()
        .given([opened()])
        .when(AccountCommand::Open {
            owner: "Eve".to_owned(),
        })
        .await
        .then_expect_error(AccountError::AlreadyOpen);
}

#[tokio::test]
async fn deposits_need_an_open_account_and_a_positive_amount() {
    AggregateFixture::<BankAccount>::new()
        .when(AccountCommand::Deposit { amount: 5 })
        .await
        .then_expect_error(AccountError::NotOpen);

    AggregateFixture::<BankAccount>::new()
        .given([opened()])
        .when(AccountCommand::Deposit { amount: 0 })
        .await
        .then_expect_error(AccountError::ZeroAmount);

    AggregateFixture::<BankAccount>::new()
        .given([opened()])
        .when(AccountCommand::Deposit { amount: 5 })
        .await
        .then_expect_events([AccountEvent::Deposited { amount: 5 }])
        .then_state(|account| assert_eq!(account.balance, 5));
}

#[tokio::test]
async fn withdrawals_cannot_exceed_the_balance() {
    AggregateFixture::<BankAccount>::new()
        .given([opened(), AccountEvent::Deposited { amount: 30 }])
        .when(AccountCommand::Withdraw { amount: 31 })
        .await
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 30,
            requested: 31,
        });

    AggregateFixture::<BankAccount>::new()
        .given([opened(), AccountEvent::Deposited { amount: 30 }])
        .when(AccountCommand::Withdraw { amount: 30 })
        .await
        .then_expect_events([AccountEvent::Withdrawn { amount: 30 }])
        .then_state(|account| assert_eq!(account.balance, 0));
}

#[tokio::test]
async fn the_balances_view_follows_every_account() {
    ProjectionFixture::new(Balances::default())
        .given(
            "bank_account",
            "a",
            [opened(), AccountEvent::Deposited { amount: 10 }],
        )
        .given(
            "bank_account",
            "b",
            [AccountEvent::Opened {
                owner: "Bob".to_owned(),
            }],
        )
        .given("bank_account", "a", [AccountEvent::Withdrawn { amount: 4 }])
        .then(|view| {
            assert_eq!(view.accounts["a"].owner, "Ada");
            assert_eq!(view.accounts["a"].balance, 6);
            assert_eq!(view.accounts["a"].movements, 2);
            assert_eq!(view.accounts["b"].balance, 0);
        })
        .await;
}

#[test]
fn every_account_event_round_trips_through_its_stored_form() {
    use cqrs_core::Event;

    let events = [
        opened(),
        AccountEvent::Deposited { amount: 7 },
        AccountEvent::Withdrawn { amount: 3 },
    ];
    assert_eq!(
        events.len(),
        AccountEvent::TYPES.len(),
        "one sample per event type"
    );
    for event in events {
        let payload = event.encode().expect("encode");
        assert!(
            payload.get("type").is_none(),
            "the payload carries no type tag"
        );
        let decoded = AccountEvent::decode(event.event_type(), event.schema_version(), payload)
            .expect("decode");
        assert_eq!(decoded, event);
    }
    assert!(AccountEvent::decode("Closed", 1, serde_json::json!({})).is_err());
    assert!(AccountEvent::decode("Deposited", 2, serde_json::json!({ "amount": 1 })).is_err());
}
