//! The native format, as specifications: what a file says, and what a user sees when it is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::quantity::{Cpu, Memory};
use crate::types::{FileRef, ObjectKind};

/// Strips the indentation the test source adds, so YAML can be written indented in place.
pub(crate) fn dedent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().skip_while(|l| l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min();
    let indent = indent.unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string() + "\n")
        .collect()
}

/// A native file through the production entry point, [`crate::parse_file`].
fn parse_native(source: &str, text: &str) -> Result<Vec<ServiceSpec>, SpecError> {
    crate::parse_file(source, text, &BTreeMap::new(), None).map(|parsed| parsed.services)
}

fn parse(text: &str) -> Vec<ServiceSpec> {
    parse_native("web.yaml", &dedent(text)).unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

/// Parses `text` and asserts that it fails with exactly `expect` (one `path: message` per line).
fn check_err(text: &str, expect: &str) {
    match parse_native("web.yaml", &dedent(text)) {
        Ok(specs) => panic!("expected problems, got {specs:#?}"),
        Err(e) => assert_eq!(e.to_string(), dedent(expect).trim_end()),
    }
}

const EXAMPLE: &str = r#"
    name: web
    replicas: 3
    driver: process
    command: ["./target/release/demo-app", "--port", "${PORT}"]
    env: { GREETING: hello }
    ports:
      - name: http
    restart: { policy: always, initial_backoff: 100ms, max_backoff: 30s }
    liveness:  { http: { path: /healthz, port: http }, initial_delay: 0s, period: 1s, timeout: 500ms, failure_threshold: 3 }
    readiness: { tcp: { port: http }, period: 500ms, success_threshold: 1 }
    resources: { requests: { cpu: 100m, memory: 64Mi }, limits: { memory: 128Mi } }
    stop_grace: 5s
"#;

#[test]
fn the_documented_example_parses_to_the_expected_spec() {
    let mut want = ServiceSpec::process("web", &["./target/release/demo-app", "--port", "${PORT}"]);
    want.replicas = 3;
    want.env = BTreeMap::from([("GREETING".to_string(), "hello".to_string())]);
    want.ports = vec![PortSpec::named("http")];
    want.liveness = Some(ProbeSpec {
        timeout: Duration::from_millis(500),
        ..ProbeSpec::new(ProbeAction::Http {
            path: "/healthz".into(),
            port: PortRef::Name("http".into()),
        })
    });
    want.readiness = Some(ProbeSpec {
        period: Duration::from_millis(500),
        ..ProbeSpec::new(ProbeAction::Tcp {
            port: PortRef::Name("http".into()),
        })
    });
    want.resources.requests = ResourceList {
        cpu: Some(Cpu(100)),
        memory: Some(Memory(64 << 20)),
        pids: None,
    };
    want.resources.limits.memory = Some(Memory(128 << 20));
    assert_eq!(parse(EXAMPLE), vec![want]);
}

#[test]
fn parsed_specs_survive_the_json_wire_form_and_still_validate() {
    let spec = parse(EXAMPLE).remove(0);
    let json = serde_json::to_string(&spec).unwrap();
    let back: ServiceSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    assert_eq!(crate::validate_all(&[back]), Ok(()));
}

#[test]
fn a_minimal_service_gets_every_default() {
    let specs = parse("name: api\ncommand: ./api\n");
    assert_eq!(specs, vec![ServiceSpec::process("api", &["./api"])]);
    // Defaults stay off the wire, so a reader that predates a field still reads the spec.
    let json = serde_json::to_value(&specs[0]).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "command",
            "driver",
            "name",
            "replicas",
            "resources",
            "restart",
            "stop_grace"
        ]
    );
}

