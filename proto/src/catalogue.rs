//! Every name Switchyard puts on AMQP, in one place: the topics, the methods
//! served on each (call, cast or fanout; request and response messages),
//! the notifications (event type, priority, message, who publishes and who
//! consumes) and the codes of failed replies. Senders and receivers both
//! name things through these constants, and `docs/wire-format.md` carries
//! [`markdown`] verbatim between its catalogue markers (a test below holds
//! the two together; servers list the methods they really serve in every
//! NO_SUCH_METHOD reply, and the end-to-end suite compares that list with
//! this one).

/// Topics (the `topic` of an RPC target).
pub mod topic {
    /// The collector's topic: samples to store.
    pub const COLLECTOR: &str = "collector";
    /// The notifier's alarm management.
    pub const ALARMS: &str = "alarms";
    /// Heartbeats of every instance, fanned out to the api's rollout table.
    pub const ROLLOUT: &str = "rollout";
    /// Prefix of one service's launcher control topic:
    /// `rollout-control.<service>`.
    pub const ROLLOUT_CONTROL_PREFIX: &str = "rollout-control.";

    /// The launcher control topic of `service`.
    pub fn rollout_control(service: &str) -> String {
        format!("{ROLLOUT_CONTROL_PREFIX}{service}")
    }
}

/// Method names (the `x-switchyard-method` header).
pub mod method {
    /// Cast to [`super::topic::COLLECTOR`].
    pub const RECORD_SAMPLES: &str = "record_samples";
    /// Calls to [`super::topic::ALARMS`].
    pub const CREATE_ALARM: &str = "create_alarm";
    /// See [`CREATE_ALARM`].
    pub const GET_ALARM: &str = "get_alarm";
    /// See [`CREATE_ALARM`].
    pub const LIST_ALARMS: &str = "list_alarms";
    /// See [`CREATE_ALARM`].
    pub const DELETE_ALARM: &str = "delete_alarm";
    /// See [`CREATE_ALARM`].
    pub const GET_ALARM_HISTORY: &str = "get_alarm_history";
    /// Fanout to [`super::topic::ROLLOUT`].
    pub const HEARTBEAT: &str = "heartbeat";
    /// Fanout to `rollout-control.<service>`.
    pub const PROMOTE: &str = "promote";
}

/// Notification event types (the routing key's last part and the
/// `x-switchyard-event-type` header).
pub mod event {
    /// One per stored batch of samples.
    pub const SAMPLE_RECORDED: &str = "sample.recorded";
    /// An alarm changed state.
    pub const ALARM_STATE_CHANGED: &str = "alarm.state_changed";
    /// A launcher moved its canary workers back to the main phase.
    pub const ROLLED_BACK: &str = "rollout.rolled_back";
    /// The api's fleet judge failed an instance mid-move.
    pub const VERDICT_FAILED: &str = "rollout.verdict_failed";
}

/// Notification pools: a pool's queue is shared by its listeners, each
/// notification goes to one of them.
pub mod pool {
    /// The notifier's alarm evaluation (`sample.recorded`).
    pub const ALARM_EVALUATOR: &str = "alarm-evaluator";
    /// The notifier's webhook delivery (`alarm.state_changed`).
    pub const WEBHOOK_SENDER: &str = "webhook-sender";
}

/// The `code` of a failed reply's `RpcError` when its kind is `REMOTE`
/// (an endpoint may add codes of its own).
pub mod code {
    /// What the call names does not exist (an alarm id).
    pub const NOT_FOUND: &str = "not_found";
    /// The endpoint failed in a way that may pass. A call is answered with
    /// it once, never retried behind the caller's back.
    pub const TRANSIENT: &str = "transient";
    /// Something the endpoint needs is down (its database), or the server
    /// is stopping.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The call's deadline passed before the endpoint finished.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    /// The endpoint failed unexpectedly (it panicked).
    pub const INTERNAL: &str = "internal";
}

