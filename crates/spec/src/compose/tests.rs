//! Compose files, as specifications: what each Compose form becomes, and what is warned about.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::native::tests::dedent;
use crate::quantity::Cpu;
use crate::types::{FileRef, ObjectKind};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `text` with the given environment and `.env` text; panics on problems.
fn parse_with(text: &str, vars: &[(&str, &str)], dotenv: Option<&str>) -> Parsed {
    crate::parse_file("compose.yaml", &dedent(text), &env(vars), dotenv)
        .unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

fn parse(text: &str) -> Parsed {
    parse_with(text, &[], None)
}

fn only(text: &str) -> ServiceSpec {
    let mut parsed = parse(text);
    assert_eq!(parsed.services.len(), 1, "{parsed:#?}");
    parsed.services.remove(0)
}

/// Asserts that `text` fails with exactly `expect`, one `path: message` per line.
fn check_err(text: &str, vars: &[(&str, &str)], expect: &str) {
    match crate::parse_file("compose.yaml", &dedent(text), &env(vars), None) {
        Ok(parsed) => panic!("expected problems, got {parsed:#?}"),
        Err(e) => assert_eq!(e.to_string(), dedent(expect).trim_end()),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_typical_compose_file_becomes_docker_services() {
    let parsed = parse(
        r#"
        services:
          web:
            image: nginx:1.27
            ports: ["8080:80"]
          cache:
            image: redis:7
            command: redis-server --appendonly yes
        "#,
    );
    assert_eq!(parsed.warnings, Vec::<String>::new());
    let [web, cache] = parsed.services.as_slice() else {
        panic!("{parsed:#?}")
    };
    assert_eq!(
        (web.name.as_str(), web.driver, web.replicas),
        ("web", DriverKind::Docker, 1)
    );
    assert_eq!(web.image.as_deref(), Some("nginx:1.27"));
    assert_eq!(
        web.restart,
        RestartSpec::default(),
        "Outpost restarts services unless told not to"
    );
    assert_eq!(
        cache.command,
        strings(&["redis-server", "--appendonly", "yes"])
    );
}

#[test]
fn environment_may_be_a_list_or_a_mapping_and_may_pass_variables_through() {
    let parsed = parse_with(
        r#"
        services:
          a:
            image: app
            environment: ["MODE=prod", "EQUALS=a=b", "FROM_SHELL", "FROM_DOTENV", "NOWHERE"]
          b:
            image: app
            environment: { MODE: prod, DEBUG: 1, ENABLED: "true", FROM_SHELL: }
        "#,
        &[("FROM_SHELL", "shell")],
        Some("FROM_DOTENV=dotenv\n"),
    );
    let [a, b] = parsed.services.as_slice() else {
        panic!("{parsed:#?}")
    };
    let want = env(&[
        ("MODE", "prod"),
        ("EQUALS", "a=b"),
        ("FROM_SHELL", "shell"),
        ("FROM_DOTENV", "dotenv"),
    ]);
    assert_eq!(a.env, want);
    let want = env(&[
        ("MODE", "prod"),
        ("DEBUG", "1"),
        ("ENABLED", "true"),
        ("FROM_SHELL", "shell"),
    ]);
    assert_eq!(b.env, want);
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: service "a": environment variable "NOWHERE" is not set and was left out"#
        ]
    );
}

#[test]
fn ports_in_short_and_long_syntax_get_names() {
    let spec = only(
        r#"
        services:
          web:
            image: app
            ports:
              - "8080:80"
              - "80"
              - 443
              - "127.0.0.1:5432:5432/tcp"
              - "[::1]::53/udp"
              - "8081:80"
              - { target: 9000, published: "19000", protocol: udp, host_ip: 0.0.0.0 }
              - { target: 9090, name: metrics, published: "" }
        "#,
    );
    let port = |name: &str, container, host: Option<u16>, protocol, ip: Option<&str>| PortSpec {
        name: name.to_string(),
        container_port: Some(container),
        host_port: host,
        protocol,
        host_ip: ip.map(str::to_string),
        publish: None,
    };
    let mesh = |name: &str, container, publish| PortSpec {
        publish: Some(publish),
        ..port(name, container, None, Protocol::Tcp, None)
    };
    let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
    assert_eq!(
        spec.ports,
        vec![
            mesh("p80", 80, 8080),
            port("p80-2", 80, None, tcp, None),
            port("p443", 443, None, tcp, None),
            port("p5432", 5432, Some(5432), tcp, Some("127.0.0.1")),
            port("p53-udp", 53, None, udp, Some("::1")),
            mesh("p80-3", 80, 8081),
            port("p9000-udp", 9000, Some(19000), udp, Some("0.0.0.0")),
            port("metrics", 9090, None, tcp, None),
        ]
    );
}

#[test]
fn a_published_port_is_on_the_routing_mesh_unless_its_mode_is_host() {
    let spec = only(
        r#"
        services:
          web:
            image: app
            ports:
              - { target: 80, published: 8080, app_protocol: http }
              - { target: 81, published: 8081, mode: host }
              - { target: 82, published: 8082, mode: ingress }
        "#,
    );
    let summary: Vec<(Option<u16>, Option<u16>, Protocol)> = (spec.ports.iter())
        .map(|p| (p.publish, p.host_port, p.protocol))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(8080), None, Protocol::Http),
            (None, Some(8081), Protocol::Tcp),
            (Some(8082), None, Protocol::Tcp),
        ]
    );
}