#[test]
fn a_docker_spec_with_every_container_setting_survives_the_wire_form() {
    let spec = parse(
        r#"
        name: proxy
        image: nginx:1.27
        ports: [{ name: http, container_port: 80 }]
        stop_signal: quit
        pull: always
        read_only: true
        cap_add: [cap_net_admin, NET_RAW]
        cap_drop: [ALL]
        security_opt: [no-new-privileges, apparmor=outpost-nginx, "seccomp=/etc/outpost/nginx.json", "label=type:svirt_apache_t"]
        resources: { requests: { pids: 10 }, limits: { pids: 100 } }
        "#,
    )
    .remove(0);
    assert_eq!(spec.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(spec.pull, PullPolicy::Always);
    assert!(spec.read_only && !spec.privileged);
    assert_eq!(
        spec.cap_add,
        ["NET_ADMIN", "NET_RAW"],
        "stored without CAP_"
    );
    assert_eq!(spec.cap_drop, ["ALL"]);
    assert_eq!(
        spec.security_opt,
        [
            "no-new-privileges",
            "apparmor=outpost-nginx",
            "seccomp=/etc/outpost/nginx.json",
            "label=type:svirt_apache_t"
        ]
    );
    assert_eq!(
        (spec.resources.requests.pids, spec.resources.limits.pids),
        (Some(10), Some(100))
    );
    let json = serde_json::to_string(&spec).unwrap();
    let back: ServiceSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    assert_eq!(crate::validate_all(&[back]), Ok(()));
    let privileged = parse("name: agent\nimage: node-agent\nprivileged: true\npull: never\n");
    assert_eq!(
        (privileged[0].privileged, privileged[0].pull),
        (true, PullPolicy::Never)
    );
}

#[test]
fn process_services_cannot_use_container_settings() {
    check_err(
        r#"
        name: web
        command: [./web]
        ports: [http]
        stop_signal: SIGINT
        pull: never
        read_only: true
        cap_add: [NET_ADMIN]
        cap_drop: [ALL]
        security_opt: [no-new-privileges]
        privileged: true
        "#,
        r#"
        web.read_only: only docker services can have a read-only root filesystem
        web.cap_add: only docker services can add capabilities
        web.cap_drop: only docker services can drop capabilities
        web.security_opt: only docker services can take security options
        web.privileged: only docker services can be privileged
        web.pull: only docker services can pull images
        web.stop_signal: only docker services can choose a stop signal (processes get SIGTERM)
        "#,
    );
}

#[test]
fn container_settings_are_checked() {
    check_err(
        r#"
        name: db
        image: postgres
        ports: [pg, { name: metrics, container_port: 9187 }]
        stop_signal: SIGTERN
        cap_add: [NET_ADMN, "net-admin", SYS_TIME]
        cap_drop: [sys_time]
        security_opt: ["seccomp:unconfined", "seccomp=profile.json", "selinux=on", apparmor, "no-new-privileges=yes"]
        pull: sometimes
        resources: { requests: { pids: 0 } }
        "#,
        r#"
        db.pull: "sometimes" is not one of `if-not-present`, `always`, `never`
        db.ports[0].container_port: a docker port needs container_port (the port the container listens on)
        db.cap_add[0]: "NET_ADMN" is not a Linux capability; did you mean "NET_ADMIN"?
        db.cap_add[1]: "NET-ADMIN" is not a Linux capability; did you mean "NET_ADMIN"?
        db.cap_drop[0]: "SYS_TIME" is also in cap_add; list it in one of them
        db.security_opt[0]: "seccomp:unconfined" should be written "seccomp=unconfined"
        db.security_opt[1]: seccomp profile "profile.json" must be `unconfined`, `builtin`, or an absolute path to a JSON profile on the node
        db.security_opt[2]: "selinux" is not a security option (use `apparmor`, `seccomp`, `label`, `no-new-privileges`)
        db.security_opt[3]: "apparmor" is not key=value (like "apparmor=my-profile")
        db.security_opt[4]: "no-new-privileges=yes": no-new-privileges is true or false
        db.stop_signal: "SIGTERN" is not a signal; did you mean "SIGTERM"?
        db.resources.requests.pids: must be more than zero
        "#,
    );
    check_err(
        r#"
        name: db
        image: postgres
        privileged: true
        cap_drop: [NET_RAW]
        stop_signal: 99
        "#,
        r#"
        db.cap_drop: has no effect: a privileged container keeps every capability
        db.stop_signal: "99" is not a signal number (use 1 to 64)
        "#,
    );
}

#[test]
fn json_specs_must_use_the_stored_forms() {
    let mut spec = ServiceSpec::process("box", &[]);
    spec.driver = DriverKind::Docker;
    spec.image = Some("app".into());
    spec.cap_add = vec!["CAP_NET_ADMIN".into()];
    spec.stop_signal = Some("TERM".into());
    let problems = crate::validate_all(&[spec]).unwrap_err().to_string();
    assert_eq!(
        problems,
        dedent(
            r#"
            box.cap_add[0]: "CAP_NET_ADMIN" should be written "NET_ADMIN" (upper case, without CAP_)
            box.stop_signal: "TERM" should be written "SIGTERM"
            "#
        )
        .trim_end()
    );
}

#[test]
fn an_image_implies_the_docker_driver() {
    let spec = parse("name: cache\nimage: redis:7\n").remove(0);
    assert_eq!(
        (spec.driver, spec.image.as_deref()),
        (DriverKind::Docker, Some("redis:7"))
    );
}

#[test]
fn every_optional_form_is_accepted() {
    let spec = parse(
        r#"
        name: db
        image: postgres:16
        entrypoint: docker-entrypoint.sh
        command: postgres -c "shared_buffers=256MB"
        workdir: /var/lib/postgresql
        user: 999
        ports: [{ name: pg, container_port: 5432 }, { name: metrics, container_port: 9187, host_port: 19187, protocol: udp, host_ip: 127.0.0.1 }]
        volumes: ["./data:/var/lib/postgresql/data", "conf:/etc/pg:ro", { source: /srv/x, target: /x, read_only: true }]
        restart: on-failure
        liveness: { exec: [pg_isready, -U, postgres], period: 10s }
        readiness: { http: { port: 9187 } }
        resources: { limits: { cpu: 1.5, memory: 1Gi, pids: 200 } }
        "#,
    )
    .remove(0);
    assert_eq!(spec.entrypoint, ["docker-entrypoint.sh"]);
    assert_eq!(spec.command, ["postgres", "-c", "shared_buffers=256MB"]);
    assert_eq!(
        (spec.workdir.as_deref(), spec.user.as_deref()),
        (Some("/var/lib/postgresql"), Some("999"))
    );
    let metrics = PortSpec {
        container_port: Some(9187),
        host_port: Some(19187),
        protocol: Protocol::Udp,
        host_ip: Some("127.0.0.1".into()),
        ..PortSpec::named("metrics")
    };
    let pg = PortSpec {
        container_port: Some(5432),
        ..PortSpec::named("pg")
    };
    assert_eq!(spec.ports, vec![pg, metrics]);
    let volume = |source: &str, target: &str, read_only| VolumeSpec {
        source: source.into(),
        target: target.into(),
        read_only,
    };
    assert_eq!(
        spec.volumes,
        vec![
            volume("./data", "/var/lib/postgresql/data", false),
            volume("conf", "/etc/pg", true),
            volume("/srv/x", "/x", true)
        ]
    );
    assert_eq!(
        spec.restart,
        RestartSpec {
            policy: RestartPolicy::OnFailure,
            ..RestartSpec::default()
        }
    );
    let exec = ProbeAction::Exec {
        command: vec!["pg_isready".into(), "-U".into(), "postgres".into()],
    };
    assert_eq!(
        spec.liveness,
        Some(ProbeSpec {
            period: Duration::from_secs(10),
            ..ProbeSpec::new(exec)
        })
    );
    let http = ProbeAction::Http {
        path: "/".into(),
        port: PortRef::Number(9187),
    };
    assert_eq!(spec.readiness, Some(ProbeSpec::new(http)));
    let limits = ResourceList {
        cpu: Some(Cpu(1500)),
        memory: Some(Memory(1 << 30)),
        pids: Some(200),
    };
    assert_eq!(spec.resources.limits, limits);
}

#[test]
fn a_file_holds_one_service_per_document() {
    let specs = parse(
        "
        name: web
        command: [./web]
        ---
        # a comment-only preamble is fine
        name: worker
        replicas: 2
        command: [./worker]
        ",
    );
    let names: Vec<(&str, u32)> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.replicas))
        .collect();
    assert_eq!(names, [("web", 1), ("worker", 2)]);
}

