//! Generated types of every Switchyard protocol: the public metering API, the
//! collector's query API, the notifier's alarm methods, the AMQP payloads and
//! the echo service used by tests and benchmarks.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Every file descriptor, encoded: what server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

pub mod metering {
    pub mod v1 {
        tonic::include_proto!("switchyard.metering.v1");
    }
}

pub mod collector {
    pub mod v1 {
        tonic::include_proto!("switchyard.collector.v1");
    }
}

pub mod alarms {
    pub mod v1 {
        tonic::include_proto!("switchyard.alarms.v1");
    }
}

pub mod messaging {
    pub mod v1 {
        tonic::include_proto!("switchyard.messaging.v1");
    }
}

pub mod echo {
    pub mod v1 {
        tonic::include_proto!("switchyard.echo.v1");
    }
}

pub mod catalogue;
pub mod time;
pub mod validate;
