//! Webhook delivery: every `alarm.state_changed` is POSTed to its alarm's
//! webhook URL. Legacy code still: a blocking HTTP client on a pool thread.
//! A delivery is retried in place with backoff, then requeued with capped
//! backoff for as long as the receiver is down or answers 5xx (a receiver
//! being down is not the message's fault, so it is never dead-lettered for
//! it); it is acknowledged only after a 2xx, so each transition is delivered
//! once the receiver is back. A receiver that refuses it (4xx but 408 and
//! 429) gets `amqp.max_deliveries` deliveries, then it is dead-lettered with
//! the status as its reason.

use std::time::Duration;

use switchyard_executor::Endpoint;
use switchyard_messaging::{EndpointError, Handled, Notification};
use switchyard_proto::messaging::v1::AlarmStateChanged;
use switchyard_proto::metering::v1::AlarmState;

use crate::settings::NotifierConfig;

/// The JSON body a webhook receives: a contract with receivers written in
/// any language, documented in docs/wire-format.md ("Webhooks") and held by
/// the test below.
pub fn body(changed: &AlarmStateChanged) -> String {
    let alarm = changed.alarm.clone().unwrap_or_default();
    let transition = changed.transition.clone().unwrap_or_default();
    serde_json::json!({
        "alarm_id": alarm.id,
        "name": alarm.name,
        "meter": alarm.meter,
        "threshold": alarm.threshold,
        "previous": AlarmState::json_name(transition.from),
        "current": AlarmState::json_name(transition.to),
        "reason": transition.reason,
        "at_unix": transition.at.map(|t| t.seconds).unwrap_or_default(),
    })
    .to_string()
}

/// A 4xx answer is the receiver refusing this notification: retrying it as
/// if the receiver were down would hold it for ever. 408 (request timeout)
/// and 429 (too many requests) are the receiver asking for later.
fn refused(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
}

/// The endpoint that delivers one state change to its webhook.
pub const ENDPOINT: &str = "deliver_webhook";

/// The `alarm.state_changed` endpoint.
pub fn endpoint(
    config: &NotifierConfig,
) -> Endpoint<Notification<AlarmStateChanged>, Result<Handled, EndpointError>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(config.webhook_timeout_ms)))
        .http_status_as_error(false)
        .build()
        .into();
    let attempts = config.webhook_attempts.max(1);
    let backoff = Duration::from_millis(config.webhook_backoff_ms);
    Endpoint::blocking(
        ENDPOINT,
        move |_, changed: Notification<AlarmStateChanged>| {
            let url = changed
                .payload
                .alarm
                .as_ref()
                .map(|a| a.webhook_url.clone())
                .unwrap_or_default();
            if url.is_empty() {
                return Ok(Handled::Handled);
            }
            let body = body(&changed.payload);
            let mut last = String::new();
            for attempt in 1..=attempts {
                match agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(body.as_str())
                {
                    Ok(response) if response.status().is_success() => return Ok(Handled::Handled),
                    Ok(response) if refused(response.status().as_u16()) => {
                        // The receiver is up and says no (404, 400, 401, …):
                        // counted deliveries, then the dead-letter queue.
                        return Err(EndpointError::Transient(format!(
                            "webhook {} refused the notification: HTTP {}",
                            switchyard_config::redact_text(&url),
                            response.status()
                        )));
                    }
                    Ok(response) => last = format!("HTTP {}", response.status()),
                    Err(error) => last = error.to_string(),
                }
                if attempt < attempts {
                    std::thread::sleep(backoff * 2u32.saturating_pow(attempt - 1));
                }
            }
            Err(EndpointError::Unavailable(format!(
                "webhook {}: {last} after {attempts} attempts",
                switchyard_config::redact_text(&url)
            )))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{body, refused};
    use switchyard_proto::messaging::v1::AlarmStateChanged;
    use switchyard_proto::metering::v1::{Alarm, AlarmState, AlarmTransition};

    #[test]
    fn the_body_has_the_documented_fields_and_state_names() {
        let changed = |from: AlarmState, to: i32| AlarmStateChanged {
            alarm: Some(Alarm {
                id: "a-1".into(),
                name: "cpu high".into(),
                meter: "cpu_util".into(),
                threshold: 90.5,
                webhook_url: "http://receiver/hook?token=secret".into(),
                ..Alarm::default()
            }),
            transition: Some(AlarmTransition {
                alarm_id: "a-1".into(),
                from: from as i32,
                to,
                reason: "3 periods above 90.5".into(),
                at: Some(prost_types::Timestamp {
                    seconds: 1_796_000_000,
                    nanos: 250_000_000,
                }),
            }),
        };
        let parsed: serde_json::Value =
            serde_json::from_str(&body(&changed(AlarmState::Ok, AlarmState::Alarm as i32)))
                .expect("the body is JSON");
        assert_eq!(
            parsed,
            serde_json::json!({
                "alarm_id": "a-1",
                "name": "cpu high",
                "meter": "cpu_util",
                "threshold": 90.5,
                "previous": "ok",
                "current": "alarm",
                "reason": "3 periods above 90.5",
                "at_unix": 1_796_000_000,
            }),
            "exactly these fields: not the webhook URL, which may carry a secret"
        );
        let names = |from, to| {
            let parsed: serde_json::Value =
                serde_json::from_str(&body(&changed(from, to))).expect("JSON");
            (parsed["previous"].clone(), parsed["current"].clone())
        };
        assert_eq!(
            names(AlarmState::InsufficientData, 99),
            ("insufficient_data".into(), "unknown".into())
        );
    }

    #[test]
    fn client_errors_are_refusals_except_timeout_and_too_many_requests() {
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(refused(status), "{status}");
        }
        for status in [200, 301, 408, 429, 500, 502, 503] {
            assert!(!refused(status), "{status}");
        }
    }
}
