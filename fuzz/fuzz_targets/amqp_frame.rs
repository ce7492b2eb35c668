//! One AMQP frame as the broker (or anyone on the path) sends it, parsed by
//! amq-protocol with our vendored header-table parser, then every header
//! read our consumers make on a content header: nesting depth (deep tables
//! are dead-lettered unread), the string headers (trace context), the method
//! name and the delivery count.
#![no_main]

use amq_protocol::frame::{AMQPFrame, parsing::parse_frame};
use libfuzzer_sys::fuzz_target;
use switchyard_messaging::wire;

fuzz_target!(|data: &[u8]| {
    let Ok((_, frame)) = parse_frame(data) else {
        return;
    };
    if let AMQPFrame::Header(_, header) = frame {
        let properties = &header.properties;
        if wire::header_depth(properties) > wire::MAX_HEADER_DEPTH {
            return;
        }
        let _ = wire::string_headers(properties).count();
        let _ = wire::header_str(properties, wire::METHOD);
        let _ = wire::header_u32(properties, wire::DELIVERY_COUNT);
    }
});
