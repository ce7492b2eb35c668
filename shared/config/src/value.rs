//! Values checked while they are read: a listen address, an optional one,
//! and the URL of a gRPC peer. A bad value is a problem of its key, reported
//! by the loader with its source and the accepted values, with every other
//! problem of the run — and code past the loader holds a value that is
//! known to be good.

use std::fmt;
use std::net::SocketAddr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const ADDRESS: &str = "IP:port such as 127.0.0.1:50051 or [::]:50051 (port 0 picks a free one)";

/// The value as text, whatever scalar it was read as: the environment layer
/// reads `9464` as a number, and the message should say what is wrong with
/// `9464`, not that a string was expected.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<String, E> {
            Ok(value.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

fn socket_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a socket address; accepted: {ADDRESS}"))
}

/// An address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl Listen {
    /// `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Self {
        Self(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The address.
    pub fn address(self) -> SocketAddr {
        self.0
    }
}

impl From<SocketAddr> for Listen {
    fn from(address: SocketAddr) -> Self {
        Self(address)
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = text(deserializer)?;
        socket_address(&text).map(Self).map_err(D::Error::custom)
    }
}

/// An address to listen on, or empty: off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalListen(pub Option<SocketAddr>);

impl OptionalListen {
    /// `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Self {
        Self(Some(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// The address, when set.
    pub fn address(self) -> Option<SocketAddr> {
        self.0
    }

    /// Whether it is off.
    pub fn is_off(self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for OptionalListen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(address) => serializer.collect_str(&address),
            None => serializer.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for OptionalListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = text(deserializer)?;
        if text.trim().is_empty() {
            return Ok(Self(None));
        }
        socket_address(&text)
            .map(|address| Self(Some(address)))
            .map_err(|problem| D::Error::custom(format!("{problem}, or empty (off)")))
    }
}

/// The URL of a gRPC peer: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// `http://127.0.0.1:port`.
    pub fn loopback(port: u16) -> Self {
        Self(format!("http://127.0.0.1:{port}"))
    }

    /// Checks `url`.
    pub fn new(url: impl Into<String>) -> Result<Self, String> {
        let url = url.into();
        match crate::check::http_url(&url) {
            None => Ok(Self(url)),
            Some(problem) => Err(problem),
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(text(deserializer)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Section {
        listen: Listen,
        metrics: OptionalListen,
        peer: HttpUrl,
    }

    #[test]
    fn good_values_round_trip_and_bad_ones_say_what_is_accepted() {
        let section: Section = toml::from_str(
            "listen = \"127.0.0.1:50051\"\nmetrics = \"\"\npeer = \"http://collector:50052\"",
        )
        .expect("reads");
        assert_eq!(section.listen.to_string(), "127.0.0.1:50051");
        assert!(section.metrics.is_off());
        assert_eq!(section.peer.as_str(), "http://collector:50052");
        let text = toml::to_string(&section).expect("writes");
        assert!(text.contains("metrics = \"\""), "{text}");

        for (toml_text, says) in [
            (
                "listen = \"api:50051\"\nmetrics = \"\"\npeer = \"http://x\"",
                "`api:50051` is not a socket address; accepted: IP:port",
            ),
            (
                "listen = \"0.0.0.0:1\"\nmetrics = 9464\npeer = \"http://x\"",
                "`9464` is not a socket address; accepted: IP:port",
            ),
            (
                "listen = \"0.0.0.0:1\"\nmetrics = \"\"\npeer = \"collector:50052\"",
                "`collector:50052` is not a URL; accepted: http(s)://host:port",
            ),
        ] {
            let error = toml::from_str::<Section>(toml_text).expect_err("refused");
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
