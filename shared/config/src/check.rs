//! Range checks that several sections share: files the service will read
//! (TLS material), durations and sizes that must not be zero (or whose
//! zero means never), names the broker accepts. Each returns the problem as
//! the `accepted: …` text the loader prints after the key and its source;
//! `None` means the value is fine.

use std::io::Read;

/// The problems among `checks` (a key, and what a check here said of its
/// value), in their order: the sections' `problems()` list their checks
/// once and keep what failed.
pub fn found<K>(checks: impl IntoIterator<Item = (K, Option<String>)>) -> Vec<(K, String)> {
    checks
        .into_iter()
        .filter_map(|(key, problem)| Some((key, problem?)))
        .collect()
}

/// Largest PEM file accepted (certificate chains are a few kilobytes).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A PEM file the service will read at start-up: it must exist, be a regular
/// file (not `/dev/zero`, a FIFO or a directory), be at most
/// [`MAX_PEM_BYTES`], and hold at least one PEM block. An empty path means
/// "not set" and is fine.
pub fn pem_file(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let accepted = "accepted: the path of a readable PEM file of at most 1 MiB";
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) => return Some(format!("`{path}` cannot be read ({error}); {accepted}")),
    };
    if !metadata.is_file() {
        return Some(format!("`{path}` is not a regular file; {accepted}"));
    }
    if metadata.len() > MAX_PEM_BYTES {
        return Some(format!("`{path}` is {} bytes; {accepted}", metadata.len()));
    }
    let mut text = String::new();
    let read = std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES).read_to_string(&mut text));
    match read {
        Err(error) => Some(format!("`{path}` cannot be read ({error}); {accepted}")),
        Ok(_) if !(text.contains("-----BEGIN ") && text.contains("-----END ")) => Some(format!(
            "`{path}` holds no PEM block (-----BEGIN … -----END …); {accepted}"
        )),
        Ok(_) => None,
    }
}

/// An `http://` or `https://` URL (a gRPC peer), else the problem.
pub fn http_url(value: &str) -> Option<String> {
    (!value.starts_with("http://") && !value.starts_with("https://"))
        .then(|| format!("`{value}` is not a URL; accepted: http(s)://host:port"))
}

/// A duration or size that must be at least `min` (zero would spin, or
/// refuse everything).
pub fn at_least(value: u64, min: u64, unit: &str) -> Option<String> {
    (value < min).then(|| format!("{value} is out of range; accepted: {min} {unit} or more"))
}

/// A duration where 0 means never and any other value must be at least
/// `min` (a shorter one would make the service busy with it).
pub fn never_or_at_least(value: u64, min: u64, unit: &str) -> Option<String> {
    (1..min)
        .contains(&value)
        .then(|| format!("{value} is out of range; accepted: 0 (never) or {min} {unit} or more"))
}

/// A value that must lie in `min..=max`.
pub fn within(value: u64, min: u64, max: u64, unit: &str) -> Option<String> {
    (!(min..=max).contains(&value))
        .then(|| format!("{value} is out of range; accepted: {min} to {max} {unit}"))
}

/// Longest name accepted for the base of the broker names a service derives
/// (`<exchange>.<topic>.<server>.dlq` and the like must stay within AMQP's
/// 255-byte short strings).
pub const MAX_BROKER_NAME: usize = 100;

/// A name the services extend into exchange and queue names.
pub fn broker_name(name: &str) -> Option<String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_BROKER_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    (!fine).then(|| {
        format!(
            "{} bytes; accepted: 1 to {MAX_BROKER_NAME} characters of A-Z a-z 0-9 _ . - :",
            name.len()
        )
    })
}

/// A bearer token: printable ASCII without spaces (what an HTTP header can
/// carry verbatim), at least `min_len` long.
pub fn token(token: &str, min_len: usize) -> Option<String> {
    if token.len() < min_len {
        return Some(format!(
            "a token of {} characters; accepted: at least {min_len} printable ASCII characters without spaces",
            token.len()
        ));
    }
    (!token.bytes().all(|b| b.is_ascii_graphic())).then(|| {
        "a token with a space, a control or a non-ASCII character can never match a request; accepted: printable ASCII without spaces".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_is_zero_and_anything_else_is_at_least_the_minimum() {
        assert_eq!(never_or_at_least(0, 1000, "ms"), None);
        assert_eq!(never_or_at_least(1000, 1000, "ms"), None);
        assert_eq!(
            never_or_at_least(999, 1000, "ms").as_deref(),
            Some("999 is out of range; accepted: 0 (never) or 1000 ms or more")
        );
        assert!(never_or_at_least(1, 1000, "ms").is_some());
    }

    #[test]
    fn pem_files_must_be_small_regular_files_with_a_pem_block() {
        assert_eq!(pem_file(""), None);
        assert!(
            pem_file("/dev/zero")
                .unwrap()
                .contains("not a regular file")
        );
        assert!(
            pem_file("/nonexistent/ca.pem")
                .unwrap()
                .contains("cannot be read")
        );
        let dir = std::env::temp_dir().join(format!("switchyard-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(pem_file(good.to_str().unwrap()), None);
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate").unwrap();
        assert!(
            pem_file(text.to_str().unwrap())
                .unwrap()
                .contains("no PEM block")
        );
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert!(pem_file(big.to_str().unwrap()).unwrap().contains("bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_durations_and_sizes_are_refused() {
        assert!(at_least(0, 1, "ms").is_some());
        assert_eq!(at_least(1, 1, "ms"), None);
        assert!(within(0, 1024, 2048, "bytes").is_some());
    }

    #[test]
    fn broker_names_fit_the_names_derived_from_them() {
        assert_eq!(broker_name("switchyard"), None);
        assert!(broker_name(&"x".repeat(300)).is_some());
        assert!(broker_name("").is_some());
        assert!(broker_name("a b").is_some());
    }

    #[test]
    fn tokens_that_can_never_match_are_refused() {
        assert_eq!(token("0123456789abcdef", 16), None);
        assert!(token("0123456789abcdef ", 16).is_some());
        assert!(token("0123456789abcdéf", 16).is_some());
        assert!(token("short", 16).is_some());
    }
}
