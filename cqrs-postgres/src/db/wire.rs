//! What travels on the store's `NOTIFY` channels, defined once: the channel names, the
//! payloads as Rust writes and reads them, and the SQL expressions the statements that
//! notify splice in (`{position_notice}`, `{checkpoint_notice}`, `{control_notice}`).
//!
//! - `<schema>_events`: an append committed; the payload is the position of its last
//!   event, `<commit>.<sequence>` (a [`Position`]'s text).
//! - `<schema>_proj`: a projection's row changed. A checkpoint that moved is
//!   `c<TAB>name<TAB>version<TAB>served<TAB><commit>.<sequence>` (`served` is `true` or
//!   `false`); a failure or an operator's request is `x<TAB>name<TAB>version`.

use cqrs_core::Position;

use super::schema::SchemaName;

/// The channel appends are announced on.
pub(crate) fn events_channel(schema: &SchemaName) -> String {
    format!("{}_events", schema.as_str())
}

/// The channel projection checkpoints and operator requests are announced on.
pub(crate) fn projections_channel(schema: &SchemaName) -> String {
    format!("{}_proj", schema.as_str())
}

/// The payload of an append's notification, over a row with `transaction_id` and
/// `sequence` (its last event).
pub(crate) const POSITION_NOTICE_SQL: &str = "transaction_id::text || '.' || sequence::text";

/// The payload of a moved checkpoint, over the projection's row (`name`, `version`,
/// `active`, `transaction_id`, `sequence`).
pub(crate) const CHECKPOINT_NOTICE_SQL: &str = "concat_ws(E'\\t', 'c', name, version::text, \
     active::text, transaction_id::text || '.' || sequence::text)";

/// The payload of a failure or an operator's request, over the projection's row (`name`,
/// `version`).
pub(crate) const CONTROL_NOTICE_SQL: &str = "concat_ws(E'\\t', 'x', name, version::text)";

/// The placeholders of the statements that notify, and what each becomes.
pub(crate) const PLACEHOLDERS: [(&str, &str); 3] = [
    ("{position_notice}", POSITION_NOTICE_SQL),
    ("{checkpoint_notice}", CHECKPOINT_NOTICE_SQL),
    ("{control_notice}", CONTROL_NOTICE_SQL),
];

/// The payload of an append's notification.
pub(crate) fn position_notice(position: Position) -> String {
    position.to_string()
}

/// A notification on the projections' channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A projection version's checkpoint moved to `position`; `served` when it is the
    /// version readers are served.
    Checkpoint {
        name: String,
        version: u32,
        served: bool,
        position: Position,
    },
    /// A projection version failed, or an operator asked something of it.
    Control { name: String, version: u32 },
}

impl Notice {
    /// The payload, as the statements write it.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> String {
        match self {
            Self::Checkpoint {
                name,
                version,
                served,
                position,
            } => format!("c\t{name}\t{version}\t{served}\t{position}"),
            Self::Control { name, version } => format!("x\t{name}\t{version}"),
        }
    }

    /// Reads a payload; `None` for one of another format. The name is everything between
    /// the kind and the last fields, so a name holding a tab still reads back whole.
    pub(crate) fn parse(payload: &str) -> Option<Self> {
        if let Some(rest) = payload.strip_prefix("c\t") {
            let mut parts = rest.rsplitn(4, '\t');
            let (Some(position), Some(served), Some(version), Some(name)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let served = match served {
                "true" => true,
                "false" => false,
                _ => return None,
            };
            return Some(Self::Checkpoint {
                name: name.to_owned(),
                version: version.parse().ok()?,
                served,
                position: position.parse().ok()?,
            });
        }
        let rest = payload.strip_prefix("x\t")?;
        let (name, version) = rest.rsplit_once('\t')?;
        Some(Self::Control {
            name: name.to_owned(),
            version: version.parse().ok()?,
        })
    }
}

/// Reads the payload of an append's notification.
pub(crate) fn parse_position_notice(payload: &str) -> Option<Position> {
    payload.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notices() -> Vec<Notice> {
        vec![
            Notice::Checkpoint {
                name: "balances".to_owned(),
                version: 2,
                served: true,
                position: Position::new(9, 1),
            },
            Notice::Checkpoint {
                name: "with\ttab".to_owned(),
                version: u32::MAX,
                served: false,
                position: Position::START,
            },
            Notice::Control {
                name: "orders".to_owned(),
                version: 1,
            },
            Notice::Control {
                name: "x\ty".to_owned(),
                version: 7,
            },
        ]
    }

    #[test]
    fn notices_read_back_as_written() {
        for notice in notices() {
            assert_eq!(Notice::parse(&notice.payload()), Some(notice));
        }
        let position = Position::new(u64::MAX, 3);
        assert_eq!(
            parse_position_notice(&position_notice(position)),
            Some(position)
        );
    }

    #[test]
    fn other_payloads_are_not_notices() {
        for payload in ["", "c\tname", "c\tn\t1\tmaybe\t1.1", "x\tn\tone", "q\tn\t1"] {
            assert_eq!(Notice::parse(payload), None, "{payload:?}");
        }
        assert_eq!(parse_position_notice("1-1"), None);
    }

    /// The SQL expressions write what the Rust side reads: each is evaluated by the
    /// server over the rows the notices above describe.
    #[tokio::test]
    async fn the_server_writes_the_payloads_rust_reads() {
        use sqlx::{Connection as _, PgConnection};
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        for notice in notices() {
            let (name, version, served, position) = match &notice {
                Notice::Checkpoint {
                    name,
                    version,
                    served,
                    position,
                } => (name, *version, *served, *position),
                Notice::Control { name, version } => (name, *version, false, Position::START),
            };
            let expression = match notice {
                Notice::Checkpoint { .. } => CHECKPOINT_NOTICE_SQL,
                Notice::Control { .. } => CONTROL_NOTICE_SQL,
            };
            let sql = format!(
                "SELECT {expression}, {POSITION_NOTICE_SQL} FROM (SELECT $1::text AS name, \
                 $2::bigint AS version, $3::boolean AS active, $4::numeric AS transaction_id, \
                 $5::numeric AS sequence) AS row"
            );
            let (payload, position_payload): (String, String) =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(name)
                    .bind(i64::from(version))
                    .bind(served)
                    .bind(position.commit().to_string())
                    .bind(position.sequence().to_string())
                    .fetch_one(&mut conn)
                    .await
                    .expect("the expressions run");
            assert_eq!(Notice::parse(&payload), Some(notice));
            assert_eq!(parse_position_notice(&position_payload), Some(position));
        }
    }
}
