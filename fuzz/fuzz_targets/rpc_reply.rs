//! RPC replies and the alarm requests the notifier decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::messaging::v1::RpcError;
use switchyard_proto::metering::v1::{CreateAlarmRequest, GetAlarmHistoryRequest};

fuzz_target!(|data: &[u8]| {
    let _ = RpcError::decode(data);
    let _ = CreateAlarmRequest::decode(data);
    let _ = GetAlarmHistoryRequest::decode(data);
});
