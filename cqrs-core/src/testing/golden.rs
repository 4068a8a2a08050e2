//! Golden samples: encoded events kept in the repository, so a change that can no
//! longer read what was written fails a test instead of a deployment.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Event;

/// Samples of encoded events in a directory of the repository (one file per type name
/// and schema version: `<dir>/<type>/v<version>.json`), and the checks against them.
///
/// - [`check`](Self::check), for any event type: every sample kept for the type's names
///   still decodes (through its upcasters), and each name has a sample at its current
///   version (written on the first run: commit it).
/// - [`check_integration`](Self::check_integration), for events other services read
///   (where old consumers cannot be upgraded at once): also, the current encoding of
///   each sample keeps every field its kept sample has, with the same JSON kind. Adding
///   a field passes; removing, renaming or retyping one fails, naming it.
///
/// Set `GOLDEN_UPDATE=1` to rewrite the samples at their current versions (after a
/// reviewed, deliberate change).
///
/// ```
/// # use cqrs_core::Event;
/// # use serde::{Deserialize, Serialize};
/// use cqrs_core::testing::GoldenSamples;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// enum OrderEvent {
///     Placed { order: String, total: u64 },
///     Cancelled { order: String },
/// }
///
/// # let dir = std::env::temp_dir().join(format!("golden-doc-{}", std::process::id()));
/// let golden = GoldenSamples::new(&dir); // in a project: GoldenSamples::new("tests/golden")
/// golden.check(&[
///     OrderEvent::Placed { order: "o-1".into(), total: 1250 },
///     OrderEvent::Cancelled { order: "o-1".into() },
/// ])?;
/// assert!(dir.join("Placed/v1.json").exists());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), cqrs_core::testing::GoldenError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GoldenSamples {
    dir: PathBuf,
    update: bool,
}

/// Why golden samples do not hold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// A type name of the event type has no sample among those given.
    #[error("no sample of `{event_type}` was given: add one to the list")]
    NoSample {
        /// The type name.
        event_type: &'static str,
    },
    /// A kept sample no longer decodes.
    #[error("`{event_type}` v{version} ({}): a kept sample no longer decodes: {reason}", path.display())]
    Undecodable {
        /// The type name.
        event_type: String,
        /// The sample's schema version.
        version: u32,
        /// The sample's file.
        path: PathBuf,
        /// What decoding said (it names the field).
        reason: String,
    },
    /// An integration event changed in a way an old consumer cannot read.
    #[error(
        "`{event_type}` v{version}: field `{field}` was {was} and is now {now}: an old consumer cannot read it (only adding fields is compatible; publish a new version instead)"
    )]
    Incompatible {
        /// The type name.
        event_type: String,
        /// The schema version.
        version: u32,
        /// The field's path (`order.lines[].sku`).
        field: String,
        /// Its JSON kind in the kept sample.
        was: &'static str,
        /// Its kind now (`missing` when removed).
        now: &'static str,
    },
    /// A sample does not encode.
    #[error("`{event_type}`: the sample does not encode: {reason}")]
    Encode {
        /// The type name.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing a sample failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Several problems, each on a line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<GoldenError>),
}

