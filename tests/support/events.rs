//! Events as they are stored, for the tests to put into the fake API server.

use serde_json::{Value, json};

/// The `i`th Node event as the node controller stores it in `default`, about node `node{i}`:
/// `node{i}.{i:016x}`, uid `ev-{i}` (kept across count bumps, as the API server keeps it),
/// a Warning `NodeNotReady` seen `count` times.
pub fn node_event(i: usize, count: i64) -> Value {
    node_event_on(i, i, count)
}

/// As [`node_event`], about node `node{node}` (many events about a few nodes).
pub fn node_event_on(node: usize, i: usize, count: i64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("node{node}.{i:016x}"), "namespace": "default", "uid": format!("ev-{i}")},
        "involvedObject": {"kind": "Node", "name": format!("node{node}"), "uid": format!("node{node}")},
        "reason": "NodeNotReady", "message": format!("Node node{node} status is now: NodeNotReady"),
        "source": {"component": "node-controller"}, "type": "Warning", "count": count,
        "firstTimestamp": "2026-11-20T10:00:00Z",
        "lastTimestamp": format!("2026-11-20T10:{:02}:00Z", count.clamp(0, 59))
    })
}