#[test]
fn bad_values_name_their_field() {
    check_err(
        r#"
        name: web
        replicas: three
        command: [./web]
        liveness: { tcp: { port: 8080 }, period: 1x }
        resources: { limits: { cpu: lots, memory: 64MB } }
        restart: { policy: sometimes }
        "#,
        // Problems come in the order fields are documented, not the order they were written.
        r#"
        web.replicas: expected a whole number, got "three"
        web.restart.policy: "sometimes" is not one of `always`, `on-failure`, `never`
        web.liveness.period: "1x" is not a duration (write a number and a unit, like "500ms", "10s" or "1m")
        web.resources.limits.cpu: "lots" is not a CPU quantity (use cores like "0.5" or millicores like "500m")
        web.resources.limits.memory: "64MB" is not a memory quantity (use bytes or a suffix like "64Mi", "1G")
        "#,
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    check_err(
        r#"
        name: web
        command: { run: ./web }
        env: [A=1]
        ports: http
        replicas: -1
        stop_grace: 5
        "#,
        r#"
        web.replicas: -1 is out of range (expected 0 to 4294967295)
        web.command: expected a list of strings, got a mapping
        web.env: expected a mapping, got a list
        web.ports: expected a list, got "http"
        web.stop_grace: "5" is not a duration (write a number and a unit, like "500ms", "10s" or "1m")
        "#,
    );
}

#[test]
fn unknown_keys_suggest_the_closest_known_one() {
    check_err(
        r#"
        name: web
        command: [./web]
        readyness: { tcp: { port: 80 } }
        liveness: { tcp: { port: 80 }, perod: 1s }
        flavour: spicy
        "#,
        r#"
        web.readyness: unknown key; did you mean `readiness`?
        web.flavour: unknown key; expected one of `name`, `replicas`, `driver`, `image`, `command`, `entrypoint`, `env`, `workdir`, `user`, `ports`, `volumes`, `restart`, `liveness`, `readiness`, `resources`, `stop_grace`, `stop_signal`, `pull`, `read_only`, `cap_add`, `cap_drop`, `security_opt`, `privileged`, `on_node_lost`, `update`, `rollback`, `revision_history`, `secrets`, `configs`, `stack`, `depends_on`, `load_balancer`, `pull_secret`
        web.liveness.perod: unknown key; did you mean `period`?
        "#,
    );
}

#[test]
fn services_need_a_valid_unique_name_and_a_way_to_run() {
    check_err(
        r#"
        command: [./a]
        ---
        name: Web_1
        command: [./b]
        ---
        name: api
        ---
        name: api
        command: [./c]
        image: api:1
        "#,
        r#"
        web.yaml[doc 1].name: missing
        Web_1.name: "Web_1" is not a valid name: use lowercase letters, digits and '-', starting with a letter and not ending with '-'
        api.command: a process service needs a command
        api.name: "api" is already the name of another service (doc 3)
        "#,
    );
}

#[test]
fn driver_rules_catch_mixed_up_services() {
    check_err(
        r#"
        name: web
        driver: process
        image: nginx
        command: [./web]
        entrypoint: [/bin/sh]
        volumes: ["./x:/x"]
        ports: [{ name: http, container_port: 80, host_ip: 127.0.0.1 }]
        ---
        name: box
        driver: docker
        workdir: app
        resources: { limits: { memory: 1Mi } }
        "#,
        r#"
        web.image: a process service cannot have an image (set `driver: docker` to run it as a container)
        web.entrypoint: only containers have an entrypoint; put the program first in `command`
        web.volumes: volumes need the docker driver
        web.ports[0].host_ip: only containers can be published on one address
        box.image: a docker service needs an image
        box.workdir: "app" must be an absolute path inside the container
        box.resources.limits.memory: 1Mi is below Docker's minimum memory limit of 6Mi
        "#,
    );
}

#[test]
fn ports_and_probes_must_agree() {
    check_err(
        r#"
        name: web
        command: [./web, --admin, "${OUTPOST_PORT_ADMIN}", "${OUTPOST_SHARD}", "${HOME}"]
        ports: [http, http, { name: Metrics, host_port: 0 }]
        liveness: { http: { path: healthz, port: admin } }
        readiness: { tcp: { port: http }, exec: [true] }
        "#,
        r#"
        web.readiness: has both `tcp` and `exec`; a probe makes one check
        web.ports[1].name: "http" is declared twice
        web.ports[2].name: "Metrics" is not a valid name: use lowercase letters, digits and '-', starting with a letter and not ending with '-'
        web.ports[2].host_port: 0 is not a port number (use 1 to 65535)
        web.liveness.http.path: "healthz" must start with '/'
        web.liveness.http.port: no port named "admin" (declared: http, http, Metrics)
        web.command[2]: "${OUTPOST_PORT_ADMIN}" refers to no declared port (ports give OUTPOST_PORT_HTTP, OUTPOST_PORT_HTTP, OUTPOST_PORT_METRICS)
        web.command[3]: "${OUTPOST_SHARD}" is not a variable Outpost sets (it sets PORT, OUTPOST_PORT_<NAME>, OUTPOST_TASK_ID, OUTPOST_SERVICE, OUTPOST_SLOT, OUTPOST_NODE)
        web.command[4]: "${HOME}" is not set: it is neither in `env` nor one of the variables Outpost sets (PORT, OUTPOST_PORT_<NAME>, OUTPOST_TASK_ID, OUTPOST_SERVICE, OUTPOST_SLOT, OUTPOST_NODE); add it to env, or write $HOME without braces for a shell to expand
        "#,
    );
}

#[test]
fn variables_may_name_ports_env_keys_and_task_facts() {
    let specs = parse(
        r#"
        name: web
        command: [./web, "--listen=:${PORT}", "--admin=${OUTPOST_PORT_ADMIN_UI}", "${OUTPOST_TASK_ID}", "${GREETING}!"]
        env: { GREETING: "hi from ${OUTPOST_NODE}", SHELL_VAR: "$HOME ${HOME:-/root}" }
        ports: [http, admin-ui]
        "#,
    );
    assert_eq!(specs.len(), 1);
    check_err(
        "name: web\ncommand: [./web, '${PORT}']\n",
        r#"web.command[1]: "${PORT}" is only set for services that declare a port (add `ports: [http]`)"#,
    );
}

#[test]
fn timings_and_limits_must_make_sense() {
    check_err(
        r#"
        name: web
        command: [./web]
        replicas: 5000000
        env: { 1BAD: x }
        restart: { initial_backoff: 1m, max_backoff: 30s }
        liveness: { exec: [], period: 0s, timeout: 0s, failure_threshold: 0 }
        resources: { requests: { cpu: "2", memory: 1Gi }, limits: { cpu: 500m, memory: 512Mi, pids: 0 } }
        volumes: []
        "#,
        r#"
        web.replicas: 5000000 is more than the maximum of 1000000
        web.env.1BAD: is not a valid variable name (use letters, digits and '_', not starting with a digit)
        web.restart.initial_backoff: 1m is longer than max_backoff (30s)
        web.liveness.period: 0s is shorter than the minimum of 100ms
        web.liveness.timeout: 0s is shorter than the minimum of 10ms
        web.liveness.failure_threshold: 0 is not between 1 and 100
        web.liveness.exec: must name a command to run
        web.resources.requests.cpu: 2 is more than the limit (500m)
        web.resources.requests.memory: 1Gi is more than the limit (512Mi)
        web.resources.limits.pids: must be more than zero
        "#,
    );
}

#[test]
fn volumes_are_checked() {
    check_err(
        r#"
        name: db
        image: postgres
        volumes: ["data", "a:/x:rx", { source: d }, "ok:/ok"]
        "#,
        r#"
        db.volumes[0]: expected "source:target" or "source:target:ro", got "data"
        db.volumes[1]: "rx" is not a mount mode (use `ro` or `rw`)
        db.volumes[2].target: missing
        "#,
    );
    check_err(
        r#"
        name: db
        image: postgres
        volumes: ["~/d:/y", "b:relative", "c:/y", "/abs:/z"]
        "#,
        r#"
        db.volumes[0].source: "~/d" is neither a host path (starting with / or .) nor a volume name
        db.volumes[1].target: "relative" must be an absolute path inside the container
        db.volumes[2].target: "/y" is mounted twice
        "#,
    );
}

#[test]
fn a_field_that_failed_to_decode_causes_no_second_problem() {
    // The bad port leaves `ports` undecoded; the probe's and the command's references to it
    // are not reported as dangling.
    check_err(
        r#"
        name: web
        command: [./web, "${OUTPOST_PORT_HTTP}"]
        ports: [http, { name: admin, host_port: lots }]
        liveness: { tcp: { port: admin } }
        "#,
        r#"web.ports[1].host_port: expected a whole number, got "lots""#,
    );
}

#[test]
fn probes_need_exactly_one_check() {
    check_err(
        "name: web\ncommand: [./web]\nliveness: { period: 1s }\nreadiness: { http: { path: / } }\n",
        "web.liveness: needs a check: one of `http`, `tcp` or `exec`\nweb.readiness.http.port: missing",
    );
}

#[test]
fn documents_that_are_not_services_are_reported_by_position() {
    check_err(
        "- just\n- a list\n",
        r#"web.yaml[doc 1]: expected a mapping of service fields, got a list"#,
    );
    check_err("", "web.yaml: no services: the file has no YAML documents");
}

#[test]
fn yaml_syntax_errors_give_file_line_and_column() {
    check_err(
        "name: web\ncommand: [./web\nreplicas: 2\n",
        "web.yaml:3:9: illegal placement of ':' indicator",
    );
    check_err(
        "name: web\nname: again\n",
        r#"web.yaml:2:1: key "name" appears twice in the same mapping"#,
    );
}

mod never_panics {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// Keys the decoders know, plus a few they do not, so generated documents reach deep code.
    const KEYS: &[&str] = &[
        "name",
        "replicas",
        "driver",
        "image",
        "command",
        "entrypoint",
        "env",
        "workdir",
        "user",
        "ports",
        "volumes",
        "restart",
        "liveness",
        "readiness",
        "resources",
        "stop_grace",
        "stop_signal",
        "pull",
        "read_only",
        "cap_add",
        "cap_drop",
        "security_opt",
        "privileged",
        "pull_policy",
        "pids_limit",
        "http",
        "tcp",
        "exec",
        "port",
        "path",
        "period",
        "timeout",
        "policy",
        "initial_backoff",
        "requests",
        "limits",
        "cpu",
        "memory",
        "pids",
        "services",
        "web",
        "environment",
        "healthcheck",
        "test",
        "deploy",
        "restart_policy",
        "delay",
        "cpus",
        "target",
        "published",
        "type",
        "source",
        "x-ext",
        "build",
        "bogus",
    ];
    const WORDS: &[&str] = &[
        "",
        "1s",
        "0s",
        "500ms",
        "1m30s",
        "http",
        "web",
        "process",
        "docker",
        "always",
        "no",
        "on-failure:3",
        "${PORT}",
        "${X:-d}",
        "${Y:?e}",
        "$$",
        "$",
        "8080:80",
        "[::1]:1:2/udp",
        "1-2",
        "./a:/b:ro",
        "/x",
        "CMD",
        "CMD-SHELL",
        "NONE",
        "100m",
        "64Mi",
        "50M",
        "-1",
        "0.5",
        "KEY=v",
        "KEY",
        "'unclosed",
        "a b \"c d\"",
        "bind",
        "tmpfs",
        "NET_ADMIN",
        "cap_sys_time",
        "ALL",
        "seccomp:unconfined",
        "apparmor=x",
        "no-new-privileges",
        "SIGRTMIN+3",
        "term",
        "if-not-present",
        "missing",
        "every_2h",
    ];

    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..70_000).prop_map(Value::from),
            prop::sample::select(WORDS).prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(
                    |entries| Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect()
                    )
                ),
            ]
        })
    }

    fn all_parsers(text: &str) {
        let env = BTreeMap::from([("X".to_string(), "x".to_string())]);
        // Both decoders on every text, not only the one `parse_file` would pick for it.
        if let Ok(docs) = crate::yaml::load("f.yaml", text) {
            let _ = from_docs("f.yaml", &docs, None);
            let _ = crate::compose::from_docs(
                "f.yaml",
                &docs,
                &env,
                Some("Y=1\n"),
                &crate::Stacking::default(),
            );
        }
        let _ = crate::parse_file("f.yaml", text, &env, None);
    }

    proptest! {
        #[test]
        fn on_arbitrary_text(text in ".{0,200}") {
            all_parsers(&text);
        }

        #[test]
        fn on_yaml_like_text(text in "[a-z_:{}\\[\\],'\"#&*!|>0-9. $-]{0,120}(\n[ a-z_:{}\\[\\],'\"#&*!|>0-9.$-]{0,60}){0,6}") {
            all_parsers(&text);
        }

        /// JSON is YAML: random documents built from known keys exercise every decoder.
        #[test]
        fn on_documents_of_known_keys(doc in tree(), services in tree()) {
            all_parsers(&doc.to_string());
            all_parsers(&serde_json::json!({ "services": { "web": services } }).to_string());
        }

        #[test]
        fn on_a_valid_spec_with_damage(at in 0usize..600, junk in "[\n :\\[{}\"'$-]{1,4}") {
            let text = dedent(EXAMPLE);
            let at = (0..=at.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            all_parsers(&format!("{}{junk}{}", &text[..at], &text[at..]));
        }
    }
}