/// Every code of [`code`], what it means and the gRPC status the api
/// answers its own callers with.
pub const CODES: &[(&str, &str, &str)] = &[
    (
        code::NOT_FOUND,
        "what the call names does not exist",
        "NOT_FOUND",
    ),
    (
        code::TRANSIENT,
        "a failure that may pass; retry later",
        "UNAVAILABLE",
    ),
    (
        code::UNAVAILABLE,
        "something the endpoint needs is down, or the server is stopping",
        "UNAVAILABLE",
    ),
    (
        code::DEADLINE_EXCEEDED,
        "the deadline passed before the endpoint finished",
        "DEADLINE_EXCEEDED",
    ),
    (
        code::INTERNAL,
        "the endpoint failed unexpectedly",
        "INTERNAL",
    ),
];

/// How a method is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Request and reply (`x-switchyard-kind = call`).
    Call,
    /// One-way, to the topic's durable queue: one instance handles it.
    Cast,
    /// One-way, to the topic's fanout exchange: every instance handles it.
    Fanout,
}

impl Kind {
    /// The word the catalogue uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Cast => "cast",
            Kind::Fanout => "fanout",
        }
    }
}

/// One method served on a topic.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    /// The topic it is served on.
    pub topic: &'static str,
    /// The method name.
    pub name: &'static str,
    /// How callers invoke it.
    pub kind: Kind,
    /// The request body's full message name.
    pub request: &'static str,
    /// The reply body's full message name (calls only).
    pub response: Option<&'static str>,
    /// The service that serves it.
    pub served_by: &'static str,
}

/// One notification.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The event type.
    pub event_type: &'static str,
    /// Its priority (routing key `notifications.<priority>.<event_type>`).
    pub priority: &'static str,
    /// The body's full message name.
    pub message: &'static str,
    /// Who publishes it.
    pub published_by: &'static str,
    /// Who consumes it (pool names), or who is meant to.
    pub consumed_by: &'static str,
}

const fn alarm_call(name: &'static str, request: &'static str, response: &'static str) -> Method {
    Method {
        topic: topic::ALARMS,
        name,
        kind: Kind::Call,
        request,
        response: Some(response),
        served_by: "notifier",
    }
}

/// Every method, by topic.
pub const METHODS: &[Method] = &[
    Method {
        topic: topic::COLLECTOR,
        name: method::RECORD_SAMPLES,
        kind: Kind::Cast,
        request: "switchyard.messaging.v1.RecordSamples",
        response: None,
        served_by: "collector",
    },
    alarm_call(
        method::CREATE_ALARM,
        "switchyard.metering.v1.CreateAlarmRequest",
        "switchyard.metering.v1.Alarm",
    ),
    alarm_call(
        method::GET_ALARM,
        "switchyard.metering.v1.GetAlarmRequest",
        "switchyard.metering.v1.Alarm",
    ),
    alarm_call(
        method::LIST_ALARMS,
        "switchyard.metering.v1.ListAlarmsRequest",
        "switchyard.metering.v1.ListAlarmsResponse",
    ),
    alarm_call(
        method::DELETE_ALARM,
        "switchyard.metering.v1.DeleteAlarmRequest",
        "switchyard.metering.v1.DeleteAlarmResponse",
    ),
    alarm_call(
        method::GET_ALARM_HISTORY,
        "switchyard.metering.v1.GetAlarmHistoryRequest",
        "switchyard.metering.v1.GetAlarmHistoryResponse",
    ),
    Method {
        topic: topic::ROLLOUT,
        name: method::HEARTBEAT,
        kind: Kind::Fanout,
        request: "switchyard.messaging.v1.Heartbeat",
        response: None,
        served_by: "api",
    },
    Method {
        topic: "rollout-control.<service>",
        name: method::PROMOTE,
        kind: Kind::Fanout,
        request: "switchyard.messaging.v1.PromoteCanary",
        response: None,
        served_by: "every worker under a launcher",
    },
];

