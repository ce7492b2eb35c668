//! The collector's `record_samples` body, then the sample checks it runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchyard_proto::messaging::v1::RecordSamples;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = RecordSamples::decode(data) {
        let _ = switchyard_proto::validate::samples(&batch.samples, 1_800_000_000);
    }
});