#[test]
fn on_node_lost_defaults_takes_keep_or_either_wait() {
    let base = "name: web\ncommand: [app]\n";
    let specs = parse(base);
    assert_eq!(specs[0].on_node_lost, OnNodeLost::default());
    assert_eq!(
        specs[0].on_node_lost.replace_after(false),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        specs[0].on_node_lost.replace_after(true),
        Some(Duration::from_secs(300))
    );
    let keep = parse(&format!("{base}on_node_lost: keep\n"));
    assert_eq!(keep[0].on_node_lost, OnNodeLost::Keep(KeepTasks::Keep));
    assert_eq!(keep[0].on_node_lost.replace_after(false), None);
    let quick = parse(&format!("{base}on_node_lost: {{ replace_after: 500ms }}\n"));
    assert_eq!(
        quick[0].on_node_lost,
        OnNodeLost::Replace(ReplaceAfter {
            replace_after: Duration::from_millis(500),
            unreachable_after: Duration::from_secs(300),
        })
    );
}

#[test]
fn a_wrong_on_node_lost_is_refused_at_its_field() {
    check_err(
        r#"
        name: web
        command: [app]
        on_node_lost: kep
        "#,
        r#"web.on_node_lost: "kep" is not one of `keep`"#,
    );
    check_err(
        r#"
        name: web
        command: [app]
        on_node_lost: { replace_afte: 1s, unreachable_after: 100y }
        "#,
        r#"
        web.on_node_lost.replace_afte: unknown key; did you mean `replace_after`?
        web.on_node_lost.unreachable_after: 100years is longer than the maximum of 30days
        "#,
    );
    check_err(
        r#"
        name: web
        command: [app]
        on_node_lost: 3
        "#,
        "web.on_node_lost: expected `keep`, or a mapping of `replace_after` and \
         `unreachable_after`, got 3",
    );
}

