//! Redis server gauges, read from one `INFO` call at scrape time: what an operator watches
//! on the server every request depends on (memory, fragmentation, clients, keys, expiries,
//! evictions, load).

use std::fmt::Write as _;

/// `(gauge, INFO field, help, type)` of every gauge read from `INFO`'s `field:value` lines.
const FIELDS: [(&str, &str, &str, &str); 6] = [
    (
        "commerce_redis_used_memory_bytes",
        "used_memory",
        "Memory Redis has allocated (INFO used_memory).",
        "gauge",
    ),
    (
        "commerce_redis_mem_fragmentation_ratio",
        "mem_fragmentation_ratio",
        "Resident memory over allocated memory (INFO mem_fragmentation_ratio).",
        "gauge",
    ),
    (
        "commerce_redis_connected_clients",
        "connected_clients",
        "Client connections open on Redis (INFO connected_clients).",
        "gauge",
    ),
    (
        "commerce_redis_expired_keys_total",
        "expired_keys",
        "Keys Redis expired since it started (INFO expired_keys).",
        "counter",
    ),
    (
        "commerce_redis_evicted_keys_total",
        "evicted_keys",
        "Keys Redis evicted for maxmemory since it started (INFO evicted_keys); should stay 0.",
        "counter",
    ),
    (
        "commerce_redis_instantaneous_ops_per_sec",
        "instantaneous_ops_per_sec",
        "Commands per second Redis served lately (INFO instantaneous_ops_per_sec).",
        "gauge",
    ),
];

/// Writes the gauges found in `info` (the text of `INFO`), and `commerce_redis_keys`, the
/// keys of every database (`db0:keys=…`). Fields `info` lacks are left out.
pub fn render(info: &str, out: &mut String) {
    let value = |field: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    for (name, field, help, kind) in FIELDS {
        if let Some(v) = value(field) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
    let keys: u64 = info
        .lines()
        .filter(|line| line.starts_with("db"))
        .filter_map(|line| {
            let (_, stats) = line.split_once(':')?;
            stats
                .split(',')
                .find_map(|s| s.strip_prefix("keys=")?.trim().parse::<u64>().ok())
        })
        .sum();
    let _ = writeln!(
        out,
        "# HELP commerce_redis_keys Keys in Redis, every database (INFO keyspace).\n\
         # TYPE commerce_redis_keys gauge\ncommerce_redis_keys {keys}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_become_gauges() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                    mem_fragmentation_ratio:1.52\r\n# Clients\r\nconnected_clients:7\r\n\
                    # Stats\r\nexpired_keys:12\r\nevicted_keys:0\r\ninstantaneous_ops_per_sec:345\r\n\
                    # Keyspace\r\ndb0:keys=100,expires=3,avg_ttl=0\r\ndb2:keys=5,expires=0,avg_ttl=0\r\n";
        let mut out = String::new();
        render(info, &mut out);
        for line in [
            "commerce_redis_used_memory_bytes 1048576\n",
            "commerce_redis_mem_fragmentation_ratio 1.52\n",
            "commerce_redis_connected_clients 7\n",
            "commerce_redis_expired_keys_total 12\n",
            "commerce_redis_evicted_keys_total 0\n",
            "commerce_redis_instantaneous_ops_per_sec 345\n",
            "commerce_redis_keys 105\n",
        ] {
            assert!(out.contains(line), "{line} missing from {out}");
        }
    }
}