#[test]
fn malformed_ports_are_refused_clearly() {
    check_err(
        r#"
        services:
          web:
            image: app
            ports: ["3000-3005:3000-3005", "80/sctp", "1:2:3:4", "99999", { published: 80 }]
        "#,
        &[],
        r#"
        web.ports[0]: port ranges like "3000-3005" are not supported yet; list each port
        web.ports[1]: "sctp" is not one of `tcp`, `udp`
        web.ports[2]: "1:2:3:4" is not a port mapping (write [IP:]HOST:CONTAINER[/tcp|udp])
        web.ports[3]: "99999" is not a port number (use 1 to 65535)
        web.ports[4].target: missing
        "#,
    );
}

#[test]
fn volumes_in_short_and_long_syntax() {
    let parsed = parse(
        r#"
        services:
          db:
            image: postgres
            volumes:
              - ./data:/var/lib/postgresql/data
              - pgconf:/etc/postgresql:ro,z
              - { type: bind, source: /srv/backups, target: /backups, read_only: true }
              - { type: volume, source: cache, target: /cache, volume: { nocopy: true } }
              - { type: tmpfs, target: /tmp }
        "#,
    );
    let volume = |source: &str, target: &str, read_only| VolumeSpec {
        source: source.into(),
        target: target.into(),
        read_only,
    };
    assert_eq!(
        parsed.services[0].volumes,
        vec![
            volume("./data", "/var/lib/postgresql/data", false),
            volume("pgconf", "/etc/postgresql", true),
            volume("/srv/backups", "/backups", true),
            volume("cache", "/cache", false),
        ]
    );
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: service "db": volume option "z" in db.volumes[1] is not supported yet and was ignored"#,
            r#"compose.yaml: service "db": key "volumes[3].volume" is not supported yet and was ignored"#,
            r#"compose.yaml: service "db": volume type "tmpfs" in db.volumes[4] is not supported yet; the mount was left out"#,
        ]
    );
    check_err(
        "services:\n  db:\n    image: postgres\n    volumes: [/var/lib/data]\n",
        &[],
        r#"db.volumes[0]: anonymous volumes are not supported yet; name it, like "data:/var/lib/data""#,
    );
}

#[test]
fn variables_interpolate_from_the_environment_then_dotenv() {
    let parsed = parse_with(
        r#"
        services:
          web:
            image: "registry.local/web:${TAG}"
            command: ["--mode=${MODE:-dev}", "--region=${REGION-eu}", "--price=$$5", "--host=$HOSTNAME", "--empty=[${EMPTY:-fallback}]"]
            environment:
              LEVEL: ${LEVEL}
              REPLICA_HINT: ${UNSET_ONE}
            deploy:
              replicas: ${REPLICAS:-2}
        "#,
        &[("TAG", "from-env"), ("HOSTNAME", "edge-1"), ("EMPTY", "")],
        Some("TAG=from-dotenv\nLEVEL=debug\nMODE=prod\n"),
    );
    let web = &parsed.services[0];
    assert_eq!(
        web.image.as_deref(),
        Some("registry.local/web:from-env"),
        "the environment wins over .env"
    );
    assert_eq!(
        web.command,
        strings(&[
            "--mode=prod",
            "--region=eu",
            "--price=$5",
            "--host=edge-1",
            "--empty=[fallback]"
        ])
    );
    assert_eq!(web.env, env(&[("LEVEL", "debug"), ("REPLICA_HINT", "")]));
    assert_eq!(
        web.replicas, 2,
        "an interpolated number is read as a number"
    );
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: service "web": variable "UNSET_ONE" is not set, so web.environment.REPLICA_HINT uses an empty string"#
        ]
    );
}

