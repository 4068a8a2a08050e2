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
