//! Generated types of every Switchyard protocol: the public metering API, the
//! collector's query API, the notifier's alarm methods, the AMQP payloads and
//! the echo service used by tests and benchmarks.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Every file descriptor, encoded: what server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// One module per protobuf package, `name::v1`, with its generated types.
macro_rules! packages {
    ($($name:ident => $package:literal),* $(,)?) => {
        $(
            pub mod $name {
                pub mod v1 {
                    tonic::include_proto!($package);
                }
            }
        )*
    };
}

packages! {
    metering => "switchyard.metering.v1",
    collector => "switchyard.collector.v1",
    alarms => "switchyard.alarms.v1",
    messaging => "switchyard.messaging.v1",
    echo => "switchyard.echo.v1",
}

pub mod catalogue;
pub mod time;
pub mod validate;

impl metering::v1::AlarmState {
    /// An alarm state as JSON names it, in webhook bodies (docs/wire-format.md,
    /// "Webhooks") and the CLI's `--output json`: `ok`, `alarm`,
    /// `insufficient_data`, or `unknown` for a value this build does not know.
    pub fn json_name(state: i32) -> &'static str {
        match Self::try_from(state) {
            Ok(Self::Ok) => "ok",
            Ok(Self::Alarm) => "alarm",
            Ok(Self::InsufficientData) => "insufficient_data",
            Ok(Self::Unspecified) | Err(_) => "unknown",
        }
    }
}
