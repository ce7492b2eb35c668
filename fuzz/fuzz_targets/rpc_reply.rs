//! RPC replies (the error body) and every request the notifier's alarm
//! methods decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::messaging::v1::RpcError;
use switchyard_proto::metering::v1::{
    CreateAlarmRequest, DeleteAlarmRequest, GetAlarmHistoryRequest, GetAlarmRequest,
    ListAlarmsRequest,
};

fuzz_target!(|data: &[u8]| {
    let _ = RpcError::decode(data);
    let _ = CreateAlarmRequest::decode(data);
    let _ = GetAlarmRequest::decode(data);
    let _ = ListAlarmsRequest::decode(data);
    let _ = DeleteAlarmRequest::decode(data);
    let _ = GetAlarmHistoryRequest::decode(data);
});
