//! Where traces and metrics go, and how context crosses processes, by the
//! OpenTelemetry SDK's environment variables (OpenTelemetry specification,
//! "Environment Variable Specification" and "OTLP Exporter Configuration"),
//! read once at start-up:
//!
//! - `OTEL_SDK_DISABLED=true`: no export at all;
//! - `OTEL_TRACES_EXPORTER`: `otlp` (the default) or `none`;
//! - `OTEL_METRICS_EXPORTER`: `prometheus` (Switchyard's default: the
//!   `/metrics` page of `metrics.listen`, what its deployment scrapes),
//!   `otlp` (push the same numbers every `OTEL_METRIC_EXPORT_INTERVAL`
//!   milliseconds, 60000 by default) or `none`;
//! - `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`, else
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (the signal-specific variable wins; over
//!   HTTP it is used as is, while the generic one gets `/v1/traces` or
//!   `/v1/metrics` appended); `telemetry.otlp_endpoint` in the configuration
//!   wins over both and is a base URL like the generic variable;
//! - `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL`, else
//!   `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (the default) or `http/protobuf`.
//!   `http/json` is not built in: asking for it is a configuration error that
//!   says so, never a silent lack of spans;
//! - `OTEL_PROPAGATORS`: `tracecontext`, `baggage` (both by default) or
//!   `none`. `b3`, `b3multi`, `jaeger`, `xray` and `ottrace` are not built in
//!   (no kept crate of this OpenTelemetry release provides them) and are
//!   refused by name.
//!
//! A value outside what the specification accepts is a configuration error
//! naming the variable and the accepted values.

use std::time::Duration;

/// The signals Switchyard exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// The executor's counters and histograms.
    Metrics,
}

impl Signal {
    fn exporter_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_TRACES_EXPORTER",
            Signal::Metrics => "OTEL_METRICS_EXPORTER",
        }
    }

    fn endpoint_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }

    fn protocol_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        }
    }

    /// The path an OTLP/HTTP receiver takes this signal on.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// The OTLP transports built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "OTLP/gRPC",
            Protocol::HttpProtobuf => "OTLP/HTTP (protobuf)",
        })
    }
}

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nowhere, and why (for the start-up log).
    Off(&'static str),
    /// OTLP to `endpoint`: for gRPC the collector's base URL, for HTTP the
    /// full URL including the signal's path.
    Otlp {
        /// The URL.
        endpoint: String,
        /// The transport.
        protocol: Protocol,
    },
}

/// An OpenTelemetry variable with a value this build cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable} (from the environment): `{value}` {problem}; accepted: {accepted}")]
pub struct EnvProblem {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
    /// What would be taken.
    pub accepted: &'static str,
}

