//! The command line of `outpost-loadgen`: a handful of `--name value` options, each with a
//! default sized for the target (5,000 nodes, 1,000 services × 100 replicas).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: outpost-loadgen [--data-dir DIR | --api URL --token TOKEN] [--nodes N] [--services N]
                       [--replicas N] [--seconds S] [--patience S]

Simulated agents in one process load one Outpost server through its /v1 API: each registers,
heartbeats, watches its assignments and reports its tasks running, then flips their readiness
for --seconds. Figures are printed as key=value lines.

  --data-dir DIR   the server's data dir: its `api` and `token` files say where and how to connect
  --api URL        the server's API (instead of --data-dir)
  --token TOKEN    the cluster token (instead of --data-dir)
  --nodes N        simulated agents, each from its own loopback address (default 5000)
  --services N     services deployed in one request (default 1000)
  --replicas N     replicas of each service (default 100)
  --seconds S      length of the steady phase of status changes (default 10)
  --patience S     longest wait for any phase before giving up (default 600)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub data_dir: Option<PathBuf>,
    pub api: Option<String>,
    pub token: Option<String>,
    pub nodes: usize,
    pub services: usize,
    pub replicas: u32,
    pub steady: Duration,
    pub patience: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: None,
            api: None,
            token: None,
            nodes: 5_000,
            services: 1_000,
            replicas: 100,
            steady: Duration::from_secs(10),
            patience: Duration::from_secs(600),
        }
    }
}

/// What the command line asked for: a run, or the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(Options),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown option {0:?} (see --help)")]
    Unknown(String),
    #[error("{0} needs a value (see --help)")]
    Missing(String),
    #[error("{flag} {value:?}: {why}")]
    Bad {
        flag: String,
        value: String,
        why: &'static str,
    },
    #[error("say where the server is: --data-dir DIR, or both --api and --token")]
    NoServer,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, ArgsError> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(ArgsError::Missing(flag)),
        };
        set(&mut options, &flag, value)?;
    }
    let connects = options.data_dir.is_some() || (options.api.is_some() && options.token.is_some());
    if !connects {
        return Err(ArgsError::NoServer);
    }
    Ok(Parsed::Run(options))
}

fn set(options: &mut Options, flag: &str, value: String) -> Result<(), ArgsError> {
    match flag {
        "--data-dir" => options.data_dir = Some(PathBuf::from(value)),
        "--api" => options.api = Some(value),
        "--token" => options.token = Some(value),
        "--nodes" => options.nodes = count(flag, &value)?,
        "--services" => options.services = count(flag, &value)?,
        "--replicas" => {
            options.replicas = u32::try_from(count(flag, &value)?).map_err(|_| bad(flag, &value))?
        }
        "--seconds" => options.steady = Duration::from_secs(count(flag, &value)? as u64),
        "--patience" => options.patience = Duration::from_secs(count(flag, &value)? as u64),
        _ => return Err(ArgsError::Unknown(flag.to_string())),
    }
    Ok(())
}

fn count(flag: &str, value: &str) -> Result<usize, ArgsError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(flag, value))
}

fn bad(flag: &str, value: &str) -> ArgsError {
    ArgsError::Bad {
        flag: flag.to_string(),
        value: value.to_string(),
        why: "expected a whole number above 0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Result<Parsed, ArgsError> {
        parse(text.split_whitespace().map(str::to_string))
    }

    #[test]
    fn options_take_separate_or_inline_values_and_keep_defaults_otherwise() {
        let Parsed::Run(o) = args("--data-dir /d --nodes 20 --services=10 --seconds 2").unwrap()
        else {
            panic!("expected a run")
        };
        assert_eq!(o.data_dir, Some(PathBuf::from("/d")));
        assert_eq!((o.nodes, o.services, o.replicas), (20, 10, 100));
        assert_eq!(o.steady, Duration::from_secs(2));
        assert_eq!(o.patience, Options::default().patience);
    }

    #[test]
    fn bad_command_lines_say_which_option_and_why() {
        assert_eq!(args("--help").unwrap(), Parsed::Help);
        assert_eq!(
            args("--data-dir /d --nodse 3").unwrap_err(),
            ArgsError::Unknown("--nodse".into())
        );
        assert_eq!(
            args("--data-dir /d --nodes").unwrap_err(),
            ArgsError::Missing("--nodes".into())
        );
        let zero = args("--data-dir /d --replicas 0").unwrap_err().to_string();
        assert_eq!(zero, "--replicas \"0\": expected a whole number above 0");
        assert_eq!(args("--api http://x").unwrap_err(), ArgsError::NoServer);
    }
}
