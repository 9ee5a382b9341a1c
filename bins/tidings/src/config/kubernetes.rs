//! Kubernetes service-link variables: the `TIDINGS_*` variables the kubelet
//! sets for a Service named `tidings` (or `tidings-*`) are not
//! configuration; the environment source skips exactly those.

/// The environment variables that Kubernetes' service links set for a
/// Service named `tidings` or `tidings-<name>` (`TIDINGS_SERVICE_HOST`,
/// `TIDINGS_PORT=tcp://10.0.0.1:8080`, `TIDINGS_PORT_8080_TCP_ADDR`...),
/// recognised by their exact names and values. The configuration skips them;
/// the gateway logs their names at startup.
pub(crate) fn kubernetes_service_vars() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, v)| is_kubernetes_service_var(k, v))
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names
}

/// Whether `name=value` is one of the variables the kubelet sets for a
/// Service whose name (upper-cased, `-` as `_`) starts with `TIDINGS`:
///
/// - `<SVC>_SERVICE_HOST=<cluster IP>`
/// - `<SVC>_SERVICE_PORT=<port>`, `<SVC>_SERVICE_PORT_<PORT_NAME>=<port>`
/// - `<SVC>_PORT=<proto>://<cluster IP>:<port>`
/// - `<SVC>_PORT_<port>_<PROTO>=<proto>://<cluster IP>:<port>`, and its
///   `_PROTO=<proto>`, `_PORT=<port>` and `_ADDR=<cluster IP>`
///
/// Anything else, `TIDINGS_PORT=8080` included, is not skipped.
fn is_kubernetes_service_var(name: &str, value: &str) -> bool {
    use std::net::{IpAddr, SocketAddr};
    let Some(rest) = name.strip_prefix("TIDINGS") else {
        return false;
    };
    // "" for the Service `tidings`, "_FOO" for `tidings-foo`.
    let service_ok = |svc: &str| svc.is_empty() || svc.strip_prefix('_').is_some_and(is_upper_name);
    let port_ok = |v: &str| v.parse::<u16>().is_ok_and(|p| p > 0);
    // "tcp://10.0.0.1:8080" (IPv6 in brackets), optionally with a given
    // protocol and port.
    let url_ok = |v: &str, proto: Option<&str>, port: Option<&str>| {
        let Some((scheme, addr)) = v.split_once("://") else {
            return false;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            return false;
        };
        matches!(scheme, "tcp" | "udp" | "sctp")
            && proto.is_none_or(|p| p.eq_ignore_ascii_case(scheme))
            && port.is_none_or(|p| p.parse() == Ok(addr.port()))
    };
    if let Some(svc) = rest.strip_suffix("_SERVICE_HOST") {
        return service_ok(svc) && value.parse::<IpAddr>().is_ok();
    }
    for (at, _) in rest.match_indices("_SERVICE_PORT") {
        let (svc, tail) = (&rest[..at], &rest[at + "_SERVICE_PORT".len()..]);
        let tail_ok = tail.is_empty() || tail.strip_prefix('_').is_some_and(is_upper_name);
        if service_ok(svc) && tail_ok && port_ok(value) {
            return true;
        }
    }
    for (at, _) in rest.match_indices("_PORT") {
        let (svc, tail) = (&rest[..at], &rest[at + "_PORT".len()..]);
        if !service_ok(svc) {
            continue;
        }
        if tail.is_empty() {
            if url_ok(value, None, None) {
                return true;
            }
            continue;
        }
        let Some(tail) = tail.strip_prefix('_') else {
            continue;
        };
        let parts: Vec<&str> = tail.split('_').collect();
        let (port, proto, field) = match parts[..] {
            [port, proto] => (port, proto, None),
            [port, proto, field] => (port, proto, Some(field)),
            _ => continue,
        };
        if !port_ok(port) || !matches!(proto, "TCP" | "UDP" | "SCTP") {
            continue;
        }
        let ok = match field {
            None => url_ok(value, Some(proto), Some(port)),
            Some("PROTO") => value.eq_ignore_ascii_case(proto),
            Some("PORT") => value == port,
            Some("ADDR") => value.parse::<IpAddr>().is_ok(),
            Some(_) => false,
        };
        if ok {
            return true;
        }
    }
    false
}

/// `A-Z`, `0-9` and `_`, not empty: a Kubernetes name as an environment
/// variable name.
fn is_upper_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
