//! Secrets in configuration, as types: a bearer token ([`Secret`]) and a URL
//! that may carry a password ([`SecretUrl`]). The value is held in a
//! `secrecy::SecretString` (zeroed when dropped); its `Debug` and `Display`
//! never show it; `--print-config` shows `***` because the type says so
//! while [`crate::redacted_toml`] serialises, not because a printer guessed
//! from a key's name or scanned the text for `user:password@`.
//!
//! Serialising outside [`crate::redacted_toml`] gives the value itself: the
//! loader serialises the defaults into its first layer, and a redacted
//! default would be a wrong one.

use std::cell::Cell;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted secret is shown as.
pub const REDACTED: &str = "***";

thread_local! {
    static REDACTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets serialising redacted (on this thread).
pub(crate) fn redacting<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REDACTING.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(REDACTING.with(|flag| flag.replace(true)));
    f()
}

fn is_redacting() -> bool {
    REDACTING.with(Cell::get)
}

/// A secret string: a token, a password.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether it is empty (unset).
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl Default for Secret {
    fn default() -> Self {
        Self::new(String::new())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if is_redacting() && !self.is_empty() {
            serializer.serialize_str(REDACTED)
        } else {
            serializer.serialize_str(self.expose())
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// A URL whose user-info may hold a password (`amqp://user:password@host`,
/// `postgres://…`): a [`Secret`] that `Display`s itself with the password as
/// `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(Secret);

impl SecretUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(Secret::new(url))
    }

    /// The whole URL, password included, for the one place that connects.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether the URL starts with `prefix` (a scheme check).
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.expose().starts_with(prefix)
    }

    /// The URL with the password of its user-info replaced by `***`.
    pub fn redacted(&self) -> String {
        crate::redact_text(self.expose())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if is_redacting() {
            serializer.serialize_str(&self.redacted())
        } else {
            serializer.serialize_str(self.expose())
        }
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shows_its_password_as_stars_and_nothing_else_changes() {
        let url = SecretUrl::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(
            format!("{url:?}"),
            "SecretUrl(amqp://guest:***@127.0.0.1:5672/%2f)"
        );
        assert_eq!(url.expose(), "amqp://guest:hunter2@127.0.0.1:5672/%2f");
        for plain in [
            "sqlite://data/x.db?mode=rwc",
            "amqp://host/%2f",
            "postgres://u@h/db",
        ] {
            assert_eq!(SecretUrl::new(plain).to_string(), plain);
        }
        // A password holding '@' or '/': the user-info ends at the last '@'.
        assert_eq!(
            SecretUrl::new("postgres://u:p@ss@db:5432/x").to_string(),
            "postgres://u:***@db:5432/x"
        );
    }

    #[test]
    fn secrets_serialise_as_themselves_except_when_printed() {
        #[derive(Serialize)]
        struct Section {
            token: Secret,
            url: SecretUrl,
        }
        let section = Section {
            token: Secret::new("0123456789abcdef"),
            url: SecretUrl::new("amqp://u:pw@h/%2f"),
        };
        let plain = toml::to_string(&section).expect("serialises");
        assert!(
            plain.contains("0123456789abcdef") && plain.contains("u:pw@"),
            "{plain}"
        );
        let printed = redacting(|| toml::to_string(&section)).expect("serialises");
        assert!(
            !printed.contains("0123456789abcdef") && !printed.contains("pw"),
            "{printed}"
        );
        assert!(
            printed.contains("token = \"***\"") && printed.contains("u:***@h"),
            "{printed}"
        );
        assert_eq!(format!("{:?}", section.token), "Secret(***)");
        // The flag is reset afterwards.
        assert!(!is_redacting());
    }
}
