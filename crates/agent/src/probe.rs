//! Probes: one evaluator for the three kinds (`http`, `tcp`, `exec`) and the threshold counter
//! that turns single results into a verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use spec::{PortRef, ProbeAction, ProbeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::{Driver, Handle, Launch};

/// Runs one probe attempt against the run `launch` started (its ports name the task's host
/// ports; exec probes run with its environment).
pub async fn check(
    spec: &ProbeSpec,
    driver: &dyn Driver,
    handle: &Handle,
    launch: &Launch,
) -> Result<(), String> {
    let ports = &launch.ports;
    let attempt = async {
        match &spec.action {
            ProbeAction::Tcp { port } => {
                let port = resolve(port, ports)?;
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("tcp connect to port {port}: {e}"))
            }
            ProbeAction::Http { path, port } => http_get(resolve(port, ports)?, path).await,
            ProbeAction::Exec { command } => {
                match driver.exec(handle, launch, command, spec.timeout).await {
                    Some(0) => Ok(()),
                    Some(code) => Err(format!("{} exited with status {code}", command.join(" "))),
                    None => Err(format!("{} could not run or timed out", command.join(" "))),
                }
            }
        }
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}", humantime_ms(spec.timeout))),
    }
}

fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn resolve(port: &PortRef, ports: &BTreeMap<String, u16>) -> Result<u16, String> {
    match port {
        PortRef::Number(n) => Ok(*n),
        PortRef::Name(name) => ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

/// A minimal HTTP/1.1 GET: 2xx and 3xx are healthy, as Kubernetes counts them.
async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("http connect to port {port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: outpost-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http GET {path}: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("http GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("http GET {path}: not an HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("http GET {path} answered {status}"))
    }
}

/// Consecutive results → verdict, with Kubernetes' thresholds.
#[derive(Debug, Clone, Default)]
pub struct Threshold {
    successes: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
    /// Not enough consecutive results yet to change the verdict.
    Undecided,
}

impl Threshold {
    pub fn record(&mut self, ok: bool, spec: &ProbeSpec) -> Verdict {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= spec.success_threshold.max(1) {
                return Verdict::Healthy;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= spec.failure_threshold.max(1) {
                return Verdict::Unhealthy;
            }
        }
        Verdict::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::process::ProcessDriver;
    use tokio::net::TcpListener;

    fn probe(action: ProbeAction) -> ProbeSpec {
        let mut p = ProbeSpec::new(action);
        p.timeout = Duration::from_secs(2);
        p
    }

    fn no_handle() -> Handle {
        Handle {
            pid: None,
            start_ticks: None,
            boot_id: None,
            container_id: None,
        }
    }

    /// Runs one probe against a task with `ports` and no process.
    async fn check_with(
        spec: &ProbeSpec,
        ports: &BTreeMap<String, u16>,
        driver: &ProcessDriver,
    ) -> Result<(), String> {
        let dir = std::env::temp_dir();
        let mut launch = crate::driver::test_launch("probe.1.1", &["true"], &dir);
        launch.ports = ports.clone();
        check(spec, driver, &no_handle(), &launch).await
    }

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_code() {
        let driver = ProcessDriver::new(None, "test");
        let ok = serve_once("200 OK").await;
        let sick = serve_once("503 Service Unavailable").await;
        let ports = BTreeMap::from([("ok".to_string(), ok), ("sick".to_string(), sick)]);
        let http = |port: &str| {
            probe(ProbeAction::Http {
                path: "/healthz".into(),
                port: PortRef::Name(port.into()),
            })
        };
        assert_eq!(check_with(&http("ok"), &ports, &driver).await, Ok(()));
        assert_eq!(
            check_with(&http("sick"), &ports, &driver).await,
            Err("http GET /healthz answered 503".into())
        );
        assert_eq!(
            check_with(&http("nope"), &ports, &driver).await,
            Err("no port named \"nope\"".into())
        );
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listener() {
        let driver = ProcessDriver::new(None, "test");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Number(port),
        });
        assert_eq!(check_with(&tcp, &BTreeMap::new(), &driver).await, Ok(()));
        // A port bound but not listening refuses connections, and holding it
        // keeps a listener of a test running beside this one off it (a
        // dropped listener's port can be handed out again at once).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Number(closed.local_addr().unwrap().port()),
        });
        assert!(check_with(&tcp, &BTreeMap::new(), &driver).await.is_err());
        drop(listener);
    }

    #[tokio::test]
    async fn exec_probe_uses_the_exit_code() {
        let driver = ProcessDriver::new(None, "test");
        let exec = |cmd: &str| {
            probe(ProbeAction::Exec {
                command: vec![cmd.into()],
            })
        };
        assert_eq!(
            check_with(&exec("true"), &BTreeMap::new(), &driver).await,
            Ok(())
        );
        assert_eq!(
            check_with(&exec("false"), &BTreeMap::new(), &driver).await,
            Err("false exited with status 1".into())
        );
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut spec = ProbeSpec::new(ProbeAction::Exec {
            command: vec!["x".into()],
        });
        spec.failure_threshold = 3;
        spec.success_threshold = 2;
        let mut t = Threshold::default();
        let seq: Vec<Verdict> = [false, false, true, false, false, false, true, true]
            .iter()
            .map(|ok| t.record(*ok, &spec))
            .collect();
        use Verdict::*;
        assert_eq!(
            seq,
            vec![
                Undecided, Undecided, Undecided, Undecided, Undecided, Unhealthy, Undecided,
                Healthy
            ]
        );
    }
}
