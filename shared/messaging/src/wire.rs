//! The wire format: exchange and queue names, headers, and how a protobuf
//! payload travels. `docs/wire-format.md` describes the same for clients in
//! other languages; keep the two in step.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// `content-type` of every Switchyard message body.
pub const CONTENT_TYPE: &str = "application/x-protobuf";

/// Header: the RPC method to run.
pub const METHOD: &str = "x-switchyard-method";
/// Header: what the message is, one of [`kind`]'s values.
pub const KIND: &str = "x-switchyard-kind";
/// Header: how many times this message has been delivered and retried.
pub const DELIVERY_COUNT: &str = "x-switchyard-delivery-count";
/// Header on replies: [`status::OK`] or [`status::ERROR`].
pub const STATUS: &str = "x-switchyard-status";
/// Header on dead-lettered messages: why.
pub const DEAD_LETTER_REASON: &str = "x-switchyard-dead-letter-reason";
/// Header on dead-lettered messages: the queue it came from.
pub const ORIGINAL_QUEUE: &str = "x-switchyard-original-queue";
/// Header on notifications: the event type (`sample.recorded`).
pub const EVENT_TYPE: &str = "x-switchyard-event-type";
/// Header on notifications: the priority.
pub const PRIORITY: &str = "x-switchyard-priority";
/// Header on notifications: who published it.
pub const PUBLISHER: &str = "x-switchyard-publisher";

/// The values of [`KIND`].
pub mod kind {
    /// A request that waits for a reply.
    pub const CALL: &str = "call";
    /// A one-way request: a cast to a topic's queue, or a fanout to every
    /// instance.
    pub const CAST: &str = "cast";
    /// A notification (event).
    pub const NOTIFICATION: &str = "notification";
}

/// The values of [`STATUS`].
pub mod status {
    /// The body is the method's response message.
    pub const OK: &str = "ok";
    /// The body is a `switchyard.messaging.v1.RpcError`.
    pub const ERROR: &str = "error";
}

/// RabbitMQ's direct reply-to pseudo queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// RabbitMQ's own names for the queue arguments Switchyard declares with
/// (<https://www.rabbitmq.com/docs/queues#optional-arguments>) and the
/// header the broker sets when it dead-letters a message.
pub mod rabbitmq {
    /// Queue argument: `classic` or `quorum` ([`CLASSIC`], [`QUORUM`]).
    pub const QUEUE_TYPE: &str = "x-queue-type";
    /// A value of [`QUEUE_TYPE`]: one node holds the queue.
    pub const CLASSIC: &str = "classic";
    /// A value of [`QUEUE_TYPE`]: replicated over the cluster (Raft).
    pub const QUORUM: &str = "quorum";
    /// Queue argument: how long a message may wait, in ms.
    pub const MESSAGE_TTL: &str = "x-message-ttl";
    /// Queue argument: how long the queue may go unused before the broker
    /// deletes it, in ms.
    pub const EXPIRES: &str = "x-expires";
    /// Queue argument: the exchange dead-lettered messages go to (`""`, the
    /// default exchange, for a queue named by [`DEAD_LETTER_ROUTING_KEY`]).
    pub const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
    /// Queue argument: the routing key dead-lettered messages are sent with.
    pub const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";
    /// Queue argument of a quorum queue: deliveries without an
    /// acknowledgement before the broker dead-letters the message.
    pub const DELIVERY_LIMIT: &str = "x-delivery-limit";
    /// Queue argument: the most messages the queue holds.
    pub const MAX_LENGTH: &str = "x-max-length";
    /// Queue argument: what a full queue does, `reject-publish` or
    /// `drop-head`.
    pub const OVERFLOW: &str = "x-overflow";
    /// Header the broker sets on a message it dead-letters: why
    /// (`rejected`, `expired`, `maxlen`, `delivery_limit`).
    pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
}

/// The RPC topic exchange.
pub fn rpc_exchange(exchange: &str) -> String {
    exchange.to_string()
}

/// The queue every instance of a topic competes on (durable).
pub fn topic_queue(exchange: &str, topic: &str) -> String {
    format!("{exchange}.{topic}")
}

