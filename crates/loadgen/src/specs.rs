//! The services the bench deploys, written as one native YAML file and read by the same parser
//! `outpost deploy` uses, so the server receives exactly what an operator's deploy would send.
//! Simulated agents never run them: the command only has to be a plausible process.

use api::Capacity;
use spec::ServiceSpec;

/// What each replica requests: small, so 20 replicas fit a node many times over, yet not zero,
/// so the scheduler charges every placement against the node's room.
const TEMPLATE: &str = r#"name: {name}
replicas: {replicas}
driver: process
command: ["/usr/bin/sleep", "infinity"]
env: { MODE: bench }
restart: { policy: always, initial_backoff: 100ms, max_backoff: 30s }
resources: { requests: { cpu: 10m, memory: 16Mi }, limits: { memory: 64Mi } }
stop_grace: 5s
"#;

/// What every simulated node offers: a small edge box (4 cores, 8 GiB).
pub fn node_capacity() -> Capacity {
    Capacity {
        cpu_millis: 4_000,
        memory_bytes: 8 << 30,
    }
}

/// The name of service `i` (0-based): zero-padded, so names sort in deploy order.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// `count` services of `replicas` each, parsed and validated as `outpost deploy` does.
pub fn services(count: usize, replicas: u32) -> Result<Vec<ServiceSpec>, spec::SpecError> {
    let text: Vec<String> = (0..count)
        .map(|i| {
            TEMPLATE
                .replace("{name}", &service_name(i))
                .replace("{replicas}", &replicas.to_string())
        })
        .collect();
    let parsed = spec::parse_file("bench.yaml", &text.join("---\n"), &Default::default(), None)?;
    Ok(parsed.services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_parses_and_validates_with_its_name_and_replicas() {
        let specs = services(3, 7).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["svc-0000", "svc-0001", "svc-0002"]);
        assert!(specs.iter().all(|s| s.replicas == 7));
        spec::validate_all(&specs).unwrap();
    }
}
