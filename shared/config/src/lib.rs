//! One configuration loader for every Switchyard service.
//!
//! Layers, lowest first: the service's built-in defaults, a TOML file
//! (`--config PATH`, else `deploy/config/<service>.toml` when present), then
//! `SWITCHYARD_…` environment variables with `__` between key levels
//! (`SWITCHYARD_EXECUTOR__PHASE=async` sets `executor.phase`).
//!
//! Every problem is found at once: each value a file or variable supplies is
//! checked on its own against the defaults, so one bad key does not hide the
//! next. A problem names the key, where the value came from, and what is
//! accepted. Secrets (passwords in URLs, keys named like tokens) are redacted
//! from every message and from `--print-config`.
#![deny(missing_docs)]

pub mod check;
mod redact;
mod secret;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use redact::{redact_text, redacted_toml};
pub use secret::{REDACTED, Secret, SecretUrl};
pub use value::{HttpUrl, Listen, OptionalListen};

/// The environment variable prefix of every setting.
pub const ENV_PREFIX: &str = "SWITCHYARD_";

/// `SWITCHYARD_` variables that are not settings: the `switchyard` command
/// line's, and what the service launcher tells its workers (their number,
/// the supervisor's control socket, canary or main, the shared gRPC socket).
pub const CLI_VARIABLES: [&str; 6] = [
    "SWITCHYARD_API",
    "SWITCHYARD_TOKEN",
    "SWITCHYARD_WORKER",
    "SWITCHYARD_SUPERVISOR",
    "SWITCHYARD_ROLE",
    "SWITCHYARD_LISTENER",
];

/// The flags every service binary accepts, for `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlags {
    /// TOML configuration file (default: deploy/config/<service>.toml when present).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the configuration (and that every endpoint can run in the
    /// configured phase), then exit 0, or 2 with every problem listed.
    #[arg(long)]
    pub check_config: bool,
    /// Print the effective configuration with secrets redacted, then exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A service's configuration type: a serde struct whose `Default` is the
/// built-in layer, with range checks the types cannot express.
pub trait Settings: Serialize + DeserializeOwned + Default {
    /// Problems with a loaded value as `(dotted key, message)`; the loader adds
    /// where each value came from.
    fn problems(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `executor.phase` (empty when the whole file is at fault).
    pub key: String,
    /// Where the value came from: `file deploy/config/api.toml`,
    /// `environment variable SWITCHYARD_EXECUTOR__PHASE`, or `default`.
    pub source: String,
    /// What is wrong and what is accepted, secrets redacted.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{} (from {}): {}", self.key, self.source, self.message)
        }
    }
}

/// Everything wrong with a configuration, found in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The service being configured.
    pub service: String,
    /// Each problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration for {} ({} problem{}):",
            self.service,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// A loaded configuration and where its values came from.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The effective configuration.
    pub settings: T,
    /// The file layer used, if any.
    pub file: Option<PathBuf>,
    /// Every supplied key with where it came from, in precedence order.
    sources: Vec<(String, String)>,
}

impl<T> Loaded<T> {
    /// Where the effective value of `key` came from.
    pub fn source_of(&self, key: &str) -> String {
        source_in(&self.sources, key)
    }
}

/// Where the loader looks and what it reads.
#[derive(Debug, Clone)]
pub struct Loader {
    service: String,
    file: Option<PathBuf>,
    file_was_named: bool,
    env: Vec<(String, String)>,
}

impl Loader {
    /// A loader for `service` reading the process environment; `file` is the
    /// `--config` flag's value.
    pub fn new(service: &str, file: Option<&Path>) -> Self {
        Self::with_env(service, file, std::env::vars())
    }

    /// Like [`Loader::new`] with an explicit environment (for tests).
    pub fn with_env(
        service: &str,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let (file, file_was_named) = match file {
            Some(path) => (Some(path.to_path_buf()), true),
            None => {
                let default = Path::new("deploy/config").join(format!("{service}.toml"));
                (default.is_file().then_some(default), false)
            }
        };
        Self {
            service: service.to_string(),
            file,
            file_was_named,
            env: env
                .into_iter()
                .filter(|(key, _)| {
                    key.starts_with(ENV_PREFIX) && !CLI_VARIABLES.contains(&key.as_str())
                })
                .collect(),
        }
    }

