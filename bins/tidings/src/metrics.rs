//! `GET /metrics`: Prometheus text exposition of the gateway's counters.
//!
//! The counters are plain atomics kept by the crates themselves (transport,
//! bridge, identity); a scrape reads them and renders the text format, so
//! nothing is recorded on the hot path beyond a relaxed increment.

use std::fmt::Write;

use tidings_identity::CookieProxy;
use tidings_transport::{
    stats::LATENCY_BUCKETS, CloseReason, Gateway, IdentityOutcome, RejectReason,
};

/// Renders every metric.
///
/// `internal`: subscriptions the gateway holds for itself (the control
/// channel's, one exact channel each), left out of the subscription and
/// channel gauges so they count sockets' subscriptions only.
pub(crate) fn render(
    gateway: &Gateway,
    cookie_proxy: Option<&CookieProxy>,
    surveys: Option<&tidings_control::SurveyStats>,
    internal: usize,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let t = gateway.stats();
    let bridge = gateway.bridge();
    let hub = bridge.hub();
    let b = hub.stats().snapshot();
    let (channels, patterns) = hub.topic_counts();
    let q = hub.queue_depths();

    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];

    metric(
        "tidings_connections",
        "gauge",
        "WebSocket connections open now.",
        &one(t.current()),
    );
    metric(
        "tidings_connections_opened_total",
        "counter",
        "WebSocket connections opened since start.",
        &one(t.opened_total()),
    );
    metric(
        "tidings_connections_closed_total",
        "counter",
        "WebSocket connections closed, by reason.",
        &CloseReason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    t.closed_total(*r) as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "tidings_upgrades_rejected_total",
        "counter",
        "WebSocket upgrades refused, by reason.",
        &RejectReason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    t.rejected_by(*r) as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "tidings_client_messages_total",
        "counter",
        "Messages received from clients.",
        &one(t.frames_in_total()),
    );
    metric(
        "tidings_client_messages_rate_limited_total",
        "counter",
        "Client messages refused by the per-socket rate limit.",
        &one(t.rate_limited_total()),
    );
    metric(
        "tidings_frames_out_total",
        "counter",
        "Frames written to sockets.",
        &one(t.frames_out_total()),
    );
    let deflate = gateway.deflate_stats();
    metric(
        "tidings_ws_deflated_messages_total",
        "counter",
        "Messages compressed for permessage-deflate sockets (once each, whatever the number of sockets).",
        &one(deflate.messages_compressed_total()),
    );
    metric(
        "tidings_ws_deflated_frames_total",
        "counter",
        "Compressed (permessage-deflate) frames written to sockets.",
        &one(deflate.frames_total()),
    );
    metric(
        "tidings_ws_deflate_bytes_saved_total",
        "counter",
        "Bytes permessage-deflate saved on the wire (uncompressed less compressed payloads, over every socket).",
        &one(deflate.bytes_saved_total()),
    );
    metric(
        "tidings_ws_inflated_messages_total",
        "counter",
        "Compressed (permessage-deflate) messages received from clients.",
        &one(deflate.client_messages_total()),
    );
    let (recoveries, unrecovered) = t.recovery_totals();
    metric(
        "tidings_recoveries_total",
        "counter",
        "Recoveries asked for with a position (on connect, subscribe, or to fill a hole).",
        &one(recoveries),
    );
    metric(
        "tidings_recoveries_failed_total",
        "counter",
        "Recoveries that could not replay everything (answered recovered: false).",
        &one(unrecovered),
    );
    metric(
        "tidings_replayed_total",
        "counter",
        "Publications replayed from history to sockets.",
        &one(t.replayed_total()),
    );
    let (rpc_calls, rpc_failures) = t.rpc_totals();
    metric(
        "tidings_rpc_calls_total",
        "counter",
        "RPC calls made to the backend.",
        &one(rpc_calls),
    );
    metric(
        "tidings_rpc_failures_total",
        "counter",
        "RPC calls that got no answer (timeout, unreachable, refused path).",
        &one(rpc_failures),
    );

    metric(
        "tidings_subscriptions",
        "gauge",
        "Subscriptions (socket, topic) held now.",
        &one(q.subscriptions.saturating_sub(internal) as u64),
    );
    metric(
        "tidings_channels",
        "gauge",
        "Exact channels with local subscribers.",
        &one(channels.saturating_sub(internal) as u64),
    );
    metric(
        "tidings_patterns",
        "gauge",
        "Patterns with local subscribers.",
        &one(patterns as u64),
    );
    metric(
        "tidings_outbound_queued_messages",
        "gauge",
        "Messages waiting in the sockets' outbound queues, in all.",
        &one(q.queued as u64),
    );
    metric(
        "tidings_outbound_queue_max_depth",
        "gauge",
        "The deepest socket outbound queue.",
        &one(q.max as u64),
    );

    metric(
        "tidings_broker_messages_total",
        "counter",
        "Messages received from the broker for this process.",
        &one(b.messages_in),
    );
    metric(
        "tidings_messages_delivered_total",
        "counter",
        "Messages queued to sockets (one per recipient).",
        &one(b.deliveries),
    );
    metric(
        "tidings_messages_dropped_total",
        "counter",
        "Messages not delivered, by reason.",
        &[
            (
                "{reason=\"slow_consumer\"}".to_string(),
                b.dropped_slow as f64,
            ),
            ("{reason=\"discarded\"}".to_string(), b.discarded as f64),
            ("{reason=\"no_subscriber\"}".to_string(), b.unrouted as f64),
        ],
    );
    metric(
        "tidings_slow_consumer_closes_total",
        "counter",
        "Sockets closed as slow consumers (4001).",
        &one(b.slow_closes),
    );
    metric(
        "tidings_gap_notices_total",
        "counter",
        "gap notices sent to sockets.",
        &one(b.gap_notices),
    );
    metric(
        "tidings_broker_up",
        "gauge",
        "Whether the broker is connected and usable (1) or not (0).",
        &[(
            format!("{{broker=\"{}\"}}", bridge.broker_name()),
            if bridge.is_ready() { 1.0 } else { 0.0 },
        )],
    );
    metric(
        "tidings_broker_reconnects_total",
        "counter",
        "Times the broker connection was restored after a loss.",
        &one(b.reconnects),
    );
    metric(
        "tidings_bridge_selfcheck_repairs_total",
        "counter",
        "Subscriptions the self-check found missing on the broker and made again.",
        &one(b.selfcheck_repairs),
    );

    metric(
        "tidings_identity_lookups_total",
        "counter",
        "Identity resolutions on upgrade, by outcome.",
        &IdentityOutcome::ALL
            .iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{}\"}}", o.as_str()),
                    t.identity_total(*o) as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    let (buckets, count, sum) = t.identity_latency.snapshot();
    let mut samples: Vec<(String, f64)> = LATENCY_BUCKETS
        .iter()
        .zip(buckets)
        .map(|(le, c)| (format!("_bucket{{le=\"{le}\"}}"), c as f64))
        .collect();
    samples.push(("_bucket{le=\"+Inf\"}".into(), count as f64));
    samples.push(("_sum".into(), sum));
    samples.push(("_count".into(), count as f64));
    metric(
        "tidings_identity_lookup_seconds",
        "histogram",
        "Time to resolve a socket's identity on upgrade.",
        &samples,
    );
    if let Some(proxy) = cookie_proxy {
        let s = proxy.stats();
        let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        metric(
            "tidings_identity_backend_requests_total",
            "counter",
            "Requests the cookie proxy sent to the backend.",
            &one(r(&s.backend_requests)),
        );
        metric(
            "tidings_identity_cache_hits_total",
            "counter",
            "Cookie proxy lookups answered from the cache.",
            &one(r(&s.cache_hits)),
        );
        metric(
            "tidings_identity_coalesced_total",
            "counter",
            "Cookie proxy lookups that shared an identical lookup in flight.",
            &one(r(&s.coalesced)),
        );
    }
    if let Some(s) = surveys {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let (asked, incomplete) = (r(&s.asked), r(&s.incomplete));
        metric(
            "tidings_control_surveys_total",
            "counter",
            "GET /api/connections surveys this gateway made, by outcome (incomplete: some live gateway did not answer in time).",
            &[
                (
                    "{outcome=\"complete\"}".into(),
                    asked.saturating_sub(incomplete) as f64,
                ),
                ("{outcome=\"incomplete\"}".into(), incomplete as f64),
            ],
        );
        metric(
            "tidings_control_survey_answers_total",
            "counter",
            "Surveys of any gateway this gateway answered.",
            &one(r(&s.answered)),
        );
    }
    out
}
