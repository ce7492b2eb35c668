//! JSON log lines a log shipper can join to traces: one object per event
//! with `timestamp`, `level`, `target`, `message` and the event's fields at
//! the top level, plus `service`, `instance` and — inside a traced span —
//! `trace_id` and `span_id` (the OpenTelemetry log data model's names), so
//! a log line leads to its trace and back.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The formatter (`tracing_subscriber::fmt::layer().event_format(..)`).
#[derive(Debug, Clone)]
pub struct JsonLines {
    service: String,
    instance: String,
}

impl JsonLines {
    /// Lines naming `service` and `instance`.
    pub fn new(service: &str, instance: &str) -> Self {
        Self {
            service: service.to_string(),
            instance: instance.to_string(),
        }
    }
}

/// Collects an event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(timestamp));
        line.insert(
            "level".into(),
            Value::from(event.metadata().level().as_str()),
        );
        line.insert("target".into(), Value::from(event.metadata().target()));
        // The message first among the event's own fields; a field may not
        // overwrite the names above.
        for (key, value) in fields.0 {
            line.entry(key).or_insert(value);
        }
        line.insert("service".into(), Value::from(self.service.as_str()));
        line.insert("instance".into(), Value::from(self.instance.as_str()));
        if let Some((trace_id, span_id)) = crate::propagation::ids(&tracing::Span::current()) {
            line.insert("trace_id".into(), Value::from(trace_id));
            line.insert("span_id".into(), Value::from(span_id));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}
