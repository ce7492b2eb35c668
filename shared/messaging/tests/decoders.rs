//! Every message decoder meets arbitrary bytes without panicking: random
//! inputs and mutations of valid encodings, from a fixed seed so a failure
//! reproduces. A deterministic floor under every test run; the real fuzzing
//! is `scripts/fuzz` (cargo-fuzz targets in `fuzz/`, docs/fuzzing.md).

use std::panic::{AssertUnwindSafe, catch_unwind};

use prost::Message;
use switchyard_proto::messaging::v1::{
    AlarmStateChanged, Heartbeat, RecordSamples, RpcError, SampleRecorded,
};
use switchyard_proto::metering::v1::{
    Alarm, CreateAlarmRequest, GetAlarmHistoryRequest, InstanceStatus, Sample,
};

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn inputs(seed: u64, valid: &[Vec<u8>]) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng(seed);
    (0..20_000).map(move |i| {
        if i % 2 == 0 || valid.is_empty() {
            let len = rng.below(256);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut bytes = valid[rng.below(valid.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = rng.next() as u8;
                    }
                    1 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len())),
                    _ => bytes.push(rng.next() as u8),
                }
            }
            bytes
        }
    })
}

fn never_panics<M: Message + Default>(name: &str, valid: &[Vec<u8>]) {
    for (index, bytes) in inputs(0x5eed_0000 + name.len() as u64, valid).enumerate() {
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            M::decode(bytes.as_slice()).map(|m| m.encode_to_vec())
        }));
        assert!(
            decoded.is_ok(),
            "{name}: input {index} ({bytes:?}) made the decoder panic"
        );
    }
}

fn sample() -> Sample {
    Sample {
        id: "s-1".into(),
        meter: "cpu_util".into(),
        unit: "%".into(),
        volume: 42.5,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        resource_id: "vm-1".into(),
        project_id: "p".into(),
        metadata: [("k".to_string(), "v".to_string())].into(),
    }
}

#[test]
fn no_decoder_panics_on_arbitrary_bytes() {
    never_panics::<RecordSamples>(
        "RecordSamples",
        &[RecordSamples {
            samples: vec![sample(), sample()],
        }
        .encode_to_vec()],
    );
    never_panics::<SampleRecorded>(
        "SampleRecorded",
        &[SampleRecorded {
            meters: vec!["m".into()],
            resource_ids: vec!["r".into()],
            stored: 3,
        }
        .encode_to_vec()],
    );
    let alarm = Alarm {
        id: "a".into(),
        name: "n".into(),
        meter: "m".into(),
        threshold: 1.5,
        ..Alarm::default()
    };
    never_panics::<AlarmStateChanged>(
        "AlarmStateChanged",
        &[AlarmStateChanged {
            alarm: Some(alarm.clone()),
            transition: None,
        }
        .encode_to_vec()],
    );
    never_panics::<Heartbeat>(
        "Heartbeat",
        &[Heartbeat {
            status: Some(InstanceStatus {
                service: "api".into(),
                ..InstanceStatus::default()
            }),
            run_times_us: vec![1, 20, 300],
        }
        .encode_to_vec()],
    );
    never_panics::<RpcError>(
        "RpcError",
        &[RpcError {
            served_methods: vec!["say".into()],
            kind: 2,
            code: "c".into(),
            message: "m".into(),
        }
        .encode_to_vec()],
    );
    never_panics::<CreateAlarmRequest>(
        "CreateAlarmRequest",
        &[CreateAlarmRequest { alarm: Some(alarm) }.encode_to_vec()],
    );
    never_panics::<GetAlarmHistoryRequest>(
        "GetAlarmHistoryRequest",
        &[GetAlarmHistoryRequest { id: "x".into() }.encode_to_vec()],
    );
}

#[test]
fn decoded_garbage_is_still_refused_by_validation() {
    // What decodes from random bytes must not slip past the sample checks.
    let mut refused = 0;
    for bytes in inputs(
        7,
        &[RecordSamples {
            samples: vec![sample()],
        }
        .encode_to_vec()],
    ) {
        if let Ok(batch) = RecordSamples::decode(bytes.as_slice())
            && !batch.samples.is_empty()
            && switchyard_proto::validate::samples(&batch.samples, 1_800_000_000).is_err()
        {
            refused += 1;
        }
    }
    assert!(refused > 0, "some decodable garbage exists and is refused");
}
