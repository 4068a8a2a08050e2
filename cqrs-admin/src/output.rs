//! Tables for people, JSON for scripts.

use std::io::{self, Write};

use cqrs_core::store::RecordedEvent;
use cqrs_postgres::PgProjectionStatus;
use serde_json::{Value, json};

/// A table: a header, rows of cells, printed with aligned columns.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub(crate) fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, &mut self.header.iter().copied())?;
        for row in &self.rows {
            line(out, &mut row.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub(crate) fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// A stored event on one line: `TYPE/ID#VERSION  EVENT vN  PAYLOAD`.
pub(crate) fn event_line(event: &RecordedEvent) -> String {
    format!(
        "{}/{}#{}  {} v{}  {}",
        event.stream_type,
        event.stream_id,
        event.stream_version,
        event.event_type,
        event.schema_version,
        event.payload
    )
}

/// A projection version, as the API and `--json` show it.
pub(crate) fn projection_json(s: &PgProjectionStatus) -> Value {
    json!({
        "name": s.name,
        "version": s.version,
        "served": s.active,
        "state": s.state.as_str(),
        "position": s.position.to_string(),
        "lag_events": s.lag_events,
        "lag_seconds": s.lag.as_secs_f64(),
        "owner": s.owner,
        "error": s.error,
        "failed_at": s.failed_at.map(|p| p.to_string()),
        "updated_at": s.updated_at,
    })
}

/// The event a projection failed on, as the API and `--json` show it.
pub(crate) fn failed_event_json(event: &cqrs_core::store::RecordedEvent) -> Value {
    json!({
        "stream_type": event.stream_type,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "payload": event.payload,
    })
}
