//! `pgwardenctl pools` and `pgwardenctl clients`: the proxy's server
//! connection cache (PgBouncer's SHOW POOLS) and its logged-in clients
//! (SHOW CLIENTS, pgpool-II's pcp_proc_info), as text and JSON.

use pgwarden_proto::v1::{ClientInfo, GetPoolsReply};
use serde_json::{Value, json};

use super::table::align;
use super::units::age;

/// The whole `pools` output, newline-terminated:
///
/// ```text
/// routing to backend 0 (generation 3)
/// BACKEND  USER   DATABASE  ACTIVE  IDLE  WAITING
/// 0        alice  app       1       4     0
/// ```
pub fn pools_text(reply: &GetPoolsReply) -> String {
    let mut out = match reply.primary_id {
        Some(id) => format!("routing to backend {id}"),
        None => "no primary to route to".to_owned(),
    };
    if reply.generation > 0 {
        out.push_str(&format!(" (generation {})", reply.generation));
    }
    out.push('\n');
    if reply.pools.is_empty() {
        out.push_str("no pools yet: they appear with their first client\n");
        return out;
    }
    let mut rows = vec![
        [
            "BACKEND",
            "USER",
            "DATABASE",
            "ACTIVE",
            "IDLE",
            "WAITING",
            "CL_ACTIVE",
            "CL_IDLE",
            "CL_PINNED",
            "READS",
            "WRITES",
        ]
        .map(str::to_owned),
    ];
    rows.extend(reply.pools.iter().map(|p| {
        [
            p.backend_id.to_string(),
            p.user.clone(),
            p.database.clone(),
            p.active.to_string(),
            p.idle.to_string(),
            p.waiting.to_string(),
            p.clients_active.to_string(),
            p.clients_idle.to_string(),
            p.clients_pinned.to_string(),
            p.reads.to_string(),
            p.writes.to_string(),
        ]
    }));
    out.push_str(&align(&rows));
    out
}

/// `pools --json`.
pub fn pools_json(reply: &GetPoolsReply) -> Value {
    json!({
        "generation": reply.generation,
        "primary_id": reply.primary_id,
        "pools": reply.pools.iter().map(|p| json!({
            "backend_id": p.backend_id,
            "user": p.user,
            "database": p.database,
            "active": p.active,
            "idle": p.idle,
            "waiting": p.waiting,
            "clients_active": p.clients_active,
            "clients_idle": p.clients_idle,
            "clients_pinned": p.clients_pinned,
            "reads": p.reads,
            "writes": p.writes,
        })).collect::<Vec<_>>(),
    })
}

/// The whole `clients` output, newline-terminated, ages relative to
/// `now_ms`; `BACKEND` is `-` for a client waiting for a server:
///
/// ```text
/// PID         ADDRESS          USER   DATABASE  BACKEND  CONNECTED
/// 1842291877  127.0.0.1:53122  alice  app       0        12s ago
/// ```
pub fn clients_text(clients: &[ClientInfo], now_ms: i64) -> String {
    if clients.is_empty() {
        return "no clients\n".to_owned();
    }
    let mut rows =
        vec![["PID", "ADDRESS", "USER", "DATABASE", "BACKEND", "CONNECTED"].map(str::to_owned)];
    rows.extend(clients.iter().map(|c| {
        [
            c.pid.to_string(),
            c.address.clone(),
            c.user.clone(),
            c.database.clone(),
            c.backend_id
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
            age(now_ms, c.connected_unix_ms),
        ]
    }));
    align(&rows)
}

/// `clients --json`.
pub fn clients_json(clients: &[ClientInfo]) -> Value {
    Value::Array(
        clients
            .iter()
            .map(|c| {
                json!({
                    "pid": c.pid,
                    "address": c.address,
                    "user": c.user,
                    "database": c.database,
                    "backend_id": c.backend_id,
                    "connected_unix_ms": c.connected_unix_ms,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use pgwarden_proto::v1::PoolState;

    use super::*;

    fn reply() -> GetPoolsReply {
        GetPoolsReply {
            pools: vec![
                PoolState {
                    backend_id: 0,
                    user: "alice".into(),
                    database: "app".into(),
                    active: 1,
                    idle: 4,
                    waiting: 0,
                    clients_active: 1,
                    clients_idle: 30,
                    clients_pinned: 1,
                    reads: 120,
                    writes: 7,
                },
                PoolState {
                    backend_id: 0,
                    user: "bob".into(),
                    database: "reports".into(),
                    active: 10,
                    idle: 0,
                    waiting: 3,
                    clients_active: 10,
                    clients_idle: 0,
                    clients_pinned: 0,
                    reads: 0,
                    writes: 0,
                },
            ],
            generation: 3,
            primary_id: Some(0),
        }
    }

    #[test]
    fn pools_as_a_table_and_as_json() {
        assert_eq!(
            pools_text(&reply()),
            "routing to backend 0 (generation 3)\n\
             BACKEND  USER   DATABASE  ACTIVE  IDLE  WAITING  CL_ACTIVE  CL_IDLE  CL_PINNED  READS  WRITES\n\
             0        alice  app       1       4     0        1          30       1          120    7\n\
             0        bob    reports   10      0     3        10         0        0          0      0\n"
        );
        let empty = GetPoolsReply {
            pools: vec![],
            generation: 0,
            primary_id: None,
        };
        assert_eq!(
            pools_text(&empty),
            "no primary to route to\nno pools yet: they appear with their first client\n"
        );
        let v = pools_json(&reply());
        assert_eq!(v["primary_id"], json!(0));
        assert_eq!(v["pools"][1]["waiting"], json!(3));
        assert_eq!(v["pools"][0]["reads"], json!(120));
        assert_eq!(v["pools"][0]["writes"], json!(7));
        assert_eq!(pools_json(&empty)["primary_id"], Value::Null);
    }

    #[test]
    fn clients_as_a_table_and_as_json() {
        let clients = vec![
            ClientInfo {
                pid: 1_842_291_877,
                address: "127.0.0.1:53122".into(),
                user: "alice".into(),
                database: "app".into(),
                backend_id: Some(0),
                connected_unix_ms: 8_000,
            },
            ClientInfo {
                pid: 7,
                address: "[::1]:40000".into(),
                user: "bob".into(),
                database: "bob".into(),
                backend_id: None,
                connected_unix_ms: 19_500,
            },
        ];
        assert_eq!(
            clients_text(&clients, 20_000),
            "PID         ADDRESS          USER   DATABASE  BACKEND  CONNECTED\n\
             1842291877  127.0.0.1:53122  alice  app       0        12s ago\n\
             7           [::1]:40000      bob    bob       -        0.5s ago\n"
        );
        assert_eq!(clients_text(&[], 0), "no clients\n");
        let v = clients_json(&clients);
        assert_eq!(v[1]["backend_id"], Value::Null);
        assert_eq!(v[0]["pid"], json!(1_842_291_877));
    }
}
