//! The vocabulary of docker-only settings: Linux capability names, stop signals and Docker
//! security options. Parsers turn what users write into one stored form (`normalize_*`);
//! validation accepts only that form (`check_*`), so the driver compares plain strings and a
//! typo fails at deploy, not at container start on a far-away node.

use crate::error::did_you_mean;

/// Linux capabilities (capabilities(7), up to CAP_CHECKPOINT_RESTORE in Linux 5.9), as Docker
/// names them: without the `CAP_` prefix.
#[rustfmt::skip]
const CAPABILITIES: &[&str] = &[
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

/// Every capability at once, in `cap_add` or `cap_drop`.
const ALL_CAPABILITIES: &str = "ALL";

/// Signal names without `SIG` (signal(7)); the real-time names are checked in [`known_signal`].
#[rustfmt::skip]
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
    "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
    "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
];

/// 64: SIGRTMAX on Linux, the highest signal number.
const MAX_SIGNAL: u32 = 64;

/// 15 and 14: how far Docker's signal table counts from SIGRTMIN up and SIGRTMAX down.
const RTMIN_OFFSETS: u32 = 15;
const RTMAX_OFFSETS: u32 = 14;

/// The security options Docker's daemon understands (`docker run --security-opt`).
const SECURITY_KEYS: &[&str] = &["apparmor", "seccomp", "label", "no-new-privileges"];

/// `cap_net_admin`, `CAP_NET_ADMIN` and `net_admin` are all stored as `NET_ADMIN`.
pub(crate) fn normalize_capability(text: &str) -> String {
    let upper = text.trim().to_ascii_uppercase();
    match upper.strip_prefix("CAP_") {
        Some(name) => name.to_string(),
        None => upper,
    }
}

/// Whether `name` is a capability in its stored form.
pub(crate) fn check_capability(name: &str) -> Result<(), String> {
    if name == ALL_CAPABILITIES || CAPABILITIES.contains(&name) {
        return Ok(());
    }
    let normal = normalize_capability(name);
    if normal != name && check_capability(&normal).is_ok() {
        return Err(format!(
            "{name:?} should be written {normal:?} (upper case, without CAP_)"
        ));
    }
    Err(match did_you_mean(&normal, CAPABILITIES) {
        Some(guess) => format!("{name:?} is not a Linux capability; did you mean {guess:?}?"),
        None => format!("{name:?} is not a Linux capability (see capabilities(7), or use ALL)"),
    })
}

/// `term`, `TERM` and `SIGTERM` are all stored as `SIGTERM`; numbers lose leading zeros.
pub(crate) fn normalize_signal(text: &str) -> String {
    let text = text.trim();
    if is_number(text) {
        return text
            .parse::<u32>()
            .map_or(text.to_string(), |n| n.to_string());
    }
    let upper = text.to_ascii_uppercase();
    match upper.starts_with("SIG") {
        true => upper,
        false => format!("SIG{upper}"),
    }
}