    /// Loads and checks the configuration, reporting every problem at once.
    pub fn load<T: Settings>(&self) -> Result<Loaded<T>, ConfigError> {
        let mut problems = Vec::new();
        let defaults = Figment::from(Serialized::defaults(T::default()));
        let mut layers: Vec<(String, Figment)> = Vec::new();

        if let Some(path) = &self.file {
            let source = format!("file {}", path.display());
            if !path.is_file() {
                problems.push(Problem {
                    key: String::new(),
                    source: source.clone(),
                    message: "the configuration file does not exist; accepted: the path of \
                              a readable TOML file, or no --config to use the defaults"
                        .to_string(),
                });
            } else {
                layers.push((source, Figment::from(Toml::file_exact(path))));
            }
        }
        // `SWITCHYARD_<KEY>_FILE=/run/secrets/x` sets `<key>` to the file's
        // contents (compose and Kubernetes secrets), for any key that exists
        // and does not itself end in `_file`.
        let known: std::collections::HashSet<String> = defaults
            .data()
            .map(|data| {
                data.values()
                    .flat_map(leaves)
                    .map(|(path, _)| path)
                    .collect()
            })
            .unwrap_or_default();
        let (secret_files, consumed) = self.secret_files(&known, &mut problems);
        layers.push((
            "environment".to_string(),
            Figment::from(self.env_provider(&consumed)),
        ));
        layers.push((SECRET_FILES.to_string(), Figment::from(secret_files)));

        // Check each supplied value alone on top of the defaults, so that
        // every bad value is reported, not just the first serde meets. The
        // values that pass make up the configuration the range checks see,
        // so those problems are reported in the same run.
        let mut accepted: Vec<(String, Value, String)> = Vec::new();
        for (layer_source, layer) in &layers {
            let data = match layer.data() {
                Ok(data) => data,
                Err(error) => {
                    // A syntax error quotes the file's line, which the
                    // secret types never saw: the one message scanned here.
                    problems.push(Problem {
                        key: String::new(),
                        source: layer_source.clone(),
                        message: redact_text(&error.to_string()),
                    });
                    continue;
                }
            };
            for dict in data.values() {
                for (path, value) in leaves(dict) {
                    let source = if layer_source == "environment" {
                        format!("environment variable {}", env_var_name(&path))
                    } else if layer_source == SECRET_FILES {
                        format!(
                            "the file named by environment variable {}_FILE",
                            env_var_name(&path)
                        )
                    } else {
                        layer_source.clone()
                    };
                    let single = defaults
                        .clone()
                        .merge(Serialized::default(&path, value.clone()));
                    match single.extract::<T>() {
                        Ok(_) => accepted.push((path, value, source)),
                        Err(error) => problems.push(Problem {
                            message: redact_for_key(&path, &describe(&error)),
                            key: path,
                            source,
                        }),
                    }
                }
            }
        }

        let mut figment = defaults;
        for (path, value, _) in &accepted {
            figment = figment.merge(Serialized::default(path, value.clone()));
        }
        let settings: T = match figment.extract() {
            Ok(settings) => settings,
            Err(error) => {
                let key = error.path.join(".");
                problems.push(Problem {
                    message: redact_for_key(&key, &describe(&error)),
                    key,
                    source: "configuration".to_string(),
                });
                return Err(self.error(problems));
            }
        };
        let sources: Vec<(String, String)> = accepted
            .into_iter()
            .map(|(path, _, source)| (path, source))
            .collect();
        for (key, message) in settings.problems() {
            problems.push(Problem {
                source: source_in(&sources, &key),
                message: redact_for_key(&key, &message),
                key,
            });
        }
        if !problems.is_empty() {
            return Err(self.error(problems));
        }
        Ok(Loaded {
            settings,
            file: self.file.clone(),
            sources,
        })
    }

