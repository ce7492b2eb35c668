//! Notification bodies the notifier and the api decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::messaging::v1::{AlarmStateChanged, Heartbeat, SampleRecorded};

fuzz_target!(|data: &[u8]| {
    let _ = SampleRecorded::decode(data);
    let _ = AlarmStateChanged::decode(data);
    let _ = Heartbeat::decode(data);
});
