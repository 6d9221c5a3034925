//! Synthetic Service and EndpointSlice manifests at scale, for tests and
//! benchmarks that need thousands of services.

use std::net::Ipv4Addr;
use std::path::Path;

/// The ClusterIP of synthetic service `i` in `10.<base>.0.0/16`.
pub fn cluster_ip(i: usize, base: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, base, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `n` endpoint addresses of synthetic service `i`, unique across services,
/// in 10.240.0.0/12: addresses nothing is ever sent to.
pub fn endpoints(i: usize, n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|e| {
            let k = i * n + e;
            Ipv4Addr::new(10, 240 + (k >> 16) as u8, (k >> 8) as u8, k as u8)
        })
        .collect()
}

/// Service `svc-<i>` in namespace `ns` on `ip:port` (TCP), with one
/// EndpointSlice of `eps` on `backend_port`, all ready.
pub fn service(
    ns: &str,
    i: usize,
    ip: Ipv4Addr,
    port: u16,
    eps: &[Ipv4Addr],
    backend_port: u16,
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: {backend_port}}}]\nendpoints:\n"
    );
    for e in eps {
        s.push_str(&format!(
            "- addresses: [\"{e}\"]\n  conditions: {{ready: true}}\n"
        ));
    }
    s
}

/// Writes `text` as `dir/name` the way an editor saves: temp, then rename.
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
}