    /// Whether the file layer was named on the command line.
    pub fn file_was_named(&self) -> bool {
        self.file_was_named
    }

    /// The values of `SWITCHYARD_<KEY>_FILE` variables, read from their files,
    /// and the names of those variables (not configuration keys themselves).
    fn secret_files(
        &self,
        known: &std::collections::HashSet<String>,
        problems: &mut Vec<Problem>,
    ) -> (EnvLayer, Vec<String>) {
        let mut dict = Dict::new();
        let mut consumed = Vec::new();
        for (name, file) in &self.env {
            let Some(stem) = name.strip_suffix("_FILE") else {
                continue;
            };
            let path: Vec<String> = stem[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let key = path.join(".");
            if !known.contains(&key) || known.contains(&format!("{key}_file")) {
                continue;
            }
            consumed.push(name.clone());
            match read_secret(file) {
                Ok(text) => {
                    let value: Value = text.parse().unwrap_or_else(|never| match never {});
                    insert_path(&mut dict, &path, value);
                }
                Err(why) => problems.push(Problem {
                    key,
                    source: format!("environment variable {name}"),
                    message: format!(
                        "`{file}` {why}; accepted: the path of a readable regular file of at most {} KiB",
                        MAX_SECRET_BYTES / 1024
                    ),
                }),
            }
        }
        (EnvLayer { dict }, consumed)
    }

    /// The `SWITCHYARD_…` variables as a provider, values parsed the way
    /// figment parses environment values (`64` is a number, `true` a bool).
    fn env_provider(&self, skip: &[String]) -> EnvLayer {
        let mut dict = Dict::new();
        for (name, value) in self.env.iter().filter(|(name, _)| !skip.contains(name)) {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let value: Value = value.parse().unwrap_or_else(|never| match never {});
            insert_path(&mut dict, &path, value);
        }
        EnvLayer { dict }
    }

    fn error(&self, problems: Vec<Problem>) -> ConfigError {
        ConfigError {
            service: self.service.clone(),
            problems,
        }
    }
}

/// The layer of values read from `SWITCHYARD_<KEY>_FILE` files.
const SECRET_FILES: &str = "secret files";

/// Largest file a `…_FILE` variable may name.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret's file: a regular file, bounded, without its trailing newline.
fn read_secret(path: &str) -> Result<String, String> {
    use std::io::Read;
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot be read ({error})"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_string());
    }
    if metadata.len() > MAX_SECRET_BYTES {
        return Err(format!("is {} bytes", metadata.len()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_BYTES).read_to_string(&mut text))
        .map_err(|error| format!("cannot be read ({error})"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The environment layer: captured once, so loading is deterministic.
#[derive(Debug, Clone)]
struct EnvLayer {
    dict: Dict,
}

impl Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::value::Map::from([(
            figment::Profile::Default,
            self.dict.clone(),
        )]))
    }
}

/// The environment variable that sets `path`.
pub fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// Where the effective value of `key` (or of a key under it) came from: the
/// last layer that supplied it, else the defaults.
fn source_in(sources: &[(String, String)], key: &str) -> String {
    sources
        .iter()
        .rev()
        .find(|(path, _)| path == key || path.starts_with(&format!("{key}.")))
        .map(|(_, source)| source.clone())
        .unwrap_or_else(|| "default".to_string())
}

/// Sets `path` (one key per level) to `value` inside `dict`.
fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Every leaf `(dotted.path, value)` of a nested dictionary.
fn leaves(dict: &Dict) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, value) in dict {
        match value {
            Value::Dict(_, inner) if !inner.is_empty() => {
                for (path, leaf) in leaves(inner) {
                    out.push((format!("{key}.{path}"), leaf));
                }
            }
            other => out.push((key.clone(), other.clone())),
        }
    }
    out
}

