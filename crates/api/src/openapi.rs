//! The OpenAPI 3.1 document of `/v1`, served at `/v1/openapi.json`. Written by hand next to the
//! types it describes; the server's `routes` test checks that every path listed here is served.
//! The Raft RPC routes (`/v1/raft/*`) are internal between servers and not listed.

use serde_json::{Value, json};

/// Every path the server routes, with its methods: the single list the document is built from.
pub const PATHS: &[(&str, &[&str])] = &[
    ("/v1/services", &["get", "post"]),
    ("/v1/services/{name}", &["get", "delete"]),
    ("/v1/services/{name}/scale", &["post"]),
    ("/v1/tasks", &["get"]),
    ("/v1/nodes", &["get", "post"]),
    ("/v1/nodes/{name}/heartbeat", &["post"]),
    ("/v1/nodes/{name}/status", &["post"]),
    ("/v1/nodes/{name}/assignments", &["get"]),
    ("/v1/events", &["get"]),
    ("/v1/logs/{target}", &["get"]),
    ("/v1/status", &["get"]),
    ("/v1/openapi.json", &["get"]),
];

fn operation(path: &str, method: &str) -> Value {
    let (summary, request, response): (&str, Option<&str>, &str) = match (path, method) {
        ("/v1/services", "get") => (
            "List services with replica counts",
            None,
            "ServiceSummaryList",
        ),
        ("/v1/services", "post") => (
            "Deploy (create or update) services; `dry_run` only reports the changes",
            Some("DeployRequest"),
            "DeployResponse",
        ),
        ("/v1/services/{name}", "get") => ("One service", None, "ServiceSummary"),
        ("/v1/services/{name}", "delete") => (
            "Remove a service: stop its tasks, then forget it",
            None,
            "ServiceSummary",
        ),
        ("/v1/services/{name}/scale", "post") => (
            "Set a service's replica count",
            Some("ScaleRequest"),
            "ServiceSummary",
        ),
        ("/v1/tasks", "get") => (
            "List tasks, optionally of one service (`?service=`)",
            None,
            "TaskList",
        ),
        ("/v1/nodes", "get") => ("List nodes", None, "NodeList"),
        ("/v1/nodes", "post") => ("Register an agent's node", Some("RegisterRequest"), "Node"),
        ("/v1/nodes/{name}/heartbeat", "post") => (
            "An agent's heartbeat (kept in memory, never a Raft entry)",
            None,
            "Empty",
        ),
        ("/v1/nodes/{name}/status", "post") => (
            "An agent's report of its tasks and events",
            Some("StatusReport"),
            "Empty",
        ),
        ("/v1/nodes/{name}/assignments", "get") => (
            "Blocking query: the node's assignments once they change past `?index=`, or after `?wait=`",
            None,
            "Assignments",
        ),
        ("/v1/events", "get") => (
            "Events after `?after=`; with `?wait=` blocks until one arrives",
            None,
            "Events",
        ),
        ("/v1/logs/{target}", "get") => (
            "Log text of a service's tasks or of one task (`?tail=`, `?follow=`)",
            None,
            "Text",
        ),
        ("/v1/status", "get") => ("This server's view of the cluster", None, "ClusterStatus"),
        _ => ("This document", None, "Object"),
    };
    let mut op = json!({
        "summary": summary,
        "responses": {
            "200": { "description": "OK", "content": content(response) },
            "400": { "description": "Invalid input; every problem is listed with its field path", "content": content("ApiError") },
            "401": { "description": "Missing or wrong bearer token", "content": content("ApiError") },
            "404": { "description": "No such service, task or node", "content": content("ApiError") }
        }
    });
    if let Some(req) = request {
        op["requestBody"] = json!({ "required": true, "content": content(req) });
    }
    op
}

fn content(schema: &str) -> Value {
    if schema == "Text" {
        return json!({ "text/plain": { "schema": { "type": "string" } } });
    }
    json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } })
}

