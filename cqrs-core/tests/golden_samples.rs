//! Golden samples: recorded on the first run; a change that cannot read an old sample,
//! or an integration event that drops or retypes a field, fails naming the type, the
//! version and the field; additive changes and upcast versions pass.
#![cfg(feature = "derive")]

use std::path::PathBuf;

use cqrs_core::testing::{GoldenError, GoldenSamples};
use serde_json::{Value, json};

/// A directory of its own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("golden-{}", uuid::Uuid::new_v4().simple()));
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

mod v1 {
    use cqrs_core::Event;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    pub(crate) enum OrderEvent {
        Placed {
            order: String,
            total: u64,
            lines: Vec<Line>,
        },
        Cancelled {
            order: String,
        },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct Line {
        pub(crate) sku: String,
        pub(crate) quantity: u32,
    }
}

fn v1_samples() -> Vec<v1::OrderEvent> {
    vec![
        v1::OrderEvent::Placed {
            order: "o-1".into(),
            total: 1250,
            lines: vec![v1::Line {
                sku: "tea".into(),
                quantity: 2,
            }],
        },
        v1::OrderEvent::Cancelled {
            order: "o-1".into(),
        },
    ]
}

#[test]
fn the_first_run_records_and_the_next_ones_pass() {
    let dir = Dir::new();
    let golden = GoldenSamples::new(&dir.0);
    golden.check_integration(&v1_samples()).expect("recorded");
    let kept: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("Placed/v1.json")).expect("kept"))
            .expect("JSON");
    assert_eq!(kept["total"], 1250);
    assert!(dir.0.join("Cancelled/v1.json").exists());
    golden.check_integration(&v1_samples()).expect("unchanged");
}

#[test]
fn every_type_name_needs_a_sample() {
    let dir = Dir::new();
    let only_one = &v1_samples()[..1];
    let error = GoldenSamples::new(&dir.0)
        .check(only_one)
        .expect_err("Cancelled has none");
    assert!(
        matches!(
            error,
            GoldenError::NoSample {
                event_type: "Cancelled"
            }
        ),
        "{error}"
    );
}

mod removed {
    use cqrs_core::Event;
    use serde::{Deserialize, Serialize};

    /// `total` was removed, and `quantity` became a string.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    pub(crate) enum OrderEvent {
        Placed { order: String, lines: Vec<Line> },
        Cancelled { order: String },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct Line {
        pub(crate) sku: String,
        pub(crate) quantity: String,
    }
}

#[test]
fn an_integration_event_that_drops_or_retypes_a_field_fails_naming_it() {
    let dir = Dir::new();
    let golden = GoldenSamples::new(&dir.0);
    golden.check_integration(&v1_samples()).expect("recorded");
    let changed = vec![
        removed::OrderEvent::Placed {
            order: "o-1".into(),
            lines: vec![removed::Line {
                sku: "tea".into(),
                quantity: "2".into(),
            }],
        },
        removed::OrderEvent::Cancelled {
            order: "o-1".into(),
        },
    ];
    let error = golden
        .check_integration(&changed)
        .expect_err("incompatible");
    let text = error.to_string();
    assert!(
        text.contains("`Placed` v1: field `total` was a number and is now missing"),
        "{text}"
    );
    assert!(
        text.contains("`Placed` v1: field `lines[].quantity` was a number and is now a string"),
        "{text}"
    );
    // The kept sample was not rewritten.
    let kept: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("Placed/v1.json")).expect("kept"))
            .expect("JSON");
    assert_eq!(kept["total"], 1250);
}

mod added {
    use cqrs_core::Event;
    use serde::{Deserialize, Serialize};

    /// `note` was added, with a default so that old samples still decode.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    pub(crate) enum OrderEvent {
        Placed {
            order: String,
            total: u64,
            lines: Vec<super::v1::Line>,
            #[serde(default)]
            note: String,
        },
        Cancelled {
            order: String,
        },
    }
}

#[test]
fn adding_a_field_passes() {
    let dir = Dir::new();
    let golden = GoldenSamples::new(&dir.0);
    golden.check_integration(&v1_samples()).expect("recorded");
    let grown = vec![
        added::OrderEvent::Placed {
            order: "o-1".into(),
            total: 1250,
            lines: vec![v1::Line {
                sku: "tea".into(),
                quantity: 2,
            }],
            note: "gift".into(),
        },
        added::OrderEvent::Cancelled {
            order: "o-1".into(),
        },
    ];
    golden.check_integration(&grown).expect("additive");
}

mod renamed {
    use cqrs_core::Event;
    use serde::{Deserialize, Serialize};

    /// `total` renamed `amount`, at the same version and without an upcaster: old
    /// events no longer decode.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    pub(crate) enum OrderEvent {
        Placed {
            order: String,
            amount: u64,
            lines: Vec<super::v1::Line>,
        },
        Cancelled {
            order: String,
        },
    }
}

mod upcast {
    use cqrs_core::Event;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// The same rename done right: version 2, with an upcaster from version 1.
    #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    pub(crate) enum OrderEvent {
        #[cqrs(version = 2, upcast(v1 = total_to_amount))]
        Placed {
            order: String,
            amount: u64,
            lines: Vec<super::v1::Line>,
        },
        Cancelled {
            order: String,
        },
    }

    fn total_to_amount(mut payload: Value) -> Result<Value, String> {
        let total = payload
            .as_object_mut()
            .and_then(|fields| fields.remove("total"))
            .ok_or("no total")?;
        payload["amount"] = total;
        Ok(payload)
    }
}

#[test]
fn a_domain_event_that_cannot_read_an_old_sample_fails_and_an_upcast_version_passes() {
    let dir = Dir::new();
    let golden = GoldenSamples::new(&dir.0);
    golden.check(&v1_samples()).expect("recorded");
    let lines = || {
        vec![v1::Line {
            sku: "tea".into(),
            quantity: 2,
        }]
    };

    let broken = vec![
        renamed::OrderEvent::Placed {
            order: "o-1".into(),
            amount: 1250,
            lines: lines(),
        },
        renamed::OrderEvent::Cancelled {
            order: "o-1".into(),
        },
    ];
    let error = golden
        .check(&broken)
        .expect_err("the v1 sample no longer decodes");
    let text = error.to_string();
    assert!(text.contains("`Placed` v1"), "{text}");
    assert!(text.contains("a kept sample no longer decodes"), "{text}");
    assert!(text.contains("missing field `amount`"), "{text}");

    let fixed = vec![
        upcast::OrderEvent::Placed {
            order: "o-1".into(),
            amount: 1250,
            lines: lines(),
        },
        upcast::OrderEvent::Cancelled {
            order: "o-1".into(),
        },
    ];
    golden
        .check(&fixed)
        .expect("v1 upcasts; v2 is recorded beside it");
    assert!(dir.0.join("Placed/v1.json").exists() && dir.0.join("Placed/v2.json").exists());
    let v2: Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("Placed/v2.json")).expect("kept"))
            .expect("JSON");
    assert_eq!(
        v2,
        json!({ "order": "o-1", "amount": 1250, "lines": [{ "sku": "tea", "quantity": 2 }] })
    );
}