/// The error's message without figment's trailing location text.
fn describe(error: &figment::Error) -> String {
    use figment::error::Kind;
    match &error.kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown key `{field}`; accepted keys here: {}",
            expected.join(", ")
        ),
        Kind::UnknownVariant(found, expected) => {
            format!("unknown value `{found}`; accepted: {}", expected.join(", "))
        }
        other => other.to_string(),
    }
}

/// A message about a key whose value is a secret (by the key's name)
/// quotes nothing: serde's messages quote the value they got ("found
/// string `…`, expected a sequence"). Other messages come from typed values
/// ([`SecretUrl`] shows itself redacted) and stay as they are.
fn redact_for_key(key: &str, message: &str) -> String {
    if redact::is_secret_key(key) {
        redact::redact_quoted(message)
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Amqp {
        url: SecretUrl,
        heartbeat_s: u16,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        amqp: Amqp,
    }

    impl Settings for Sample {
        fn problems(&self) -> Vec<(String, String)> {
            if self.amqp.url.starts_with("amqp://") {
                Vec::new()
            } else {
                vec![(
                    "amqp.url".into(),
                    format!(
                        "`{}` is not an AMQP URL; accepted: amqp://… or amqps://…",
                        self.amqp.url
                    ),
                )]
            }
        }
    }

    fn load(env: &[(&str, &str)]) -> Result<Loaded<Sample>, ConfigError> {
        Loader::with_env(
            "sample",
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .load()
    }

    #[test]
    fn passwords_never_appear_in_errors() {
        let error = load(&[
            ("SWITCHYARD_AMQP__URL", "http://guest:hunter2@127.0.0.1/"),
            ("SWITCHYARD_AMQP__HEARTBEAT_S", "soon"),
        ])
        .expect_err("two problems");
        let text = error.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains(
                "amqp.heartbeat_s (from environment variable SWITCHYARD_AMQP__HEARTBEAT_S)"
            ),
            "{text}"
        );
        let error = load(&[("SWITCHYARD_AMQP__URL", "http://guest:hunter2@127.0.0.1/")])
            .expect_err("bad scheme");
        let text = error.to_string();
        assert!(
            text.contains("amqp.url (from environment variable SWITCHYARD_AMQP__URL): `http://guest:***@127.0.0.1/` is not an AMQP URL"),
            "{text}"
        );
    }

    #[test]
    fn passwords_never_appear_in_printed_config() {
        let loaded = load(&[(
            "SWITCHYARD_AMQP__URL",
            "amqp://guest:hunter2@127.0.0.1:5672/%2f",
        )])
        .expect("valid");
        assert_eq!(
            loaded.settings.amqp.url.expose(),
            "amqp://guest:hunter2@127.0.0.1:5672/%2f",
            "the real value is kept"
        );
        let printed = redacted_toml(&loaded.settings).expect("prints");
        assert!(
            printed.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn a_key_can_be_read_from_the_file_its_file_variable_names() {
        let dir = std::env::temp_dir().join(format!("switchyard-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("amqp_url");
        std::fs::write(&secret, "amqp://user:s3cret@broker/%2f\n").unwrap();
        let path = secret.to_string_lossy().into_owned();
        let loaded = load(&[("SWITCHYARD_AMQP__URL_FILE", path.as_str())]).expect("loads");
        assert_eq!(
            loaded.settings.amqp.url.expose(),
            "amqp://user:s3cret@broker/%2f"
        );
        assert!(
            loaded
                .source_of("amqp.url")
                .contains("SWITCHYARD_AMQP__URL_FILE")
        );
        // A file that cannot be read is a problem of that key, named.
        let Err(error) = load(&[("SWITCHYARD_AMQP__URL_FILE", "/nonexistent/secret")]) else {
            panic!("a missing secret file is refused");
        };
        let text = error.to_string();
        assert!(
            text.contains("amqp.url") && text.contains("/nonexistent/secret"),
            "{text}"
        );
        let Err(error) = load(&[("SWITCHYARD_AMQP__URL_FILE", "/dev/zero")]) else {
            panic!("/dev/zero is refused");
        };
        assert!(error.to_string().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