fn object(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let int = json!({ "type": "integer", "minimum": 0 });
    let time = json!({ "type": "string", "format": "date-time" });
    let task_state =
        json!({ "type": "string", "enum": ["pending", "starting", "running", "exited", "failed"] });
    let ports = json!({ "type": "object", "additionalProperties": { "type": "integer" } });
    json!({
        "ServiceSpec": { "type": "object", "description": "A service as written in the native YAML spec, in JSON form", "required": ["name", "replicas", "driver", "restart", "stop_grace"] },
        "DeployRequest": object(&["services"], json!({ "services": { "type": "array", "items": { "$ref": "#/components/schemas/ServiceSpec" } }, "dry_run": { "type": "boolean" } })),
        "DeployResponse": object(&["dry_run", "changes"], json!({ "dry_run": { "type": "boolean" }, "changes": { "type": "array", "items": object(&["service", "change"], json!({ "service": string, "change": { "type": "string", "enum": ["create", "update", "unchanged"] }, "fields": { "type": "array", "items": string } })) } })),
        "ScaleRequest": object(&["replicas"], json!({ "replicas": int })),
        "ServiceSummary": object(&["name", "version", "replicas", "running", "ready"], json!({ "name": string, "driver": string, "version": int, "replicas": int, "running": int, "ready": int, "removing": { "type": "boolean" }, "updated_at": time, "spec": { "$ref": "#/components/schemas/ServiceSpec" } })),
        "ServiceSummaryList": { "type": "array", "items": { "$ref": "#/components/schemas/ServiceSummary" } },
        "Task": object(&["id", "service", "node", "state", "ready", "restarts", "ports"], json!({ "id": string, "service": string, "slot": int, "version": int, "node": string, "desired": { "type": "string", "enum": ["running", "shutdown"] }, "state": task_state, "ready": { "type": "boolean" }, "restarts": int, "pid": int, "container_id": string, "ports": ports, "started_at": time, "exit_code": { "type": "integer" }, "message": string })),
        "TaskList": { "type": "array", "items": { "$ref": "#/components/schemas/Task" } },
        "TaskStatus": object(&["id", "state", "ready", "restarts"], json!({ "id": string, "state": task_state, "ready": { "type": "boolean" }, "restarts": int, "pid": int, "ports": ports, "started_at": time, "exit_code": { "type": "integer" }, "message": string })),
        "Node": object(&["name", "address", "state"], json!({ "name": string, "address": string, "state": { "type": "string", "enum": ["ready", "suspect", "down"] }, "capacity": object(&[], json!({ "cpu_millis": int, "memory_bytes": int })), "drivers": { "type": "array", "items": string }, "version": string, "registered_at": time, "state_since": time })),
        "NodeList": { "type": "array", "items": { "$ref": "#/components/schemas/Node" } },
        "RegisterRequest": object(&["name", "address", "capacity", "drivers", "version"], json!({ "name": string, "address": string, "capacity": { "type": "object" }, "drivers": { "type": "array", "items": string }, "version": string })),
        "StatusReport": object(&["tasks"], json!({ "tasks": { "type": "array", "items": { "$ref": "#/components/schemas/TaskStatus" } }, "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } } })),
        "Assignments": object(&["index", "assignments"], json!({ "index": int, "assignments": { "type": "array", "items": object(&["task", "service", "slot", "version", "desired", "spec"], json!({ "task": string, "service": string, "slot": int, "version": int, "desired": string, "spec": { "$ref": "#/components/schemas/ServiceSpec" } })) } })),
        "Event": object(&["time", "level", "reason", "message"], json!({ "seq": int, "time": time, "level": { "type": "string", "enum": ["info", "warning", "error"] }, "reason": string, "service": string, "task": string, "node": string, "message": string })),
        "Events": object(&["index", "events"], json!({ "index": int, "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } } })),
        "ClusterStatus": object(&["version", "node_id", "applied_index"], json!({ "version": string, "leader": int, "node_id": int, "applied_index": int })),
        "ApiError": object(&["error"], json!({ "error": string, "problems": { "type": "array", "items": object(&["path", "message"], json!({ "path": string, "message": string })) } })),
        "Empty": { "type": "object" },
        "Object": { "type": "object" }
    })
}

/// The whole document.
pub fn document(version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for (path, methods) in PATHS {
        let mut item = serde_json::Map::new();
        for m in *methods {
            item.insert(m.to_string(), operation(path, m));
        }
        paths.insert(path.to_string(), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Outpost API", "version": version, "description": "Control plane of Outpost, a self-healing container orchestrator for edge nodes. Every request needs `Authorization: Bearer <token>`." },
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        },
        "security": [{ "token": [] }],
        "paths": paths
    })
}
