//! Checks on metering values that every service applies at its boundary:
//! the api on every request, the collector again on every message it takes.
//! Each failure names the field, so gRPC answers INVALID_ARGUMENT with it and
//! AMQP dead-letters with it.

use crate::metering::v1::Sample;

/// Most samples one `PostSamples` call or one `record_samples` message may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest meter name.
pub const MAX_METER_LEN: usize = 255;
/// Largest magnitude of a volume. PostgreSQL's `avg` and `stddev` over
/// double precision sum the squares of the values and fail on overflow for
/// good, so a volume must square far below `f64::MAX` (1.8e308), with room for
/// the sum of many.
pub const MAX_VOLUME: f64 = 1e100;
/// Longest unit.
pub const MAX_UNIT_LEN: usize = 63;
/// How far in the future a sample's timestamp may be, in seconds (clock skew).
pub const MAX_FUTURE_SECONDS: i64 = 300;

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field, e.g. `samples[3].volume`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub problem: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.problem)
    }
}

fn problem(field: String, problem: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field,
        problem: problem.into(),
    }
}

/// Checks a batch; `now_unix_seconds` bounds timestamps.
pub fn samples(samples: &[Sample], now_unix_seconds: i64) -> Result<(), FieldProblem> {
    if samples.is_empty() {
        return Err(problem("samples".into(), "must not be empty"));
    }
    if samples.len() > MAX_BATCH {
        return Err(problem(
            "samples".into(),
            format!("{} samples; at most {MAX_BATCH} per batch", samples.len()),
        ));
    }
    for (index, sample) in samples.iter().enumerate() {
        self::sample(sample, now_unix_seconds, &format!("samples[{index}]"))?;
    }
    Ok(())
}

fn is_name(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
}

/// Checks one sample; `at` prefixes field names.
pub fn sample(sample: &Sample, now_unix_seconds: i64, at: &str) -> Result<(), FieldProblem> {
    let field = |name: &str| format!("{at}.{name}");
    if sample.meter.is_empty() || sample.meter.len() > MAX_METER_LEN || !is_name(&sample.meter) {
        return Err(problem(
            field("meter"),
            format!("must be 1 to {MAX_METER_LEN} characters of A-Z a-z 0-9 _ . - :"),
        ));
    }
    if sample.unit.is_empty() || sample.unit.len() > MAX_UNIT_LEN {
        return Err(problem(
            field("unit"),
            format!("must be 1 to {MAX_UNIT_LEN} bytes"),
        ));
    }
    // Control characters: PostgreSQL cannot store NUL in text at all, and
    // nothing else in a unit needs them.
    if sample.unit.chars().any(char::is_control) {
        return Err(problem(
            field("unit"),
            "must not contain control characters (NUL, newlines, …)",
        ));
    }
    if !sample.volume.is_finite() || sample.volume.abs() > MAX_VOLUME {
        return Err(problem(
            field("volume"),
            format!(
                "{} is not a finite number between -{MAX_VOLUME:e} and {MAX_VOLUME:e}",
                sample.volume
            ),
        ));
    }
    for (name, value) in [
        ("resource_id", &sample.resource_id),
        ("project_id", &sample.project_id),
    ] {
        if value.is_empty() || value.len() > 255 || !is_name(value) {
            return Err(problem(
                field(name),
                "must be 1 to 255 characters of A-Z a-z 0-9 _ . - :",
            ));
        }
    }
    if sample.id.len() > 128 || !is_name(&sample.id) {
        return Err(problem(
            field("id"),
            "at most 128 characters of A-Z a-z 0-9 _ . - :",
        ));
    }
    let Some(timestamp) = &sample.timestamp else {
        return Err(problem(field("timestamp"), "is required"));
    };
    if timestamp.seconds > now_unix_seconds + MAX_FUTURE_SECONDS {
        return Err(problem(
            field("timestamp"),
            format!("is more than {MAX_FUTURE_SECONDS} s in the future"),
        ));
    }
    if timestamp.seconds < 0 || !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(problem(
            field("timestamp"),
            "is not a valid time after 1970",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Sample {
        Sample {
            id: String::new(),
            meter: "cpu_util".into(),
            unit: "%".into(),
            volume: 42.0,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            resource_id: "vm-1".into(),
            project_id: "p-1".into(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(samples(&[good()], 2_000), Ok(()));
        let cases: Vec<(Box<dyn Fn(&mut Sample)>, &str)> = vec![
            (Box::new(|s| s.volume = f64::NAN), "samples[0].volume"),
            (Box::new(|s| s.volume = f64::INFINITY), "samples[0].volume"),
            (Box::new(|s| s.volume = 1.7e308), "samples[0].volume"),
            (Box::new(|s| s.volume = -1e101), "samples[0].volume"),
            (Box::new(|s| s.unit = "k\0g".into()), "samples[0].unit"),
            (Box::new(|s| s.unit = "k\ng".into()), "samples[0].unit"),
            (Box::new(|s| s.meter = String::new()), "samples[0].meter"),
            (Box::new(|s| s.meter = "x".repeat(300)), "samples[0].meter"),
            (Box::new(|s| s.unit = String::new()), "samples[0].unit"),
            (
                Box::new(|s| s.resource_id = "a b".into()),
                "samples[0].resource_id",
            ),
            (Box::new(|s| s.timestamp = None), "samples[0].timestamp"),
            (
                Box::new(|s| {
                    s.timestamp = Some(prost_types::Timestamp {
                        seconds: 9_999_999,
                        nanos: 0,
                    })
                }),
                "samples[0].timestamp",
            ),
        ];
        for (spoil, field) in cases {
            let mut sample = good();
            spoil(&mut sample);
            assert_eq!(
                samples(&[sample], 2_000).map_err(|p| p.field),
                Err(field.to_string())
            );
        }
        assert_eq!(
            samples(&[], 0).map_err(|p| p.field),
            Err("samples".to_string())
        );
        let too_many = vec![good(); MAX_BATCH + 1];
        assert!(
            samples(&too_many, 2_000)
                .unwrap_err()
                .problem
                .contains("at most 1000")
        );
    }
}