#[test]
fn a_spec_stored_before_on_node_lost_decodes_to_the_default() {
    let mut spec = ServiceSpec::process("web", &["app"]);
    let json = serde_json::to_value(&spec).unwrap();
    assert!(
        json.get("on_node_lost").is_none(),
        "the default is not written"
    );
    let back: ServiceSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
    spec.on_node_lost = OnNodeLost::Keep(KeepTasks::Keep);
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["on_node_lost"], "keep");
    assert_eq!(serde_json::from_value::<ServiceSpec>(json).unwrap(), spec);
    spec.on_node_lost = OnNodeLost::Replace(ReplaceAfter {
        replace_after: Duration::from_secs(1),
        unreachable_after: Duration::from_secs(60),
    });
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["on_node_lost"],
        serde_json::json!({"replace_after": "1s", "unreachable_after": "1m"})
    );
    assert_eq!(serde_json::from_value::<ServiceSpec>(json).unwrap(), spec);
    let wrong = serde_json::from_str::<OnNodeLost>(r#""kep""#).unwrap_err();
    assert!(
        wrong
            .to_string()
            .contains("expected `keep`, or a mapping of `replace_after`"),
        "{wrong}"
    );
    let typo = serde_json::from_str::<OnNodeLost>(r#"{"replace_afte":"1s"}"#).unwrap_err();
    assert!(
        typo.to_string().contains("unknown field `replace_afte`"),
        "{typo}"
    );
}

#[test]
fn update_and_rollback_settings_default_like_swarm_and_read_every_field() {
    let spec = &parse(
        r#"
        name: web
        command: [app]
        update: { parallelism: 2, delay: 1s, order: stop-first, monitor: 3s,
                  failure_action: pause, max_failure_ratio: 0.25, canary: 1 }
        revision_history: 3
        "#,
    )[0];
    let u = spec.update;
    assert_eq!(
        (u.parallelism, u.delay, u.order),
        (2, Duration::from_secs(1), UpdateOrder::StopFirst)
    );
    assert_eq!(
        (u.monitor, u.failure_action),
        (Duration::from_secs(3), FailureAction::Pause)
    );
    assert_eq!(
        (u.max_failure_ratio, u.canary),
        (crate::Ratio::new(0.25).unwrap(), 1)
    );
    assert_eq!(spec.rollback, UpdateSpec::rollback_default());
    assert_eq!(spec.revision_history, 3);
    let plain = &parse("name: web\ncommand: [app]\n")[0];
    assert_eq!(plain.update.order, UpdateOrder::StartFirst);
    assert_eq!(plain.update.failure_action, FailureAction::Rollback);
    assert_eq!(plain.rollback.failure_action, FailureAction::Pause);
}

#[test]
fn update_settings_out_of_range_are_refused_by_field() {
    check_err(
        r#"
        name: web
        command: [app]
        update: { parallelism: 0, monitor: 2h, max_failure_ratio: 1.5 }
        rollback: { order: sideways }
        revision_history: 0
        "#,
        r#"
        web.update.max_failure_ratio: 1.5 is not between 0 and 1
        web.rollback.order: "sideways" is not one of `start-first`, `stop-first`
        web.update.parallelism: 0 would replace no task: give 1 or more
        web.update.monitor: 2h is longer than the maximum of 1h
        web.revision_history: 0 is not between 1 and 100
        "#,
    );
}

#[test]
fn secrets_and_configs_are_names_or_long_forms() {
    let spec = &parse(
        "
        name: web
        command: [demo-app]
        secrets:
          - db-password
          - { source: tls-key, target: tls/key.pem, mode: 0400 }
        configs: [settings]
        ",
    )[0];
    assert_eq!(spec.secrets[0], FileRef::named("db-password"));
    assert_eq!(spec.secrets[1].target(), "tls/key.pem");
    assert_eq!(spec.secrets[1].mode, Some(0o400));
    assert_eq!(spec.configs, vec![FileRef::named("settings")]);
    let json = serde_json::to_string(&spec).unwrap();
    let back: ServiceSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, spec);
    let short: ServiceSpec = serde_json::from_str(
        r#"{"name":"w","replicas":1,"driver":"process","command":["x"],"restart":{"policy":"always","initial_backoff":"1s","max_backoff":"1m","reset_after":"10m"},"stop_grace":"5s","secrets":["pw"]}"#,
    )
    .unwrap();
    assert_eq!(short.secrets, vec![FileRef::named("pw")]);
}