/// The queue of one instance (exclusive, auto-delete) for one connection
/// `run` of it: a rebuilt connection declares a queue of its own, so one
/// left on a node that died (RabbitMQ keeps its record until the node is
/// back or forgotten) cannot lock it out (RESOURCE_LOCKED). The binding
/// key, not the name, routes to it.
pub fn server_queue(exchange: &str, topic: &str, server: &str, run: &str) -> String {
    format!("{exchange}.{topic}.{server}.{run}")
}

/// The routing key of a topic or of one server of it.
pub fn routing_key(topic: &str, server: Option<&str>) -> String {
    match server {
        Some(server) => format!("{topic}.{server}"),
        None => topic.to_string(),
    }
}

/// The fanout exchange of a topic.
pub fn fanout_exchange(exchange: &str, topic: &str) -> String {
    format!("{exchange}.{topic}.fanout")
}

/// One instance's queue on the fanout exchange (exclusive, auto-delete),
/// for one connection `run` of it, like [`server_queue`].
pub fn fanout_queue(exchange: &str, topic: &str, server: &str, run: &str) -> String {
    format!("{exchange}.{topic}.fanout.{server}.{run}")
}

/// The notifications topic exchange.
pub fn notification_exchange(exchange: &str) -> String {
    format!("{exchange}.notifications")
}

/// The queue a listener pool shares (durable).
pub fn pool_queue(exchange: &str, pool: &str) -> String {
    format!("{exchange}.notifications.{pool}")
}

/// Routing key of a notification: `notifications.<priority>.<event_type>`.
pub fn notification_key(priority: &str, event_type: &str) -> String {
    format!("notifications.{priority}.{event_type}")
}

/// Where a queue's rejected messages go.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Where a queue's messages wait `delay` before they are delivered again:
/// one queue per delay (a queue-wide TTL; per-message TTLs would wait
/// behind a longer one at the head), dead-lettering back to `queue`.
pub fn retry_queue(queue: &str, delay: std::time::Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// Queue arguments naming only the queue's type, [`rabbitmq::CLASSIC`] or
/// [`rabbitmq::QUORUM`]: what other arguments are added to.
pub fn typed_queue_arguments(queue_type: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    set_str(&mut arguments, rabbitmq::QUEUE_TYPE, queue_type);
    arguments
}

/// The arguments of [`retry_queue`]`(queue, delay)`: a classic queue whose
/// messages wait `delay` (a queue-wide TTL), then dead-letter back to
/// `queue` through the default exchange; gone `idle` plus `delay` after its
/// last declaration.
pub fn retry_queue_arguments(
    queue: &str,
    delay: std::time::Duration,
    idle: std::time::Duration,
) -> FieldTable {
    let millis =
        |d: std::time::Duration| AMQPValue::LongLongInt(d.as_millis().min(i64::MAX as u128) as i64);
    let mut arguments = typed_queue_arguments(rabbitmq::CLASSIC);
    arguments.insert(rabbitmq::MESSAGE_TTL.into(), millis(delay));
    arguments.insert(rabbitmq::EXPIRES.into(), millis(delay + idle));
    set_str(&mut arguments, rabbitmq::DEAD_LETTER_EXCHANGE, "");
    set_str(&mut arguments, rabbitmq::DEAD_LETTER_ROUTING_KEY, queue);
    arguments
}

/// A process-unique id: 64 random bits and a counter, hex.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    format!("{seed:016x}{:08x}", COUNTER.fetch_add(1, Relaxed))
}

/// A string header, if present and a string.
pub fn header_str<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a str> {
    field_str(properties.headers().as_ref()?, key)
}

/// A string field of `table` (headers, queue arguments), if present and a
/// string.
fn field_str<'a>(table: &'a FieldTable, key: &str) -> Option<&'a str> {
    match table.inner().get(key)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}

/// An integer header, if present and an integer.
pub fn header_u32(properties: &BasicProperties, key: &str) -> Option<u32> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

