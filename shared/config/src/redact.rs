//! Keeping secrets out of everything the loader prints.
//!
//! Secrets are typed ([`crate::Secret`], [`crate::SecretUrl`]): they print
//! themselves redacted, and `--print-config` serialises them as `***`. Two
//! things here are about text the types never see: a message about a value
//! given to a secret key in the wrong shape (serde quotes what it got), and
//! a configuration file's syntax error, which quotes the file's line (it may
//! hold a password). The last line of defence, [`redact_text`], is also
//! applied to errors from other crates before they are printed.

use serde::Serialize;

use crate::secret::REDACTED;

/// Whether a dotted key holds a secret by its name.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["token", "password", "secret", "credential", "api_key"]
        .iter()
        .any(|word| last.contains(word))
}

/// Replaces the password of every `scheme://user:password@` in `text`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first '/', whitespace or quote.
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at_sign), Some(colon)) if colon < at_sign => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at_sign..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces every quoted or back-quoted value in a message about a secret key.
pub(crate) fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside: Option<char> = None;
    for c in text.chars() {
        match inside {
            Some(quote) if c == quote => {
                out.push_str(REDACTED);
                out.push(c);
                inside = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                inside = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

/// The settings as TOML with every secret replaced by `***`: the secret
/// types ([`crate::Secret`], [`crate::SecretUrl`]) say which values those are.
pub fn redacted_toml<T: Serialize>(settings: &T) -> Result<String, toml::ser::Error> {
    let value = crate::secret::redacting(|| toml::Value::try_from(settings))?;
    toml::to_string_pretty(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_wherever_they_appear() {
        assert_eq!(
            redact_text("cannot reach amqp://guest:s3cret@127.0.0.1:5672/%2f now"),
            "cannot reach amqp://guest:***@127.0.0.1:5672/%2f now"
        );
        assert_eq!(
            redact_text("\"postgres://app:p@ss@db/x\""),
            "\"postgres://app:***@db/x\""
        );
        assert_eq!(
            redact_text("http://127.0.0.1:4317"),
            "http://127.0.0.1:4317"
        );
        assert_eq!(redact_text("amqp://host/vhost"), "amqp://host/vhost");
    }

    #[test]
    fn secret_values_are_redacted_in_toml_by_their_type() {
        #[derive(Serialize)]
        struct Api {
            auth_tokens: Vec<crate::Secret>,
            listen: String,
        }
        #[derive(Serialize)]
        struct Settings {
            api: Api,
        }
        let text = redacted_toml(&Settings {
            api: Api {
                auth_tokens: vec![crate::Secret::new("t0ken")],
                listen: "127.0.0.1:50051".into(),
            },
        })
        .expect("serializes");
        assert!(!text.contains("t0ken"), "{text}");
        assert!(
            text.contains("***") && text.contains("127.0.0.1:50051"),
            "{text}"
        );
    }

    #[test]
    fn quoted_values_are_hidden_for_secret_keys() {
        assert_eq!(
            redact_quoted("invalid type: found string \"abc\", expected a sequence"),
            "invalid type: found string \"***\", expected a sequence"
        );
    }
}