#[test]
fn bad_secret_references_are_refused() {
    check_err(
        "
        name: web
        command: ['demo-app', '${OUTPOST_CONFIGS_DIR}']
        secrets:
          - source: bad/name
          - { source: a, target: /etc/a }
          - { source: b, target: bad/name }
        ",
        "
        web.command[1]: \"${OUTPOST_CONFIGS_DIR}\" is not a variable Outpost sets (it sets PORT, OUTPOST_PORT_<NAME>, OUTPOST_TASK_ID, OUTPOST_SERVICE, OUTPOST_SLOT, OUTPOST_NODE)
        web.secrets[0].source: \"bad/name\" is not a valid name: use letters, digits, '-', '_' and '.', starting with a letter or a digit
        web.secrets[1].target: \"/etc/a\" is absolute: a process task reads its files in $OUTPOST_SECRETS_DIR or $OUTPOST_CONFIGS_DIR, so give a relative target
        web.secrets[2].target: \"bad/name\" is the target of two secrets
        ",
    );
}

#[test]
fn a_native_spec_may_name_its_stack_and_its_dependencies_in_it() {
    let specs = parse(
        r#"
        name: web
        stack: shop
        command: [./web]
        depends_on:
          db: { condition: service_healthy }
          cache:
        ---
        name: db
        stack: shop
        command: [./db]
        ---
        name: cache
        stack: shop
        command: [./cache]
        "#,
    );
    assert_eq!(specs[0].name, "shop_web");
    assert_eq!(specs[0].short_name(), "web");
    assert_eq!(specs[0].stack.as_deref(), Some("shop"));
    let deps: Vec<(&str, Condition)> = (specs[0].depends_on.iter())
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        deps,
        [
            ("shop_cache", Condition::ServiceStarted),
            ("shop_db", Condition::ServiceHealthy)
        ]
    );
    // The list form, and a dependency deployed some other time: the server checks that one.
    let specs = parse("name: web\ncommand: [./web]\ndepends_on: [db]\n");
    assert_eq!(specs[0].depends_on["db"], Condition::ServiceStarted);
}

