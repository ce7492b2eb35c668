//! The `grpc-timeout` header every gRPC server reads to set its deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = MetadataValue::try_from(data) else {
        return;
    };
    let mut metadata = MetadataMap::new();
    metadata.insert("grpc-timeout", value);
    let _ = switchyard_grpc::grpc_timeout(&metadata);
});