/// Whether `signal` is a signal in its stored form: `SIG<NAME>` or a number 1 to 64.
pub(crate) fn check_signal(signal: &str) -> Result<(), String> {
    if is_number(signal) {
        return match signal.parse::<u32>() {
            Ok(n) if (1..=MAX_SIGNAL).contains(&n) && n.to_string() == signal => Ok(()),
            Ok(n) if (1..=MAX_SIGNAL).contains(&n) => {
                Err(format!("{signal:?} should be written \"{n}\""))
            }
            _ => Err(format!(
                "{signal:?} is not a signal number (use 1 to {MAX_SIGNAL})"
            )),
        };
    }
    if signal.strip_prefix("SIG").is_some_and(known_signal) {
        return Ok(());
    }
    let normal = normalize_signal(signal);
    if normal != signal && check_signal(&normal).is_ok() {
        return Err(format!("{signal:?} should be written {normal:?}"));
    }
    let bare = normal.strip_prefix("SIG").unwrap_or(&normal);
    Err(match did_you_mean(bare, SIGNALS) {
        Some(guess) => format!("{signal:?} is not a signal; did you mean \"SIG{guess}\"?"),
        None => format!("{signal:?} is not a signal (write a name like SIGTERM, or a number)"),
    })
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A name from signal(7), or `RTMIN`, `RTMIN+N`, `RTMAX-N`, `RTMAX` as Docker's table has them
/// (`SIGRTMIN+3` is how systemd images ask to stop).
fn known_signal(name: &str) -> bool {
    let offset = |rest: &str, max: u32| {
        rest.parse::<u32>()
            .is_ok_and(|n| (1..=max).contains(&n) && n.to_string() == rest)
    };
    let rtmin = name.strip_prefix("RTMIN+");
    let rtmax = name.strip_prefix("RTMAX-");
    SIGNALS.contains(&name)
        || matches!(name, "RTMIN" | "RTMAX")
        || rtmin.is_some_and(|rest| offset(rest, RTMIN_OFFSETS))
        || rtmax.is_some_and(|rest| offset(rest, RTMAX_OFFSETS))
}

/// Compose files still use Docker's deprecated `key:value` separator (`seccomp:unconfined`);
/// Outpost stores `key=value`.
pub(crate) fn normalize_compose_security_opt(text: &str) -> String {
    if text.contains('=') {
        return text.to_string();
    }
    match text.split_once(':') {
        Some((key, value)) if SECURITY_KEYS.contains(&key) => format!("{key}={value}"),
        _ => text.to_string(),
    }
}

/// Whether `option` is `key=value` with a key and value Docker accepts, or the bare
/// `no-new-privileges`.
pub(crate) fn check_security_opt(option: &str) -> Result<(), String> {
    if option == "no-new-privileges" {
        return Ok(());
    }
    let Some((key, value)) = option.split_once('=') else {
        let normal = normalize_compose_security_opt(option);
        return Err(match normal != option {
            true => format!("{option:?} should be written {normal:?}"),
            false => format!("{option:?} is not key=value (like \"apparmor=my-profile\")"),
        });
    };
    if !SECURITY_KEYS.contains(&key) {
        let keys: Vec<String> = SECURITY_KEYS.iter().map(|k| format!("`{k}`")).collect();
        return Err(format!(
            "{key:?} is not a security option (use {})",
            keys.join(", ")
        ));
    }
    if value.is_empty() {
        return Err(format!("{option:?} has no value after '='"));
    }
    match key {
        "no-new-privileges" if value != "true" && value != "false" => {
            Err(format!("{option:?}: no-new-privileges is true or false"))
        }
        "seccomp" => seccomp_profile(value),
        _ => Ok(()),
    }
}

/// The daemon takes a profile's JSON, not a path: the driver reads an absolute path on the
/// node. A relative path would depend on the agent's working directory, so it is refused.
fn seccomp_profile(value: &str) -> Result<(), String> {
    match value {
        "unconfined" | "builtin" => Ok(()),
        v if v.starts_with('/') || v.starts_with('{') => Ok(()),
        v => Err(format!(
            "seccomp profile {v:?} must be `unconfined`, `builtin`, or an absolute path to a JSON profile on the node"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_stored_upper_case_without_the_prefix() {
        for written in ["NET_ADMIN", "CAP_NET_ADMIN", "net_admin", "cap_net_admin"] {
            assert_eq!(normalize_capability(written), "NET_ADMIN", "{written}");
        }
        assert_eq!(normalize_capability("all"), "ALL");
        for good in ["NET_ADMIN", "SYS_PTRACE", "BPF", "ALL"] {
            assert_eq!(check_capability(good), Ok(()), "{good}");
        }
        let check = |name| check_capability(name).unwrap_err();
        assert_eq!(
            check("CAP_NET_ADMIN"),
            r#""CAP_NET_ADMIN" should be written "NET_ADMIN" (upper case, without CAP_)"#
        );
        assert_eq!(
            check("NET_ADMN"),
            r#""NET_ADMN" is not a Linux capability; did you mean "NET_ADMIN"?"#
        );
        assert_eq!(
            check("X"),
            r#""X" is not a Linux capability (see capabilities(7), or use ALL)"#
        );
    }

    #[test]
    fn signals_are_stored_as_sig_names_or_numbers() {
        for (written, stored) in [
            ("term", "SIGTERM"),
            ("SIGQUIT", "SIGQUIT"),
            ("sigrtmin+3", "SIGRTMIN+3"),
            ("015", "15"),
        ] {
            assert_eq!(normalize_signal(written), stored, "{written}");
        }
        for good in [
            "SIGTERM",
            "SIGKILL",
            "SIGRTMIN",
            "SIGRTMIN+3",
            "SIGRTMAX-1",
            "1",
            "64",
        ] {
            assert_eq!(check_signal(good), Ok(()), "{good}");
        }
        let check = |signal| check_signal(signal).unwrap_err();
        assert_eq!(check("0"), r#""0" is not a signal number (use 1 to 64)"#);
        assert_eq!(check("65"), r#""65" is not a signal number (use 1 to 64)"#);
        assert_eq!(check("TERM"), r#""TERM" should be written "SIGTERM""#);
        assert_eq!(check("015"), r#""015" should be written "15""#);
        assert_eq!(normalize_signal("99999999999"), "99999999999");
        assert_eq!(
            check("SIGTERN"),
            r#""SIGTERN" is not a signal; did you mean "SIGTERM"?"#
        );
        assert_eq!(
            check("SIGRTMIN+16"),
            r#""SIGRTMIN+16" is not a signal (write a name like SIGTERM, or a number)"#
        );
        assert!(check_signal("").is_err());
        assert!(check_signal("SIGRTMIN+").is_err());
    }

    #[test]
    fn security_options_are_key_value_pairs_docker_knows() {
        for good in [
            "no-new-privileges",
            "no-new-privileges=false",
            "apparmor=my-profile",
            "seccomp=unconfined",
            "seccomp=/etc/outpost/seccomp.json",
            "label=type:svirt_apache_t",
            "label=disable",
        ] {
            assert_eq!(check_security_opt(good), Ok(()), "{good}");
        }
        let check = |option| check_security_opt(option).unwrap_err();
        assert_eq!(
            check("seccomp:unconfined"),
            r#""seccomp:unconfined" should be written "seccomp=unconfined""#
        );
        assert_eq!(
            check("unconfined"),
            r#""unconfined" is not key=value (like "apparmor=my-profile")"#
        );
        assert_eq!(
            check("selinux=on"),
            r#""selinux" is not a security option (use `apparmor`, `seccomp`, `label`, `no-new-privileges`)"#
        );
        assert_eq!(check("apparmor="), r#""apparmor=" has no value after '='"#);
        assert_eq!(
            check("no-new-privileges=yes"),
            r#""no-new-privileges=yes": no-new-privileges is true or false"#
        );
        assert_eq!(
            check("seccomp=profile.json"),
            r#"seccomp profile "profile.json" must be `unconfined`, `builtin`, or an absolute path to a JSON profile on the node"#
        );
        assert_eq!(
            normalize_compose_security_opt("label:disable"),
            "label=disable"
        );
        assert_eq!(normalize_compose_security_opt("a:b"), "a:b");
    }
}