#[test]
fn dash_p_puts_a_native_file_in_a_stack_unless_the_file_names_another() {
    let parse_p = |text: &str| {
        let stacking = crate::Stacking {
            project: Some("shop".to_string()),
            directory: None,
        };
        crate::parse_file_in("web.yaml", &dedent(text), &BTreeMap::new(), None, &stacking)
    };
    let specs = parse_p("name: web\ncommand: [./web]\n").unwrap();
    assert_eq!(specs.services[0].name, "shop_web");
    let err = parse_p("name: web\nstack: blue\ncommand: [./web]\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "web.stack: stack \"blue\" differs from the \"shop\" given with -p: leave `stack:` out, or \
         deploy with -p blue"
    );
}

#[test]
fn a_dependency_cycle_within_a_file_is_refused() {
    check_err(
        r#"
        name: a
        command: [./a]
        depends_on: [b]
        ---
        name: b
        command: [./b]
        depends_on: { a: { condition: service_started } }
        "#,
        "a.depends_on: a dependency cycle: a → b → a; no service of it could ever start",
    );
}

#[test]
fn reserved_names_and_bad_stacks_are_refused() {
    check_err(
        r#"
        name: tasks
        command: [./a]
        ---
        name: web
        stack: Shop
        command: [./a]
        "#,
        r#"
        tasks.name: "tasks" is reserved: tasks find services as `<name>.outpost` and their endpoints as `tasks.<name>`; choose another name
        web.stack: "Shop" is not a valid stack name: use lowercase letters, digits, '-' and '_', starting with a letter or digit (as `docker compose -p` does)
        "#,
    );
}

