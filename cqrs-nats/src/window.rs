//! A breaking change's upgrade window: [`SchemaWindow`].

use std::fmt;

use serde_json::Value;

use crate::Message;

type Downcast = dyn Fn(&Value) -> Result<Value, String> + Send + Sync;

/// A breaking change to integration messages, in its upgrade window: while the window
/// is open, every message a relay publishes under the new version's subjects is also
/// published, turned back into the old version's shape by a downcaster, under the old
/// version's subjects. Consumers move from the old subjects to the new ones each in
/// its own time; when the last has moved, the window is closed by configuration
/// ([`Relay::close_windows`](crate::Relay::close_windows)), not by a change of code.
///
/// The subjects are matched by prefix: a window from `orders.v2.` to `orders.v1.`
/// publishes a copy of a message to `orders.v2.placed` on `orders.v1.placed`. The copy
/// carries the same [`POSITION_HEADER`](crate::POSITION_HEADER) and
/// [`EVENT_ID_HEADER`](crate::EVENT_ID_HEADER) as the original, and a `Nats-Msg-Id` of
/// its own (`<event id>:<window name>`), so both versions may live in one stream and
/// each is still deduplicated.
///
/// ```
/// use cqrs_nats::SchemaWindow;
/// use serde_json::json;
///
/// // Version 2 split `total` (a float of euros) into `amount` (cents) and `currency`.
/// let window = SchemaWindow::new("orders-v1", "orders.v2.", "orders.v1.", |v2| {
///     let cents = v2["amount"].as_i64().ok_or("no amount")?;
///     if v2["currency"] != "EUR" {
///         return Err("version 1 knows only euros");
///     }
///     Ok(json!({ "order": v2["order"], "total": cents as f64 / 100.0 }))
/// })?;
/// assert_eq!(window.name(), "orders-v1");
/// # Ok::<(), cqrs_nats::WindowError>(())
/// ```
pub struct SchemaWindow {
    name: String,
    new_prefix: String,
    old_prefix: String,
    downcast: Box<Downcast>,
}

impl fmt::Debug for SchemaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaWindow")
            .field("name", &self.name)
            .field("new_prefix", &self.new_prefix)
            .field("old_prefix", &self.old_prefix)
            .finish_non_exhaustive()
    }
}

/// A schema window that cannot be declared or closed as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// A window's name is empty or has characters other than ASCII letters, digits,
    /// `-` and `_`.
    #[error("a schema window's name must be non-empty ASCII letters, digits, `-` or `_`: `{0}`")]
    Name(String),
    /// A subject prefix is not one or more subject tokens followed by a `.`.
    #[error(
        "a schema window's subject prefix must be tokens ending in `.`, without wildcards or spaces: `{0}`"
    )]
    Prefix(String),
    /// The new and the old prefix overlap, so a copy could be taken for an original.
    #[error("the schema window `{window}` maps `{new}` to `{old}`: one is a prefix of the other")]
    Overlap {
        /// The window.
        window: String,
        /// Its new version's prefix.
        new: String,
        /// Its old version's prefix.
        old: String,
    },
    /// Two windows of one relay have one name.
    #[error("the schema window `{0}` is declared twice")]
    Duplicate(String),
    /// The configuration closes a window the relay does not declare (a typo would
    /// otherwise leave the window open).
    #[error(
        "the configuration closes the schema window `{name}`, but the relay declares only: {declared}"
    )]
    Unknown {
        /// The name in the configuration.
        name: String,
        /// The names declared, comma-separated.
        declared: String,
    },
}

impl SchemaWindow {
    /// A window named `name` (how configuration closes it), copying each message under
    /// `new_prefix` to the same subject under `old_prefix`, its payload downcast by
    /// `downcast`.
    ///
    /// A downcast that fails stops the relay at that event with
    /// [`RelayError::Downcast`](crate::RelayError::Downcast) (nothing after it is
    /// published, and the projection's status shows the error): an old consumer must
    /// not silently miss a message.
    ///
    /// # Errors
    ///
    /// [`WindowError`] when the name or a prefix is malformed, or the prefixes overlap.
    pub fn new<F, E>(
        name: impl Into<String>,
        new_prefix: impl Into<String>,
        old_prefix: impl Into<String>,
        downcast: F,
    ) -> Result<Self, WindowError>
    where
        F: Fn(&Value) -> Result<Value, E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        let name = name.into();
        let new_prefix = new_prefix.into();
        let old_prefix = old_prefix.into();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(WindowError::Name(name));
        }
        for prefix in [&new_prefix, &old_prefix] {
            if !valid_prefix(prefix) {
                return Err(WindowError::Prefix(prefix.clone()));
            }
        }
        if new_prefix.starts_with(&old_prefix) || old_prefix.starts_with(&new_prefix) {
            return Err(WindowError::Overlap {
                window: name,
                new: new_prefix,
                old: old_prefix,
            });
        }
        Ok(Self {
            name,
            new_prefix,
            old_prefix,
            downcast: Box::new(move |payload| downcast(payload).map_err(|e| e.to_string())),
        })
    }

    /// The window's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The old version's copy of `message`: `None` when its subject is not under the
    /// new prefix, the downcaster's error when it refuses.
    pub(crate) fn copy(&self, message: &Message) -> Option<Result<Message, String>> {
        let rest = message.subject.strip_prefix(&self.new_prefix)?;
        Some(
            (self.downcast)(&message.payload)
                .map(|payload| Message::new(format!("{}{rest}", self.old_prefix), payload)),
        )
    }
}