/// How deep a message's header tables may nest. Ours are flat and the
/// broker's own (`x-death`) nest three levels; anything deeper is
/// dead-lettered. The AMQP parser stops recursing at 32 levels (see
/// `vendor/amq-protocol-types/SWITCHYARD.md`) and reads what lies below as an
/// empty table, so a message cut there is always caught here.
pub const MAX_HEADER_DEPTH: usize = 16;

/// How deep the header tables of a message nest (a flat table is 1).
pub fn header_depth(properties: &BasicProperties) -> usize {
    fn value_depth(value: &AMQPValue) -> usize {
        match value {
            AMQPValue::FieldTable(table) => table_depth(table),
            AMQPValue::FieldArray(array) => {
                1 + array.as_slice().iter().map(value_depth).max().unwrap_or(0)
            }
            _ => 0,
        }
    }
    fn table_depth(table: &FieldTable) -> usize {
        1 + table.inner().values().map(value_depth).max().unwrap_or(0)
    }
    properties.headers().as_ref().map(table_depth).unwrap_or(0)
}

/// Every string header (UTF-8 ones; others are skipped), borrowed: for
/// trace-context extraction on every delivery, which allocates nothing for
/// the headers it does not keep.
pub fn string_headers(properties: &BasicProperties) -> impl Iterator<Item = (&str, &str)> {
    properties
        .headers()
        .as_ref()
        .into_iter()
        .flat_map(|headers| headers.inner().iter())
        .filter_map(|(key, value)| match value {
            AMQPValue::LongString(v) => {
                Some((key.as_str(), std::str::from_utf8(v.as_bytes()).ok()?))
            }
            AMQPValue::ShortString(v) => Some((key.as_str(), v.as_str())),
            _ => None,
        })
}

/// Adds a string header.
pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(value.to_string().into()),
    );
}

/// Adds the trace context of `span` to `headers`.
pub fn inject_trace(headers: &mut FieldTable, span: &tracing::Span) {
    for (key, value) in switchyard_telemetry::propagation::inject(span) {
        set_str(headers, &key, &value);
    }
}

/// Seconds since the Unix epoch, for the `timestamp` property.
pub fn now_timestamp() -> u64 {
    switchyard_proto::time::unix_seconds().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_scheme() {
        assert_eq!(
            topic_queue("switchyard", "collector"),
            "switchyard.collector"
        );
        assert_eq!(
            server_queue("switchyard", "collector", "host-1", "5f1c"),
            "switchyard.collector.host-1.5f1c"
        );
        assert_eq!(routing_key("collector", Some("host-1")), "collector.host-1");
        assert_eq!(
            fanout_exchange("switchyard", "collector"),
            "switchyard.collector.fanout"
        );
        assert_eq!(
            notification_key("info", "sample.recorded"),
            "notifications.info.sample.recorded"
        );
        assert_eq!(
            dead_letter_queue("switchyard.collector"),
            "switchyard.collector.dlq"
        );
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn headers_round_trip() {
        let mut headers = FieldTable::default();
        set_str(&mut headers, METHOD, "record_samples");
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongUInt(3));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(header_str(&properties, METHOD), Some("record_samples"));
        assert_eq!(header_u32(&properties, DELIVERY_COUNT), Some(3));
        assert_eq!(header_u32(&properties, "missing"), None);
    }

    #[test]
    fn a_retry_queue_is_classic_and_dead_letters_back_to_its_queue() {
        let arguments = retry_queue_arguments(
            "switchyard.collector",
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(600),
        );
        let text = |key: &str| field_str(&arguments, key);
        assert_eq!(text(rabbitmq::QUEUE_TYPE), Some(rabbitmq::CLASSIC));
        assert_eq!(text(rabbitmq::DEAD_LETTER_EXCHANGE), Some(""));
        assert_eq!(
            text(rabbitmq::DEAD_LETTER_ROUTING_KEY),
            Some("switchyard.collector")
        );
        let arguments = arguments.inner();
        assert_eq!(
            arguments.get(rabbitmq::MESSAGE_TTL),
            Some(&AMQPValue::LongLongInt(500))
        );
        assert_eq!(
            arguments.get(rabbitmq::EXPIRES),
            Some(&AMQPValue::LongLongInt(600_500))
        );
        assert_eq!(arguments.len(), 5);
    }
}