/// A variable's value, trimmed; `None` when unset or empty (the
/// specification treats an empty value as unset).
fn read(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Decides where `signal` goes from the configured endpoint and `var` (the
/// environment, or a table in tests).
pub fn export(
    signal: Signal,
    configured: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Export, EnvProblem> {
    if let Some(value) = read(&var, "OTEL_SDK_DISABLED") {
        match value.to_ascii_lowercase().as_str() {
            "true" => return Ok(Export::Off("OTEL_SDK_DISABLED=true")),
            "false" => {}
            _ => {
                return Err(EnvProblem {
                    variable: "OTEL_SDK_DISABLED",
                    value,
                    problem: "is not a boolean",
                    accepted: "true, false",
                });
            }
        }
    }
    let exporter = signal.exporter_variable();
    let chosen = read(&var, exporter);
    match (signal, chosen.as_deref()) {
        (_, Some("none")) => return Ok(Export::Off("the exporter is `none`")),
        (Signal::Traces, None | Some("otlp")) | (Signal::Metrics, Some("otlp")) => {}
        (Signal::Metrics, None | Some("prometheus")) => {
            return Ok(Export::Off(
                "metrics are served for scraping (OTEL_METRICS_EXPORTER=otlp pushes them)",
            ));
        }
        (_, Some(_)) => {
            return Err(EnvProblem {
                variable: exporter,
                value: chosen.unwrap_or_default(),
                problem: "is not an exporter this build has",
                accepted: match signal {
                    Signal::Traces => "otlp, none",
                    Signal::Metrics => "prometheus, otlp, none",
                },
            });
        }
    }
    let mut protocol = Protocol::Grpc;
    for variable in [signal.protocol_variable(), "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(value) = read(&var, variable) {
            protocol = match value.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => {
                    return Err(EnvProblem {
                        variable,
                        value,
                        problem: "is not a protocol this build has",
                        accepted: "grpc, http/protobuf",
                    });
                }
            };
            // The signal-specific one wins: the generic one is not read.
            break;
        }
    }
    // The signal-specific endpoint is a full URL; the others are base URLs.
    let endpoint = match Some(configured.trim().to_string()).filter(|e| !e.is_empty()) {
        Some(base) => Some((base, false)),
        None => match read(&var, signal.endpoint_variable()) {
            Some(full) => Some((full, true)),
            None => read(&var, "OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| (base, false)),
        },
    };
    let Some((endpoint, full)) = endpoint else {
        return Ok(Export::Off("no OTLP endpoint configured"));
    };
    let endpoint = match protocol {
        Protocol::HttpProtobuf if !full => {
            format!("{}{}", endpoint.trim_end_matches('/'), signal.http_path())
        }
        _ => endpoint,
    };
    Ok(Export::Otlp { endpoint, protocol })
}

/// How often metrics are pushed: `OTEL_METRIC_EXPORT_INTERVAL` in
/// milliseconds (60000 by default).
pub fn metric_interval(var: impl Fn(&str) -> Option<String>) -> Result<Duration, EnvProblem> {
    let Some(value) = read(&var, "OTEL_METRIC_EXPORT_INTERVAL") else {
        return Ok(Duration::from_secs(60));
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(EnvProblem {
            variable: "OTEL_METRIC_EXPORT_INTERVAL",
            value,
            problem: "is not a positive number of milliseconds",
            accepted: "an integer above 0, e.g. 60000",
        }),
    }
}

/// The context propagators `OTEL_PROPAGATORS` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagator {
    /// W3C `traceparent` and `tracestate`.
    TraceContext,
    /// W3C `baggage`.
    Baggage,
}

/// The propagators to install, in order: `tracecontext,baggage` when unset,
/// none for `none`.
pub fn propagators(var: impl Fn(&str) -> Option<String>) -> Result<Vec<Propagator>, EnvProblem> {
    const ACCEPTED: &str = "a comma-separated list of tracecontext, baggage; or none";
    let Some(value) = read(&var, "OTEL_PROPAGATORS") else {
        return Ok(vec![Propagator::TraceContext, Propagator::Baggage]);
    };
    let mut chosen = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let propagator = match name {
            "tracecontext" => Propagator::TraceContext,
            "baggage" => Propagator::Baggage,
            "none" => continue,
            "b3" | "b3multi" | "jaeger" | "xray" | "ottrace" => {
                return Err(EnvProblem {
                    variable: "OTEL_PROPAGATORS",
                    value: value.clone(),
                    problem: "names a propagator this build does not have",
                    accepted: ACCEPTED,
                });
            }
            _ => {
                return Err(EnvProblem {
                    variable: "OTEL_PROPAGATORS",
                    value: value.clone(),
                    problem: "names an unknown propagator",
                    accepted: ACCEPTED,
                });
            }
        };
        if !chosen.contains(&propagator) {
            chosen.push(propagator);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn grpc(endpoint: &str) -> Result<Export, EnvProblem> {
        Ok(Export::Otlp {
            endpoint: endpoint.into(),
            protocol: Protocol::Grpc,
        })
    }

    fn http(endpoint: &str) -> Result<Export, EnvProblem> {
        Ok(Export::Otlp {
            endpoint: endpoint.into(),
            protocol: Protocol::HttpProtobuf,
        })
    }

    #[test]
    fn the_signal_specific_endpoint_wins_over_the_generic_one_and_the_setting_over_both() {
        let env = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]);
        assert_eq!(export(Signal::Traces, "", &env), grpc("http://traces:4317"));
        assert_eq!(
            export(Signal::Traces, "http://configured:4317", &env),
            grpc("http://configured:4317")
        );
        let alone = with(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")]);
        assert_eq!(
            export(Signal::Traces, "", alone),
            grpc("http://traces:4317")
        );
        assert!(matches!(
            export(Signal::Traces, "", with(&[])),
            Ok(Export::Off(_))
        ));
    }

    #[test]
    fn over_http_the_generic_endpoint_gets_the_signals_path_and_the_specific_one_is_used_as_is() {
        let env = with(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
        ]);
        assert_eq!(
            export(Signal::Traces, "", &env),
            http("http://collector:4318/v1/traces")
        );
        assert_eq!(
            export(Signal::Metrics, "", &env),
            http("http://collector:4318/v1/metrics")
        );
        let specific = with(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:4318/custom"),
        ]);
        assert_eq!(
            export(Signal::Traces, "", specific),
            http("http://x:4318/custom")
        );
    }

    #[test]
    fn metrics_are_scraped_unless_otlp_is_asked_for() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317");
        assert!(matches!(
            export(Signal::Metrics, "", with(&[endpoint])),
            Ok(Export::Off(_))
        ));
        assert_eq!(
            export(
                Signal::Metrics,
                "",
                with(&[endpoint, ("OTEL_METRICS_EXPORTER", "otlp")])
            ),
            grpc("http://x:4317")
        );
        assert_eq!(
            metric_interval(with(&[("OTEL_METRIC_EXPORT_INTERVAL", "250")])),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(metric_interval(with(&[])), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(
                matches!(
                    export(Signal::Traces, "", with(&[endpoint, off])),
                    Ok(Export::Off(_))
                ),
                "{off:?}"
            );
        }
        let on = with(&[endpoint, ("OTEL_SDK_DISABLED", "false")]);
        assert!(matches!(
            export(Signal::Traces, "", on),
            Ok(Export::Otlp { .. })
        ));
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_the_variable() {
        let problem = |pairs: &[(&str, &str)]| {
            export(Signal::Traces, "", with(pairs))
                .err()
                .map(|p| p.variable)
        };
        assert_eq!(
            problem(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            Some("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        assert_eq!(
            problem(&[("OTEL_TRACES_EXPORTER", "zipkin")]),
            Some("OTEL_TRACES_EXPORTER")
        );
        assert_eq!(
            problem(&[("OTEL_SDK_DISABLED", "yes")]),
            Some("OTEL_SDK_DISABLED")
        );
        // The signal-specific protocol wins over the generic one.
        assert_eq!(
            problem(&[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
            None
        );
        let text = export(
            Signal::Traces,
            "",
            with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
        )
        .err()
        .map(|p| p.to_string())
        .unwrap_or_default();
        assert!(text.contains("accepted: grpc, http/protobuf"), "{text}");
        assert_eq!(
            metric_interval(with(&[("OTEL_METRIC_EXPORT_INTERVAL", "soon")]))
                .err()
                .map(|p| p.variable),
            Some("OTEL_METRIC_EXPORT_INTERVAL")
        );
    }

    #[test]
    fn propagators_default_to_tracecontext_and_baggage_and_refuse_what_is_not_built_in() {
        use Propagator::*;
        assert_eq!(propagators(with(&[])), Ok(vec![TraceContext, Baggage]));
        assert_eq!(
            propagators(with(&[(
                "OTEL_PROPAGATORS",
                "baggage, tracecontext,baggage"
            )])),
            Ok(vec![Baggage, TraceContext])
        );
        assert_eq!(
            propagators(with(&[("OTEL_PROPAGATORS", "none")])),
            Ok(vec![])
        );
        for refused in ["b3", "tracecontext,b3multi", "w3c"] {
            let problem = propagators(with(&[("OTEL_PROPAGATORS", refused)]));
            assert!(
                matches!(&problem, Err(p) if p.variable == "OTEL_PROPAGATORS"),
                "{refused}: {problem:?}"
            );
        }
    }
}