/// One or more subject tokens, each followed by a `.`; no wildcards, no whitespace.
fn valid_prefix(prefix: &str) -> bool {
    prefix.strip_suffix('.').is_some_and(|tokens| {
        tokens.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c == '*' || c == '>' || c.is_whitespace())
        })
    })
}

/// The windows of one relay, and which of them configuration closed.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    declared: Vec<SchemaWindow>,
    closed: Vec<String>,
}

impl Windows {
    pub(crate) fn declare(&mut self, window: SchemaWindow) -> Result<(), WindowError> {
        if self.declared.iter().any(|w| w.name == window.name) {
            return Err(WindowError::Duplicate(window.name));
        }
        self.declared.push(window);
        Ok(())
    }

    pub(crate) fn close(&mut self, name: &str) -> Result<(), WindowError> {
        if !self.declared.iter().any(|w| w.name == name) {
            return Err(WindowError::Unknown {
                name: name.to_owned(),
                declared: self
                    .declared
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !self.closed.iter().any(|c| c == name) {
            self.closed.push(name.to_owned());
        }
        Ok(())
    }

    /// The windows still open.
    pub(crate) fn open(&self) -> impl Iterator<Item = &SchemaWindow> {
        self.declared
            .iter()
            .filter(|w| !self.closed.contains(&w.name))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn window() -> SchemaWindow {
        SchemaWindow::new("orders-v1", "orders.v2.", "orders.v1.", |v: &Value| {
            v["amount"]
                .as_i64()
                .map(|a| json!({ "total": a }))
                .ok_or("no amount")
        })
        .expect("a valid window")
    }

    #[test]
    fn copies_only_messages_under_the_new_prefix() {
        let w = window();
        let copy = w.copy(&Message::new("orders.v2.placed", json!({ "amount": 5 })));
        assert_eq!(
            copy,
            Some(Ok(Message::new("orders.v1.placed", json!({ "total": 5 }))))
        );
        assert_eq!(
            w.copy(&Message::new("orders.v2.x", json!({}))),
            Some(Err("no amount".to_owned()))
        );
        assert_eq!(w.copy(&Message::new("orders.v3.placed", json!({}))), None);
        assert_eq!(w.copy(&Message::new("orders.v2", json!({}))), None);
    }

    #[test]
    fn malformed_windows_are_refused() {
        let ok = |_: &Value| Ok::<_, String>(Value::Null);
        assert_eq!(
            SchemaWindow::new("", "a.", "b.", ok).err(),
            Some(WindowError::Name(String::new()))
        );
        assert_eq!(
            SchemaWindow::new("a b", "a.", "b.", ok).err(),
            Some(WindowError::Name("a b".to_owned()))
        );
        for bad in ["a", "a.>.", "a..", ".", "a *.", "*."] {
            assert_eq!(
                SchemaWindow::new("w", bad, "b.", ok).err(),
                Some(WindowError::Prefix(bad.to_owned())),
                "{bad}"
            );
        }
        assert!(matches!(
            SchemaWindow::new("w", "orders.", "orders.v1.", ok),
            Err(WindowError::Overlap { .. })
        ));
    }

    #[test]
    fn configuration_closes_declared_windows_only() {
        let mut windows = Windows::default();
        windows.declare(window()).expect("declared");
        assert_eq!(
            windows.declare(window()).err(),
            Some(WindowError::Duplicate("orders-v1".to_owned()))
        );
        assert_eq!(
            windows.close("orders-v0").err(),
            Some(WindowError::Unknown {
                name: "orders-v0".to_owned(),
                declared: "orders-v1".to_owned()
            })
        );
        assert_eq!(windows.open().count(), 1);
        windows.close("orders-v1").expect("closed");
        assert_eq!(windows.open().count(), 0);
    }
}
