//! The clock as the wire carries it: one place that turns `SystemTime` into
//! `google.protobuf.Timestamp` (prost-types' own conversions) and into the
//! Unix seconds and milliseconds the stores and headers use.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// `at` as a protobuf timestamp.
pub fn timestamp(at: SystemTime) -> Timestamp {
    Timestamp::from(at)
}

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_seconds() -> i64 {
    since_epoch().as_secs() as i64
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_millis() -> i64 {
    since_epoch().as_millis() as i64
}

/// A protobuf timestamp from milliseconds since the Unix epoch (negative
/// ones too: the nanoseconds stay within 0..1e9, as the type requires).
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_through_a_normalised_timestamp() {
        assert_eq!(
            from_millis(1_500),
            Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            from_millis(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
        let now = now();
        assert!((now.seconds - unix_seconds()).abs() <= 1);
        assert!((unix_millis() / 1000 - unix_seconds()).abs() <= 1);
    }
}