/// Every notification.
pub const EVENTS: &[Event] = &[
    Event {
        event_type: event::SAMPLE_RECORDED,
        priority: "info",
        message: "switchyard.messaging.v1.SampleRecorded",
        published_by: "collector",
        consumed_by: "notifier (pool `alarm-evaluator`)",
    },
    Event {
        event_type: event::ALARM_STATE_CHANGED,
        priority: "info",
        message: "switchyard.messaging.v1.AlarmStateChanged",
        published_by: "notifier",
        consumed_by: "notifier (pool `webhook-sender`)",
    },
    Event {
        event_type: event::ROLLED_BACK,
        priority: "warn",
        message: "switchyard.messaging.v1.RolledBack",
        published_by: "every worker under a launcher, for its supervisor",
        consumed_by: "operators' own pools",
    },
    Event {
        event_type: event::VERDICT_FAILED,
        priority: "warn",
        message: "switchyard.messaging.v1.VerdictFailed",
        published_by: "api (its fleet judge)",
        consumed_by: "operators' own pools",
    },
];

/// The methods served on `topic`.
pub fn methods_of(topic: &str) -> impl Iterator<Item = &'static Method> + '_ {
    METHODS.iter().filter(move |m| m.topic == topic)
}

/// The catalogue as the Markdown tables `docs/wire-format.md` carries.
pub fn markdown() -> String {
    let mut text = String::from(
        "| topic | method | kind | request | response | served by |\n|---|---|---|---|---|---|\n",
    );
    for m in METHODS {
        text.push_str(&format!(
            "| `{}` | `{}` | {} | `{}` | {} | {} |\n",
            m.topic,
            m.name,
            m.kind.as_str(),
            m.request,
            m.response.map_or("—".to_string(), |r| format!("`{r}`")),
            m.served_by
        ));
    }
    text.push_str(
        "\n| event type | priority | message | published by | consumed by |\n|---|---|---|---|---|\n",
    );
    for e in EVENTS {
        text.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} | {} |\n",
            e.event_type, e.priority, e.message, e.published_by, e.consumed_by
        ));
    }
    text.push_str("\n| error code | meaning | the api's gRPC status |\n|---|---|---|\n");
    for (code, meaning, status) in CODES {
        text.push_str(&format!("| `{code}` | {meaning} | `{status}` |\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    const BEGIN: &str = "<!-- catalogue: begin (proto/src/catalogue.rs) -->\n";
    const END: &str = "<!-- catalogue: end -->";

    #[test]
    fn the_wire_document_carries_the_catalogue_verbatim() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md");
        let document = std::fs::read_to_string(path).expect("docs/wire-format.md");
        let start = document.find(BEGIN).expect("the begin marker") + BEGIN.len();
        let end = document[start..].find(END).expect("the end marker") + start;
        assert_eq!(
            &document[start..end],
            markdown(),
            "docs/wire-format.md's catalogue drifted: paste `markdown()` between the markers"
        );
    }

    fn message_names() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        set.file
            .iter()
            .flat_map(|file| {
                file.message_type
                    .iter()
                    .map(move |m| format!("{}.{}", file.package(), m.name()))
            })
            .collect()
    }

    #[test]
    fn every_message_named_exists_in_the_proto_files() {
        let known = message_names();
        for m in METHODS {
            for name in std::iter::once(m.request).chain(m.response) {
                assert!(known.contains(name), "{}: unknown message {name}", m.name);
            }
        }
        for e in EVENTS {
            assert!(
                known.contains(e.message),
                "{}: unknown message",
                e.event_type
            );
        }
    }

    /// `alarms.proto`'s service block documents the `alarms` methods for
    /// other languages' code generators: same methods (snake_case), same
    /// types.
    #[test]
    fn the_alarms_service_block_matches_the_alarms_topic() {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let service = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "Alarms")
            .expect("service Alarms");
        let snake = |name: &str| {
            let mut out = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        };
        let declared: BTreeSet<(String, String, String)> = service
            .method
            .iter()
            .map(|m| {
                (
                    snake(m.name()),
                    m.input_type().trim_start_matches('.').to_string(),
                    m.output_type().trim_start_matches('.').to_string(),
                )
            })
            .collect();
        let catalogued: BTreeSet<(String, String, String)> = methods_of(topic::ALARMS)
            .map(|m| {
                (
                    m.name.to_string(),
                    m.request.to_string(),
                    m.response.unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(declared, catalogued);
    }
}