#[test]
fn required_variables_and_bad_references_are_problems() {
    check_err(
        r#"
        services:
          db:
            image: postgres
            environment:
              POSTGRES_PASSWORD: ${DB_PASSWORD:?set DB_PASSWORD in .env}
              PRICE: costs $5
        "#,
        &[],
        r#"
        db.environment.POSTGRES_PASSWORD: required variable "DB_PASSWORD" is not set: set DB_PASSWORD in .env
        db.environment.PRICE: "costs $5" has a "$" that starts no variable (write "$$" for a literal "$")
        "#,
    );
    let bad_dotenv = crate::parse_file(
        "compose.yaml",
        "services: {}\n",
        &BTreeMap::new(),
        Some("oops\n"),
    );
    assert_eq!(
        bad_dotenv.unwrap_err().to_string(),
        r#".env:1: expected KEY=value, got "oops""#
    );
}

#[test]
fn a_healthcheck_becomes_readiness_and_liveness_probes() {
    let spec = only(
        r#"
        services:
          web:
            image: app
            healthcheck:
              test: ["CMD", "curl", "-f", "http://localhost/health"]
              interval: 10s
              timeout: 2s
              retries: 5
              start_period: 1m30s
        "#,
    );
    let liveness = ProbeSpec {
        action: ProbeAction::Exec {
            command: strings(&["curl", "-f", "http://localhost/health"]),
        },
        initial_delay: Duration::from_secs(90),
        period: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        failure_threshold: 5,
        success_threshold: 1,
    };
    let readiness = ProbeSpec {
        initial_delay: Duration::ZERO,
        ..liveness.clone()
    };
    assert_eq!(
        (spec.liveness, spec.readiness),
        (Some(liveness), Some(readiness))
    );
}

#[test]
fn healthcheck_test_forms_and_docker_defaults() {
    let probe = |healthcheck: &str| {
        let text = format!("services:\n  web:\n    image: app\n    healthcheck: {healthcheck}\n");
        crate::parse_file("compose.yaml", &text, &BTreeMap::new(), None)
            .map(|p| p.services[0].liveness.clone())
    };
    let shell = |script: &str| strings(&["/bin/sh", "-c", script]);
    let exec = |command| ProbeAction::Exec { command };
    let docker_default = |command| ProbeSpec {
        period: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ..ProbeSpec::new(exec(command))
    };
    let cmd_shell = r#"{ test: [CMD-SHELL, "pg_isready || exit 1"], interval: 0s, retries: 0 }"#;
    assert_eq!(
        probe(cmd_shell),
        Ok(Some(docker_default(shell("pg_isready || exit 1"))))
    );
    assert_eq!(
        probe(r#"{ test: "curl -f localhost" }"#),
        Ok(Some(docker_default(shell("curl -f localhost"))))
    );
    assert_eq!(probe("{ test: [NONE] }"), Ok(None));
    assert_eq!(probe("{ test: [CMD, x], disable: true }"), Ok(None));
    let error = probe("{ test: [curl, x], interval: 1x }")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "web.healthcheck.test: expected \"CMD\", \"CMD-SHELL\" or \"NONE\" first, got \"curl\"\n\
         web.healthcheck.interval: \"1x\" is not a duration (write a number and a unit, like \"30s\", \"1m30s\" or \"500ms\")"
    );
}

#[test]
fn deploy_sets_replicas_resources_and_restart_policy() {
    let parsed = parse(
        r#"
        services:
          api:
            image: api:2
            restart: "no"
            deploy:
              mode: replicated
              replicas: 4
              resources:
                limits: { cpus: "0.5", memory: 50M, pids: 100 }
                reservations: { cpus: 0.25, memory: 20m }
              restart_policy:
                condition: on-failure
                delay: 5s
                max_attempts: 3
                window: 2m
        "#,
    );
    let api = &parsed.services[0];
    assert_eq!(api.replicas, 4);
    let limits = ResourceList {
        cpu: Some(Cpu(500)),
        memory: Some(Memory(50 << 20)),
        pids: Some(100),
    };
    let requests = ResourceList {
        cpu: Some(Cpu(250)),
        memory: Some(Memory(20 << 20)),
        pids: None,
    };
    assert_eq!(
        (&api.resources.limits, &api.resources.requests),
        (&limits, &requests)
    );
    let restart = RestartSpec {
        policy: RestartPolicy::OnFailure,
        initial_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(30),
        reset_after: Duration::from_secs(120),
    };
    assert_eq!(api.restart, restart);
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: service "api": deploy.restart_policy.max_attempts is not supported yet; restarts are unlimited"#
        ]
    );
}

