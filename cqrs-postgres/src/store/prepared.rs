//! An append checked and converted for the server: what every append statement binds.

use cqrs_core::Error;
use cqrs_core::store::AppendRequest;
use sqlx::types::Json;
use uuid::Uuid;

/// An append whose numbers fit the columns, with its events as the parallel arrays the
/// append statements bind.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) request: AppendRequest,
    /// The expected version as a bigint.
    pub(crate) expected: i64,
    /// The events' schema versions as integers.
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) event_ids: Vec<Uuid>,
}

impl Prepared {
    /// `request`, checked by [`AppendRequest::validate`] and with its numbers converted.
    ///
    /// # Errors
    ///
    /// What `validate` refuses, and [`Error::InvalidAppend`] for a number the columns
    /// cannot hold.
    pub(crate) fn new(request: AppendRequest) -> cqrs_core::Result<Self> {
        request.validate()?;
        let expected = i64::try_from(request.expected_version)
            .map_err(|_| invalid(&request, "the expected version does not fit a bigint"))?;
        let schema_versions = request
            .events
            .iter()
            .map(|event| i32::try_from(event.schema_version))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid(&request, "a schema version does not fit an integer"))?;
        let event_ids = request.events.iter().map(|event| event.event_id).collect();
        Ok(Self {
            request,
            expected,
            schema_versions,
            event_ids,
        })
    }

    /// The events' type names.
    pub(crate) fn event_types(&self) -> Vec<&str> {
        self.request
            .events
            .iter()
            .map(|event| event.event_type.as_ref())
            .collect()
    }

    /// The events' payloads, as JSON parameters.
    pub(crate) fn payloads(&self) -> Vec<Json<&serde_json::Value>> {
        self.request
            .events
            .iter()
            .map(|event| Json(&event.payload))
            .collect()
    }

    /// The events' metadata, as JSON parameters.
    pub(crate) fn metadata(&self) -> Vec<Json<&cqrs_core::Metadata>> {
        self.request
            .events
            .iter()
            .map(|event| Json(&event.metadata))
            .collect()
    }

    /// The stream, as `type/id`.
    pub(crate) fn stream(&self) -> String {
        format!("{}/{}", self.request.stream_type, self.request.stream_id)
    }

    /// The refusal for an append whose stream is not at its expected version.
    pub(crate) fn conflict(&self) -> Error {
        Error::Conflict {
            stream_type: self.request.stream_type.clone().into_owned(),
            stream_id: self.request.stream_id.clone(),
            expected: self.request.expected_version,
        }
    }
}

fn invalid(request: &AppendRequest, reason: &'static str) -> Error {
    Error::InvalidAppend {
        stream_type: request.stream_type.clone().into_owned(),
        stream_id: request.stream_id.clone(),
        reason,
    }
}
