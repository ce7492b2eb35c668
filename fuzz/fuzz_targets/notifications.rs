//! Notification and fanout bodies: what the notifier, the api's rollout
//! table and operators' listeners decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::messaging::v1::{
    AlarmStateChanged, Heartbeat, PromoteCanary, RolledBack, SampleRecorded,
};

fuzz_target!(|data: &[u8]| {
    let _ = SampleRecorded::decode(data);
    let _ = AlarmStateChanged::decode(data);
    let _ = Heartbeat::decode(data);
    let _ = RolledBack::decode(data);
    let _ = PromoteCanary::decode(data);
});