impl GoldenSamples {
    /// Samples kept in `dir` (created when missing). `GOLDEN_UPDATE=1` in the
    /// environment rewrites them.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            update: std::env::var_os("GOLDEN_UPDATE").is_some_and(|v| v == "1"),
        }
    }

    /// Checks that every kept sample of `E`'s type names still decodes, and keeps a
    /// sample of each of `samples` at its current version (writing it when new). Every
    /// type name of `E` needs a sample.
    ///
    /// # Errors
    ///
    /// Every problem found ([`GoldenError::Several`] when more than one).
    pub fn check<E: Event + Debug>(&self, samples: &[E]) -> Result<(), GoldenError> {
        self.run(samples, false)
    }

    /// [`check`](Self::check), and also: the current encoding of each sample keeps
    /// every field of the sample kept for its version, with the same JSON kind.
    ///
    /// # Errors
    ///
    /// Every problem found, each naming the type, the version and the field.
    pub fn check_integration<E: Event + Debug>(&self, samples: &[E]) -> Result<(), GoldenError> {
        self.run(samples, true)
    }

    fn run<E: Event + Debug>(&self, samples: &[E], additive: bool) -> Result<(), GoldenError> {
        let mut problems = Vec::new();
        let mut current: BTreeMap<&'static str, (u32, Value)> = BTreeMap::new();
        for sample in samples {
            match sample.encode() {
                Ok(encoded) => {
                    current.insert(sample.event_type(), (sample.schema_version(), encoded));
                }
                Err(error) => problems.push(GoldenError::Encode {
                    event_type: sample.event_type().to_owned(),
                    reason: error.to_string(),
                }),
            }
        }
        for event_type in E::TYPES {
            if !current.contains_key(event_type.name) {
                problems.push(GoldenError::NoSample {
                    event_type: event_type.name,
                });
            }
        }
        for (event_type, (version, encoded)) in &current {
            let kept = self.kept(event_type, &mut problems);
            for (kept_version, path, payload) in &kept {
                if let Err(error) = E::decode(event_type, *kept_version, payload.clone()) {
                    problems.push(GoldenError::Undecodable {
                        event_type: (*event_type).to_owned(),
                        version: *kept_version,
                        path: path.clone(),
                        reason: crate::error_chain(&error),
                    });
                }
                if additive && kept_version == version && !self.update {
                    compare(event_type, *version, "", payload, encoded, &mut problems);
                }
            }
            let at_version = kept.iter().any(|(v, _, _)| v == version);
            if (!at_version || self.update)
                && let Err(error) = self.write(event_type, *version, encoded)
            {
                problems.push(error);
            }
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(GoldenError::Several(problems)),
        }
    }

    /// The kept samples of `event_type`: version, file, payload.
    fn kept(
        &self,
        event_type: &str,
        problems: &mut Vec<GoldenError>,
    ) -> Vec<(u32, PathBuf, Value)> {
        let dir = self.dir.join(event_type);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut kept = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(version) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(payload) => kept.push((version, path, payload)),
                    Err(error) => problems.push(GoldenError::Undecodable {
                        event_type: event_type.to_owned(),
                        version,
                        path,
                        reason: format!("the file is not JSON: {error}"),
                    }),
                },
                Err(source) => problems.push(GoldenError::Io { path, source }),
            }
        }
        kept.sort_by_key(|(version, _, _)| *version);
        kept
    }

    fn write(&self, event_type: &str, version: u32, payload: &Value) -> Result<(), GoldenError> {
        let dir = self.dir.join(event_type);
        std::fs::create_dir_all(&dir).map_err(|source| GoldenError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("v{version}.json"));
        let mut text = serde_json::to_string_pretty(payload).unwrap_or_default();
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| GoldenError::Io { path, source })
    }
}

/// Compares the kept `was` with the current `now`: every field of `was` must be in
/// `now` with the same kind.
fn compare(
    event_type: &str,
    version: u32,
    at: &str,
    was: &Value,
    now: &Value,
    problems: &mut Vec<GoldenError>,
) {
    let incompatible = |field: String, now_kind: &'static str| GoldenError::Incompatible {
        event_type: event_type.to_owned(),
        version,
        field,
        was: kind(was),
        now: now_kind,
    };
    match (was, now) {
        (Value::Object(was_fields), Value::Object(now_fields)) => {
            for (name, was_value) in was_fields {
                let path = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                match now_fields.get(name) {
                    Some(now_value) => {
                        compare(event_type, version, &path, was_value, now_value, problems)
                    }
                    None => problems.push(GoldenError::Incompatible {
                        event_type: event_type.to_owned(),
                        version,
                        field: path,
                        was: kind(was_value),
                        now: "missing",
                    }),
                }
            }
        }
        (Value::Array(was_items), Value::Array(now_items)) => {
            if let (Some(was_item), Some(now_item)) = (was_items.first(), now_items.first()) {
                compare(
                    event_type,
                    version,
                    &format!("{at}[]"),
                    was_item,
                    now_item,
                    problems,
                );
            }
        }
        // `null` in a kept sample (an absent option) says nothing of the kind.
        (Value::Null, _) => {}
        (was_value, now_value) if kind(was_value) != kind(now_value) => {
            problems.push(incompatible(at.to_owned(), kind(now_value)));
        }
        _ => {}
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