#[test]
fn restart_words_map_to_policies() {
    let policy = |word: &str| {
        let text = format!("services:\n  web:\n    image: app\n    restart: {word}\n");
        crate::parse_file("c.yaml", &text, &BTreeMap::new(), None)
            .map(|p| (p.services[0].restart.policy, p.warnings))
    };
    assert_eq!(policy("no"), Ok((RestartPolicy::Never, vec![])));
    assert_eq!(policy("always"), Ok((RestartPolicy::Always, vec![])));
    assert_eq!(
        policy("unless-stopped"),
        Ok((RestartPolicy::Always, vec![]))
    );
    assert_eq!(policy("on-failure"), Ok((RestartPolicy::OnFailure, vec![])));
    let limited = r#"c.yaml: service "web": a restart limit ("on-failure:3") is not supported yet; restarts are unlimited"#;
    assert_eq!(
        policy("on-failure:3"),
        Ok((RestartPolicy::OnFailure, vec![limited.to_string()]))
    );
    let error = policy("sometimes").unwrap_err().to_string();
    assert_eq!(
        error,
        r#"web.restart: "sometimes" is not one of `no`, `always`, `on-failure`, `unless-stopped`"#
    );
}

#[test]
fn older_resource_keys_and_durations_are_understood() {
    let spec = only(
        r#"
        services:
          web:
            image: app
            scale: 3
            cpus: 1.5
            mem_limit: 1gb
            mem_reservation: "512 MiB"
            pids_limit: -1
            stop_grace_period: 1m30s
            working_dir: /app
            user: "1000:1000"
            entrypoint: ["/init", "--"]
        "#,
    );
    assert_eq!(spec.replicas, 3);
    assert_eq!(
        spec.resources.limits,
        ResourceList {
            cpu: Some(Cpu(1500)),
            memory: Some(Memory(1 << 30)),
            pids: None
        }
    );
    assert_eq!(spec.resources.requests.memory, Some(Memory(512 << 20)));
    assert_eq!(spec.stop_grace, Duration::from_secs(90));
    assert_eq!(
        (spec.workdir.as_deref(), spec.user.as_deref()),
        (Some("/app"), Some("1000:1000"))
    );
    assert_eq!(spec.entrypoint, strings(&["/init", "--"]));
}

