//! Types of the algorithm registry. The registry itself (which crates are linked
//! in) lives in the `kiln` binary; algorithm crates export [`AlgorithmEntry`]s.

use crate::algorithm::Algorithm;
use crate::error::WorkerError;
use tch::Device;

/// What an algorithm is built with.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub device: Device,
    pub seed: u64,
    pub global_batch: usize,
    pub rank: usize,
    pub world_size: usize,
    pub micro_steps: usize,
    /// `train.steps`: the length of the run (for schedules over it, such as a
    /// curriculum).
    pub steps: u64,
}

/// One registered trainer.
pub struct AlgorithmEntry {
    /// The `algorithm = "…"` value that selects it.
    pub name: &'static str,
    pub summary: &'static str,
    /// Checks the `[algorithm]` table at submit time.
    pub validate: fn(&toml::Value) -> Result<(), ConfigError>,
    pub build: fn(&toml::Value, &BuildContext) -> Result<Box<dyn Algorithm>, WorkerError>,
}

/// A problem in an `[algorithm]` table: the key path inside the table (empty for
/// the table itself) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }

    /// The dotted spec path: `algorithm.<path>`, naming the offending key of an
    /// unknown-field error when serde reports only its table.
    pub fn spec_path(&self) -> String {
        let unknown = self
            .message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .filter(|_| self.path.is_empty());
        match unknown {
            Some(key) => format!("algorithm.{key}"),
            None if self.path.is_empty() => "algorithm".to_string(),
            None => format!("algorithm.{}", self.path),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at `{}`: {}", self.spec_path(), self.message)
    }
}

/// Deserialises an algorithm's `[algorithm]` table (without `name`) into its config
/// type, with the key path of any error. Algorithm crates use this so every
/// algorithm reports spec errors the same way.
pub fn parse_config<T: serde::de::DeserializeOwned>(v: &toml::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.inner().message())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        width: u32,
    }

    #[test]
    fn config_errors_name_the_key() {
        let v: toml::Value = toml::from_str("widht = 3").unwrap();
        let e = parse_config::<Cfg>(&v).unwrap_err();
        assert_eq!(e.spec_path(), "algorithm.widht", "{e:?}");
        let v: toml::Value = toml::from_str("width = \"x\"").unwrap();
        let e = parse_config::<Cfg>(&v).unwrap_err();
        assert_eq!(e.spec_path(), "algorithm.width", "{e:?}");
        assert!(e.to_string().starts_with("at `algorithm.width`: "), "{e}");
    }
}
