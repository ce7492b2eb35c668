//! Where traces go, by the OpenTelemetry SDK's environment variables
//! (OpenTelemetry specification, "Environment Variable Specification" and
//! "OTLP Exporter Configuration"), read once at start-up:
//!
//! - `OTEL_SDK_DISABLED=true`: no export at all;
//! - `OTEL_TRACES_EXPORTER`: `otlp` (the default) or `none`;
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (the signal-specific variable wins); `telemetry.otlp_endpoint` in the
//!   configuration wins over both;
//! - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`:
//!   only `grpc` is built in. Asking for `http/protobuf` or `http/json` is a
//!   configuration error that says so, never a silent lack of spans.
//!
//! A value outside what the specification accepts is a configuration error
//! naming the variable and the accepted values.

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nowhere, and why (for the start-up log).
    Off(&'static str),
    /// OTLP/gRPC to this endpoint.
    Otlp(String),
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

/// Decides where spans go from the configured endpoint and `var` (the
/// environment, or a table in tests).
pub fn export(
    configured: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Export, EnvProblem> {
    let var = |name: &str| {
        var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(value) = var("OTEL_SDK_DISABLED") {
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
    if let Some(value) = var("OTEL_TRACES_EXPORTER") {
        match value.as_str() {
            "none" => return Ok(Export::Off("OTEL_TRACES_EXPORTER=none")),
            "otlp" => {}
            _ => {
                return Err(EnvProblem {
                    variable: "OTEL_TRACES_EXPORTER",
                    value,
                    problem: "is not an exporter this build has",
                    accepted: "otlp, none",
                });
            }
        }
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = var(variable) {
            if value != "grpc" {
                return Err(EnvProblem {
                    variable,
                    value,
                    problem: "is not built in (only OTLP over gRPC is)",
                    accepted: "grpc",
                });
            }
            // The signal-specific one wins: the generic one is not read.
            break;
        }
    }
    let endpoint = Some(configured.to_string())
        .filter(|e| !e.is_empty())
        .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    Ok(match endpoint {
        Some(endpoint) => Export::Otlp(endpoint),
        None => Export::Off("no OTLP endpoint configured"),
    })
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

    #[test]
    fn the_signal_specific_endpoint_wins_over_the_generic_one_and_the_setting_over_both() {
        let env = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]);
        assert_eq!(
            export("", &env),
            Ok(Export::Otlp("http://traces:4317".into()))
        );
        assert_eq!(
            export("http://configured:4317", &env),
            Ok(Export::Otlp("http://configured:4317".into()))
        );
        let alone = with(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")]);
        assert_eq!(
            export("", alone),
            Ok(Export::Otlp("http://traces:4317".into()))
        );
        assert!(matches!(export("", with(&[])), Ok(Export::Off(_))));
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(
                matches!(export("", with(&[endpoint, off])), Ok(Export::Off(_))),
                "{off:?}"
            );
        }
        let on = with(&[endpoint, ("OTEL_SDK_DISABLED", "false")]);
        assert!(matches!(export("", on), Ok(Export::Otlp(_))));
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_the_variable() {
        let problem = |pairs: &[(&str, &str)]| export("", with(pairs)).err().map(|p| p.variable);
        assert_eq!(
            problem(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
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
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
            None
        );
        let text = export("", with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .err()
            .map(|p| p.to_string())
            .unwrap_or_default();
        assert!(text.contains("accepted: grpc"), "{text}");
    }
}