#[test]
fn container_settings_map_from_their_compose_keys() {
    let parsed = parse(
        r#"
        services:
          proxy:
            image: nginx
            cap_add: [CAP_NET_ADMIN, sys_time]
            cap_drop: [ALL]
            security_opt: ["seccomp:unconfined", "label=disable", no-new-privileges]
            read_only: true
            pull_policy: always
            stop_signal: SIGQUIT
            stop_grace_period: 20s
            pids_limit: 50
          agent:
            image: node-agent
            privileged: "true"
            pull_policy: never
            stop_signal: 3
            deploy: { resources: { limits: { pids: 200 } } }
        "#,
    );
    assert_eq!(parsed.warnings, Vec::<String>::new());
    let [proxy, agent] = parsed.services.as_slice() else {
        panic!("{parsed:#?}")
    };
    assert_eq!(proxy.cap_add, strings(&["NET_ADMIN", "SYS_TIME"]));
    assert_eq!(proxy.cap_drop, strings(&["ALL"]));
    assert_eq!(
        proxy.security_opt,
        strings(&["seccomp=unconfined", "label=disable", "no-new-privileges"]),
        "Docker's old `:` separator is stored as `=`"
    );
    assert!(proxy.read_only && !proxy.privileged);
    assert_eq!(proxy.pull, PullPolicy::Always);
    assert_eq!(proxy.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(proxy.stop_grace, Duration::from_secs(20));
    assert_eq!(proxy.resources.limits.pids, Some(50));
    assert!(agent.privileged && !agent.read_only);
    assert_eq!(agent.pull, PullPolicy::Never);
    assert_eq!(agent.stop_signal.as_deref(), Some("3"));
    assert_eq!(agent.resources.limits.pids, Some(200));
}

#[test]
fn pull_policy_words_map_to_outpost_policies() {
    let pull = |word: &str| {
        let text = format!("services:\n  web:\n    image: app\n    pull_policy: {word}\n");
        crate::parse_file("compose.yaml", &text, &BTreeMap::new(), None)
            .map(|p| (p.services[0].pull, p.warnings))
            .map_err(|e| e.to_string())
    };
    let quiet = |policy| Ok((policy, Vec::<String>::new()));
    assert_eq!(pull("always"), quiet(PullPolicy::Always));
    assert_eq!(pull("never"), quiet(PullPolicy::Never));
    assert_eq!(pull("missing"), quiet(PullPolicy::IfNotPresent));
    assert_eq!(pull("if_not_present"), quiet(PullPolicy::IfNotPresent));
    let warned = |message: &str| Ok((PullPolicy::IfNotPresent, strings(&[message])));
    assert_eq!(
        pull("build"),
        warned(
            r#"compose.yaml: service "web": pull_policy "build" is not supported yet (Outpost does not build images); the image is pulled if missing"#
        )
    );
    assert_eq!(
        pull("daily"),
        warned(
            r#"compose.yaml: service "web": pull_policy "daily" is not supported yet; the image is pulled if missing"#
        )
    );
    assert_eq!(
        pull("sometimes"),
        Err(
            r#"web.pull_policy: "sometimes" is not one of `always`, `never`, `missing`, `if_not_present`, `build`"#
                .to_string()
        )
    );
}

#[test]
fn unlimited_pids_are_no_limit() {
    for unlimited in ["-1", "0"] {
        let spec = only(&format!(
            "services:\n  web:\n    image: app\n    pids_limit: {unlimited}\n"
        ));
        assert_eq!(spec.resources.limits.pids, None, "pids_limit: {unlimited}");
    }
    check_err(
        "services:\n  web:\n    image: app\n    pids_limit: -2\n",
        &[],
        "web.pids_limit: -2 is out of range (expected 0 to 18446744073709551615)",
    );
}

#[test]
fn container_settings_are_validated_in_compose_too() {
    check_err(
        r#"
        services:
          web:
            image: app
            cap_add: [NET_ADMN]
            security_opt: [seccomp=relative.json]
            stop_signal: SIGNOPE
            read_only: maybe
        "#,
        &[],
        r#"
        web.read_only: expected true or false, got "maybe"
        web.cap_add[0]: "NET_ADMN" is not a Linux capability; did you mean "NET_ADMIN"?
        web.security_opt[0]: seccomp profile "relative.json" must be `unconfined`, `builtin`, or an absolute path to a JSON profile on the node
        web.stop_signal: "SIGNOPE" is not a signal (write a name like SIGTERM, or a number)
        "#,
    );
}

#[test]
fn docker_memory_and_go_durations_parse_as_docker_does() {
    let memory = |s| parse_docker_memory(s).map(|m| m.0);
    assert_eq!(memory("50M"), Some(50 << 20));
    assert_eq!(memory("1.5g"), Some(3 << 29));
    assert_eq!(memory("512k"), Some(512 << 10));
    assert_eq!(memory("2GiB"), Some(2 << 30));
    assert_eq!(memory("100"), Some(100));
    assert_eq!(memory("100b"), Some(100));
    assert_eq!(memory("lots"), None);
    assert_eq!(memory("5x"), None);
    let duration = |s| parse_go_duration(s);
    assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(duration("0"), Some(Duration::ZERO));
    assert_eq!(duration("10"), None);
    assert_eq!(duration(""), None);
    assert_eq!(duration("5d"), None);
}

#[test]
fn unsupported_keys_are_warned_about_never_dropped_silently() {
    let parsed = parse(
        r#"
        version: "3.9"
        name: shop
        x-defaults: &defaults
          restart: always
        services:
          db:
            <<: *defaults
            image: postgres
            networks: [back]
            labels: { tier: data }
            x-notes: accepted quietly
            deploy:
              placement: { constraints: [node.role == manager] }
            ports:
              - { target: 5432, mode: host }
        networks:
          back: {}
        volumes:
          pgdata: {}
        "#,
    );
    assert_eq!(
        parsed.services[0].restart.policy,
        RestartPolicy::Always,
        "anchors and merge keys work"
    );
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: key "version" is obsolete and was ignored"#,
            r#"compose.yaml: networks are not isolated yet: every service reaches every other by name, as on one flat network"#,
            r#"compose.yaml: key "volumes" is not supported yet and was ignored"#,
            r#"compose.yaml: service "db": key "labels" is not supported yet and was ignored"#,
            r#"compose.yaml: service "db": key "deploy.placement" is not supported yet and was ignored"#,
        ]
    );
}

#[test]
fn unknown_keys_and_missing_images_are_problems() {
    check_err(
        r#"
        servicez: {}
        services:
          web:
            build: .
            enviroment: [A=1]
          worker:
            command: ./work
            deploy: { replica: 2 }
        "#,
        &[],
        r#"
        compose.yaml.servicez: unknown key; did you mean `services`?
        web.enviroment: unknown key; did you mean `environment`?
        web.image: missing: an image is needed, building one (`build`) is not supported yet
        worker.image: missing: Compose services need an image here
        worker.deploy.replica: unknown key; did you mean `replicas`?
        "#,
    );
}

