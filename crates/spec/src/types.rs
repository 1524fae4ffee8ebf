//! The typed service spec: what a user asks for. The system never modifies a spec it was given;
//! defaults are filled in once, at parse time, so every later reader sees the same values.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};

/// One service: N replicas of the same task template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub replicas: u32,
    pub driver: DriverKind,
    /// Container image; required for `docker`, forbidden for `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// argv for a process; for a container it overrides the image's CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Container only: overrides the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    pub restart: RestartSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(with = "duration_str")]
    pub stop_grace: Duration,
}

impl ServiceSpec {
    /// A process service with every optional field at its default; handy in tests and docs.
    pub fn process(name: &str, command: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            replicas: 1,
            driver: DriverKind::Process,
            image: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            entrypoint: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            restart: RestartSpec::default(),
            liveness: None,
            readiness: None,
            resources: Resources::default(),
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// 5 s: long enough for a web server to drain, short enough that a scale-down feels prompt.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Process,
    Docker,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Process => "process",
            DriverKind::Docker => "docker",
        })
    }
}

/// A named port. For a process the agent picks a free host port and passes it in the
/// environment; for a container it maps a host port to `container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Docker only: the host address to publish on (Compose's `127.0.0.1:8080:80`); `None`
    /// publishes on every interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

impl PortSpec {
    /// A port known only by name; the agent picks the host port.
    pub fn named(name: &str) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            container_port: None,
            host_port: None,
            protocol: Protocol::Tcp,
            host_ip: None,
        }
    }

    /// The variable that carries this port's host port into a task: `OUTPOST_PORT_<NAME>`,
    /// upper-cased with `-` as `_` so it is a valid shell name.
    pub fn env_var(&self) -> String {
        format!(
            "OUTPOST_PORT_{}",
            self.name.to_uppercase().replace('-', "_")
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// A host path (starts with `/` or `.`) or a named volume.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubles on each further restart.
    #[serde(with = "duration_str")]
    pub initial_backoff: Duration,
    #[serde(with = "duration_str")]
    pub max_backoff: Duration,
    /// A task that stays up this long has its backoff reset to `initial_backoff`.
    #[serde(with = "duration_str")]
    pub reset_after: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Always,
            // 100 ms: a crashed task is back well inside the 300 ms recovery target, yet a
            // crash loop cannot spin a core.
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// A health check: what to try, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    #[serde(flatten)]
    pub action: ProbeAction,
    #[serde(with = "duration_str")]
    pub initial_delay: Duration,
    #[serde(with = "duration_str")]
    pub period: Duration,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl ProbeSpec {
    pub fn new(action: ProbeAction) -> ProbeSpec {
        ProbeSpec {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeAction {
    Http {
        path: String,
        port: PortRef,
    },
    Tcp {
        port: PortRef,
    },
    /// argv run beside the task (inside the container for docker); exit 0 is healthy.
    Exec {
        command: Vec<String>,
    },
}

/// A port named in `ports`, or a literal port number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceList,
    #[serde(default)]
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// Durations cross the wire in the same humantime form users write (`1s`, `250ms`).
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
