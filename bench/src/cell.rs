//! One cell of the matrix: a workload at a size, for one contender — what
//! `--only WORKLOAD:SIZE:CONTENDER` names and what one measurement runs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use switchyard_executor::Phase;

use crate::amqp::{self, Broker};
use crate::grpc;
use crate::measure::Latencies;

/// Raw first, then the phases: the order of every group of cells.
pub const CONTENDERS: [Option<Phase>; 4] = [
    None,
    Some(Phase::Threaded),
    Some(Phase::Bridged),
    Some(Phase::Async),
];

/// `raw` or the phase's name.
pub fn contender_name(contender: Option<Phase>) -> String {
    contender
        .map(|p| p.to_string())
        .unwrap_or_else(|| "raw".into())
}

/// What a cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// RPC round trips of a 100-byte echo; size: callers.
    RpcEcho,
    /// RPC round trips whose endpoint waits 20 ms; size: callers.
    RpcWait,
    /// Confirmed casts; size: messages.
    Casts,
    /// Confirmed notifications; size: messages.
    Notifications,
    /// gRPC unary echo; size: callers.
    GrpcEcho,
}

impl Workload {
    const ALL: [Self; 5] = [
        Self::RpcEcho,
        Self::RpcWait,
        Self::Casts,
        Self::Notifications,
        Self::GrpcEcho,
    ];

    /// The name `--only` takes.
    pub fn id(self) -> &'static str {
        match self {
            Self::RpcEcho => "rpc-echo",
            Self::RpcWait => "rpc-wait",
            Self::Casts => "casts",
            Self::Notifications => "notifications",
            Self::GrpcEcho => "grpc-echo",
        }
    }

    /// The name in the tables and the JSON (as earlier runs wrote it).
    pub fn title(self) -> &'static str {
        match self {
            Self::RpcEcho => "rpc echo",
            Self::RpcWait => "rpc waiting 20 ms",
            Self::Casts => "casts",
            Self::Notifications => "notifications",
            Self::GrpcEcho => "grpc echo",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// What runs.
    pub workload: Workload,
    /// Callers, or messages.
    pub size: usize,
    /// Raw (`None`) or a phase.
    pub contender: Option<Phase>,
}

impl Cell {
    /// Runs the cell once; closed-loop workloads for `time`.
    pub async fn measure(&self, broker: &Broker, time: Duration) -> anyhow::Result<Latencies> {
        let size = self.size;
        Ok(match (self.workload, self.contender) {
            (Workload::RpcEcho, None) => amqp::raw_calls(broker, size, 0, time).await?,
            (Workload::RpcEcho, Some(phase)) => {
                amqp::switchyard_calls(broker, phase, size, 0, time).await?
            }
            (Workload::RpcWait, None) => amqp::raw_calls(broker, size, 20, time).await?,
            (Workload::RpcWait, Some(phase)) => {
                amqp::switchyard_calls(broker, phase, size, 20, time).await?
            }
            (Workload::Casts, None) => {
                amqp::raw_messages(broker, amqp::Envelope::Cast, size).await?
            }
            (Workload::Notifications, None) => {
                amqp::raw_messages(broker, amqp::Envelope::Notification, size).await?
            }
            (Workload::Casts, Some(phase)) => amqp::switchyard_casts(broker, phase, size).await?,
            (Workload::Notifications, Some(phase)) => {
                amqp::switchyard_notifications(broker, phase, size).await?
            }
            (Workload::GrpcEcho, contender) => grpc::echo(contender, size, time).await?,
        })
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.workload.id(),
            self.size,
            contender_name(self.contender)
        )
    }
}

impl FromStr for Cell {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "`{text}`: expected WORKLOAD:SIZE:CONTENDER, e.g. rpc-echo:16:async \
                 (workloads: {}; contenders: raw, threaded, bridged, async)",
                Workload::ALL.map(Workload::id).join(", ")
            )
        };
        let mut parts = text.split(':');
        let (Some(workload), Some(size), Some(contender), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        let workload = Workload::ALL
            .into_iter()
            .find(|w| w.id() == workload)
            .ok_or_else(usage)?;
        let size = size
            .parse::<usize>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(usage)?;
        let contender = match contender {
            "raw" => None,
            phase => Some(
                Phase::ALL
                    .into_iter()
                    .find(|p| p.as_str() == phase)
                    .ok_or_else(usage)?,
            ),
        };
        Ok(Self {
            workload,
            size,
            contender,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_reads_back_what_it_prints() {
        for text in [
            "rpc-echo:16:async",
            "casts:100000:raw",
            "grpc-echo:1:threaded",
        ] {
            let cell: Cell = text.parse().expect("a cell");
            assert_eq!(cell.to_string(), text);
        }
    }

    #[test]
    fn a_malformed_cell_is_refused_with_the_accepted_forms() {
        for text in [
            "rpc-echo:16",
            "echo:16:async",
            "rpc-echo:x:async",
            "rpc-echo:16:fast",
            "rpc-echo:0:raw",
        ] {
            let refused = text.parse::<Cell>().expect_err(text);
            assert!(refused.contains("rpc-echo, rpc-wait"), "{refused}");
        }
    }
}