#[test]
fn compose_names_become_dns_labels() {
    let parsed = parse("services:\n  My_App.v2:\n    image: app\n");
    assert_eq!(parsed.services[0].name, "my-app-v2");
    assert_eq!(
        parsed.warnings,
        [
            r#"compose.yaml: service "My_App.v2": renamed to "my-app-v2" (Outpost service names are lowercase letters, digits and '-')"#
        ]
    );
    check_err(
        "services:\n  my_app: { image: a }\n  my-app: { image: b }\n",
        &[],
        r#"my-app.name: "my-app" is already the name of another service (service "my_app")"#,
    );
}

#[test]
fn validation_applies_to_compose_services_too() {
    check_err(
        r#"
        services:
          web:
            image: app
            ports: ["8080:80", "8080:81"]
            volumes: ["data:relative"]
            deploy: { replicas: 5000000, resources: { limits: { memory: 1m } } }
        "#,
        &[],
        r#"
        web.replicas: 5000000 is more than the maximum of 1000000
        web.ports[1].publish: port 8080 is already used by port "p80"
        web.volumes[0].target: "relative" must be an absolute path inside the container
        web.resources.limits.memory: 1Mi is below Docker's minimum memory limit of 6Mi
        "#,
    );
}

#[test]
fn parse_file_tells_the_formats_apart() {
    let empty = BTreeMap::new();
    let compose = crate::parse_file(
        "a.yaml",
        "name: shop\nservices:\n  web: { image: nginx }\n",
        &empty,
        None,
    );
    // As native, `services` would be an unknown key; as Compose, `web` is a docker service.
    let names = |parsed: Parsed| parsed.services.into_iter().map(|s| (s.name, s.driver));
    assert_eq!(
        compose.map(|p| names(p).collect::<Vec<_>>()),
        Ok(vec![("shop_web".to_string(), DriverKind::Docker)])
    );
    // As Compose, a file without `services` holds no service at all.
    let native = crate::parse_file("b.yaml", "name: web\ncommand: [./web]\n", &empty, None);
    assert_eq!(
        native.map(|p| names(p).collect::<Vec<_>>()),
        Ok(vec![("web".to_string(), DriverKind::Process)])
    );
}

#[test]
fn on_node_lost_comes_from_outposts_extension_key() {
    let spec = only(
        "services:\n  web:\n    image: web:1\n    x-outpost-on-node-lost: { replace_after: 10s }\n",
    );
    assert_eq!(
        spec.on_node_lost.replace_after(false),
        Some(Duration::from_secs(10))
    );
    let plain = only("services:\n  web:\n    image: web:1\n");
    assert_eq!(plain.on_node_lost, crate::OnNodeLost::default());
    let keep = only("services:\n  web:\n    image: web:1\n    x-outpost-on-node-lost: keep\n");
    assert_eq!(keep.on_node_lost.replace_after(true), None);
}

#[test]
fn deploy_update_and_rollback_config_map_to_update_and_rollback() {
    let api = only(
        r#"
        services:
          api:
            image: api:2
            deploy:
              update_config: { parallelism: 2, delay: 10s, order: stop-first, failure_action: pause, monitor: 30s, max_failure_ratio: 0.5 }
              rollback_config: { parallelism: 3 }
        "#,
    );
    assert_eq!(api.update.parallelism, 2);
    assert_eq!(api.update.delay, Duration::from_secs(10));
    assert_eq!(api.update.order, crate::UpdateOrder::StopFirst);
    assert_eq!(api.update.failure_action, crate::FailureAction::Pause);
    assert_eq!(api.update.monitor, Duration::from_secs(30));
    assert_eq!(
        api.update.max_failure_ratio,
        crate::Ratio::new(0.5).unwrap()
    );
    let rollback = crate::UpdateSpec {
        parallelism: 3,
        ..crate::UpdateSpec::rollback_default()
    };
    assert_eq!(api.rollback, rollback);
}