#[test]
fn published_ports_and_the_load_balancer_read_as_written() {
    let specs = parse(
        r#"
        name: web
        command: [./web]
        ports: [{ name: http, container_port: 80, publish: 8080, protocol: http }]
        load_balancer:
          algorithm: weighted_round_robin
          hash_on: cookie:session
          node_weights: { edge-1: 3 }
          revision_weights: { 2: 9 }
          proxy_protocol: true
        "#,
    );
    let spec = &specs[0];
    assert_eq!(spec.ports[0].publish, Some(8080));
    assert_eq!(spec.ports[0].protocol, Protocol::Http);
    assert_eq!(spec.ports[0].service_port(), Some(80));
    let lb = &spec.load_balancer;
    assert_eq!(lb.algorithm, crate::BalanceAlgorithm::WeightedRoundRobin);
    assert_eq!(lb.hash_on, crate::HashOn::Cookie("session".into()));
    assert_eq!((lb.weight("edge-1", 2), lb.weight("edge-2", 1)), (27, 1));
    assert!(lb.proxy_protocol);
}

#[test]
fn a_udp_port_on_the_mesh_and_a_bad_weight_are_refused() {
    check_err(
        r#"
        name: dns
        command: [./dns]
        ports:
          - { name: dns, container_port: 53, publish: 53, protocol: udp }
          - { name: web, container_port: 80, publish: 53 }
        load_balancer: { algorithm: fastest, node_weights: { a: 0 }, hash_on: url }
        "#,
        r#"
        dns.load_balancer.algorithm: "fastest" is not one of `round_robin`, `weighted_round_robin`, `least_connections`, `consistent_hash`, `p2c`
        dns.load_balancer.hash_on: "url" is not `client_ip`, `header:NAME` or `cookie:NAME`
        dns.load_balancer.node_weights.a: weight 0 is out of range (1 to 1000)
        dns.ports[0].publish: the routing mesh carries TCP and HTTP only: publish a UDP port as a fixed `host_port` on the nodes that run it
        "#,
    );
}

#[test]
fn a_pull_secret_names_the_secret_a_docker_service_pulls_with() {
    let spec = &parse(
        "
        name: web
        driver: docker
        image: registry.lan:5000/team/web:1
        pull_secret: registry-lan
        ",
    )[0];
    assert_eq!(spec.pull_secret.as_deref(), Some("registry-lan"));
    assert!(spec.uses(ObjectKind::Secret, "registry-lan"));
    assert!(!spec.uses(ObjectKind::Config, "registry-lan"));
    let back: ServiceSpec = serde_json::from_str(&serde_json::to_string(spec).unwrap()).unwrap();
    assert_eq!(&back, spec);
    check_err(
        "
        name: web
        command: [demo-app]
        pull_secret: bad/name
        ",
        "
        web.pull_secret: only docker services can pull images with credentials
        web.pull_secret: \"bad/name\" is not a valid name: use letters, digits, '-', '_' and '.', starting with a letter or a digit
        ",
    );
}