#[test]
fn secrets_and_configs_in_short_and_long_syntax_with_their_files() {
    let parsed = parse(
        "
        services:
          db:
            image: postgres
            environment:
              POSTGRES_PASSWORD_FILE: /run/secrets/db-password
            secrets:
              - db-password
              - source: api-key
                target: key.txt
                uid: '103'
                gid: '104'
                mode: 0440
            configs: [nginx]
        secrets:
          db-password:
            file: db/password.txt
          api-key:
            external: true
        configs:
          nginx:
            file: ./nginx.conf
        ",
    );
    let spec = &parsed.services[0];
    assert_eq!(spec.secrets[0], FileRef::named("db-password"));
    assert_eq!(
        spec.secrets[1],
        FileRef {
            source: "api-key".into(),
            target: Some("key.txt".into()),
            uid: Some(103),
            gid: Some(104),
            mode: Some(0o440),
        }
    );
    assert_eq!(spec.configs, vec![FileRef::named("nginx")]);
    let files: Vec<(ObjectKind, &str, &str)> = parsed
        .objects
        .iter()
        .map(|o| (o.kind, o.name.as_str(), o.file.as_str()))
        .collect();
    assert_eq!(
        files,
        vec![
            (ObjectKind::Secret, "db-password", "db/password.txt"),
            (ObjectKind::Config, "nginx", "./nginx.conf"),
        ]
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

#[test]
fn a_secret_not_defined_at_the_top_level_is_refused() {
    check_err(
        "
        services:
          db:
            image: postgres
            secrets: [db-password, other]
        secrets:
          db-password:
            file: pw.txt
          broken: {}
        ",
        &[],
        "
        compose.yaml.secrets.broken: a secret needs `file: PATH` (read at deploy), or `external: true` for one made with `outpost secret create`
        db.secrets[1]: secret \"other\" is not defined: add it to the top-level `secrets:` with `file:` (or `external: true` for one made with `outpost secret create`)
        ",
    );
}

/// Parses `text` as `outpost deploy` does, with `-p` and the file's directory.
fn parse_in(
    text: &str,
    vars: &[(&str, &str)],
    project: Option<&str>,
    directory: Option<&str>,
) -> Result<Parsed, SpecError> {
    let stacking = crate::Stacking {
        project: project.map(str::to_string),
        directory: directory.map(str::to_string),
    };
    crate::parse_file_in("compose.yaml", &dedent(text), &env(vars), None, &stacking)
}

fn stacked(parsed: Result<Parsed, SpecError>) -> Vec<(String, Option<String>, String)> {
    let parsed = parsed.unwrap_or_else(|e| panic!("unexpected problems:\n{e}"));
    (parsed.services.into_iter())
        .map(|s| (s.name.clone(), s.stack.clone(), s.short_name().to_string()))
        .collect()
}

#[test]
fn a_compose_file_is_a_stack_named_as_docker_compose_names_projects() {
    let named = "name: Shop.V2\nservices:\n  web: { image: nginx }\n";
    let unnamed = "services:\n  web: { image: nginx }\n";
    let service = |name: &str, stack: &str| {
        vec![(name.to_string(), Some(stack.to_string()), "web".to_string())]
    };
    // `-p` first, then COMPOSE_PROJECT_NAME, then `name:` (normalised), then the directory.
    assert_eq!(
        stacked(parse_in(
            named,
            &[("COMPOSE_PROJECT_NAME", "env")],
            Some("cli"),
            Some("d")
        )),
        service("cli_web", "cli")
    );
    assert_eq!(
        stacked(parse_in(
            named,
            &[("COMPOSE_PROJECT_NAME", "env")],
            None,
            Some("d")
        )),
        service("env_web", "env")
    );
    assert_eq!(
        stacked(parse_in(named, &[], None, Some("d"))),
        service("shopv2_web", "shopv2")
    );
    assert_eq!(
        stacked(parse_in(unnamed, &[], None, Some("My Project"))),
        service("myproject_web", "myproject")
    );
    // `name:` is interpolated like every other value.
    assert_eq!(
        stacked(parse_in(
            "name: ${STACK}\nservices:\n  web: { image: nginx }\n",
            &[("STACK", "blue")],
            None,
            Some("d")
        )),
        service("blue_web", "blue")
    );
}

#[test]
fn a_stack_name_that_cannot_be_one_is_refused_with_the_way_out() {
    let unnamed = "services:\n  web: { image: nginx }\n";
    let err = parse_in(unnamed, &[], Some("My App"), Some("d")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "-p: \"My App\" is not a valid stack name: use lowercase letters, digits, '-' and '_', \
         starting with a letter or digit (as `docker compose -p` does)"
    );
    let err = parse_in(unnamed, &[], None, Some("ÄÖ")).unwrap_err();
    assert!(
        err.to_string().contains("\"ÄÖ\" makes no stack name")
            && err.to_string().contains("-p NAME"),
        "{err}"
    );
    let err = parse_in(unnamed, &[("COMPOSE_PROJECT_NAME", "Bad")], None, Some("d")).unwrap_err();
    assert!(
        err.to_string().starts_with("COMPOSE_PROJECT_NAME: "),
        "{err}"
    );
}

#[test]
fn depends_on_in_list_and_map_form_names_services_of_the_stack() {
    let parsed = parse_in(
        r#"
        services:
          proxy:
            image: nginx
            depends_on: [api_server]
          api_server:
            image: api
            depends_on:
              db: { condition: service_healthy, restart: true }
              migrate: { condition: service_completed_successfully }
          db: { image: postgres }
          migrate: { image: api }
        "#,
        &[],
        None,
        Some("shop"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let deps = |name: &str| {
        let spec = parsed.services.iter().find(|s| s.name == name).unwrap();
        spec.depends_on.clone().into_iter().collect::<Vec<_>>()
    };
    assert_eq!(
        deps("shop_proxy"),
        [("shop_api-server".to_string(), Condition::ServiceStarted)]
    );
    assert_eq!(
        deps("shop_api-server"),
        [
            ("shop_db".to_string(), Condition::ServiceHealthy),
            (
                "shop_migrate".to_string(),
                Condition::ServiceCompletedSuccessfully
            ),
        ]
    );
    // A job waited on to complete does not restart always, which would never let it complete.
    let migrate = parsed
        .services
        .iter()
        .find(|s| s.name == "shop_migrate")
        .unwrap();
    assert_eq!(migrate.restart.policy, RestartPolicy::OnFailure);
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.contains(r#"key "depends_on.db.restart" is not supported yet"#)),
        "{:?}",
        parsed.warnings
    );
    assert!(
        (parsed.warnings.iter())
            .any(|w| w.contains(r#"service "migrate" restarts on failure only"#)),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn depends_on_an_undefined_service_a_bad_condition_or_a_cycle_is_refused() {
    check_err(
        r#"
        services:
          web:
            image: nginx
            depends_on: { cache: { condition: service_ready } }
          api:
            image: api
            depends_on: [db]
          db:
            image: postgres
            depends_on: [api]
        "#,
        &[],
        r#"
        web.depends_on.cache.condition: "service_ready" is not one of `service_started`, `service_healthy`, `service_completed_successfully`
        api.depends_on: a dependency cycle: api → db → api; no service of it could ever start
        "#,
    );
    check_err(
        "services:\n  web:\n    image: nginx\n    depends_on: [cache]\n",
        &[],
        r#"web.depends_on[0]: service "cache" is not defined in this file"#,
    );
}

#[test]
fn completion_of_a_service_that_chose_to_restart_always_is_refused() {
    check_err(
        r#"
        services:
          app:
            image: app
            depends_on: { migrate: { condition: service_completed_successfully } }
          migrate: { image: app, restart: always }
        "#,
        &[],
        r#"
        app.depends_on.migrate: app waits for "migrate" to complete, but "migrate" restarts always and so never completes: give it `restart: on-failure` (or `no`)
        "#,
    );
}

#[test]
fn exposed_ports_are_ports_answered_by_name_and_published_nowhere() {
    let spec = only(
        r#"
        services:
          db:
            image: postgres
            expose: ["5432", 9187, "53/udp"]
            ports: ["15432:5432"]
        "#,
    );
    let summary: Vec<String> = (spec.ports.iter())
        .map(|p| {
            format!(
                "{} {:?} {:?} {:?}",
                p.name, p.container_port, p.host_port, p.publish
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "p5432 Some(5432) None Some(15432)",
            "p9187 Some(9187) None None",
            "p53-udp Some(53) None None",
        ],
        "5432 is published and exposed: one port"
    );
}

#[test]
fn a_pull_secret_is_a_secret_the_file_defines() {
    let parsed = parse(
        "
        services:
          web:
            image: registry.lan:5000/team/web:1
            x-outpost-pull-secret: registry
        secrets:
          registry:
            file: ~/.docker/config.json
        ",
    );
    assert_eq!(parsed.services[0].pull_secret.as_deref(), Some("registry"));
    assert_eq!(parsed.objects[0].name, "registry");
    check_err(
        "
        services:
          web:
            image: registry.lan:5000/team/web:1
            x-outpost-pull-secret: registry
        ",
        &[],
        "
        web.x-outpost-pull-secret: secret \"registry\" is not defined: add it to the top-level `secrets:` with `file:` (a Docker config, such as ~/.docker/config.json) or `external: true`
        ",
    );
}
