//! The status page's HTML, rendered on the server with maud (every value escaped). Pages read
//! the same JSON document as `GET /api/v1/status`, so what a page shows is what the API says.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

/// Which page is shown, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Overview,
    Sensors,
    Commands,
    Interworking,
    Actions,
    Update,
}

const NAV: &[(Page, &str, &str)] = &[
    (Page::Overview, "/", "Overview"),
    (Page::Sensors, "/sensors", "Sensors"),
    (Page::Commands, "/commands", "Commands"),
    (Page::Interworking, "/interworking", "Interworking"),
    (Page::Actions, "/actions", "Actions"),
    (Page::Update, "/update", "Update"),
];

/// The Content-Security-Policy of every page the daemon serves: nothing but this page's own
/// inline style and script (by their SHA-256), its images as data, the `/events` stream and
/// forms posting back here; no framing.
pub fn content_security_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        let hash = |s: &str| {
            let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(d.as_ref()))
        };
        format!(
            "default-src 'none'; style-src {}; script-src {}; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            hash(STYLE),
            hash(LIVE_SCRIPT)
        )
    })
}

const STYLE: &str = r#"
:root{--fg:#1d2327;--muted:#5f6b73;--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--line:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1rem;padding:.6rem 1rem;background:#fff;border-bottom:1px solid var(--line)}
header h1{font-size:1.1rem;margin:0 1rem 0 0}nav a{margin-right:.8rem;color:var(--fg);text-decoration:none}
nav a.here{font-weight:700;border-bottom:2px solid var(--fg)}header form{margin-left:auto}
main{padding:1rem;max-width:1100px;margin:auto}section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8rem 1rem;margin-bottom:1rem}
h2{font-size:1rem;margin:.1rem 0 .6rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}dt{color:var(--muted)}dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:1rem}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:.3rem .4rem;border-bottom:1px solid var(--line)}th{color:var(--muted);font-weight:600}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}.muted{color:var(--muted)}
.graph{width:100%;height:auto;max-height:240px}.graph .axis{stroke:var(--line)}.graph .label{font-size:11px;fill:var(--muted)}
.graph polyline{fill:none;stroke-width:2}.graph .in{stroke:#0969da}.graph .out{stroke:#1a7f37}
.legend-in{color:#0969da}.legend-out{color:#1a7f37}
button{font:inherit;padding:.35rem .8rem;border:1px solid var(--line);border-radius:5px;background:#fff;cursor:pointer}
input{font:inherit;padding:.35rem;border:1px solid var(--line);border-radius:5px;width:100%}
section.alert{border:2px solid var(--bad);background:#fff5f5}section.alert pre{white-space:pre-wrap;margin:.4rem 0}
input[type=checkbox]{width:auto}.login{max-width:340px;margin:3rem auto}.login label{display:block;margin:.6rem 0 .2rem}.error{color:var(--bad)}
@media (max-width:600px){table.wide td:nth-child(n+5),table.wide th:nth-child(n+5){display:none}}
"#;

/// Keeps elements marked `data-live="a.b.c"` current from the `/events` stream.
const LIVE_SCRIPT: &str = r#"
(function(){if(!window.EventSource||!document.querySelector('[data-live]'))return;var es=new EventSource('/events');
window.addEventListener('pagehide',function(){es.close()});
es.addEventListener('status',function(e){var d=JSON.parse(e.data);
document.querySelectorAll('[data-live]').forEach(function(el){var v=d[el.getAttribute('data-live')];
if(v!==undefined&&v!==null){if(el.tagName==='svg'||el.getAttribute('data-html')){el.outerHTML=v}else{el.textContent=v}}});});})();
"#;

/// `a.b.c` in a JSON document.
pub fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

/// A JSON value as page text: strings bare, null as an em dash.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86400, secs % 86400 / 3600),
    }
}

/// How long ago a `*_at_ms` timestamp was, relative to `now_ms`.
pub fn age(at_ms: &Value, now_ms: u64) -> String {
    match at_ms.as_u64() {
        Some(t) => format!("{} ago", duration(now_ms.saturating_sub(t) / 1000)),
        None => "never".into(),
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "connected" | "synced" | "ok" | "delivered" => "ok",
        "starting" | "retrying" | "queued" | "syncing" => "warn",
        _ => "bad",
    }
}

/// The frame around every page: header, navigation, logout.
pub fn layout(title: &str, page: Option<Page>, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gatewayd" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "gatewayd" }
                    @if let Some(page) = page {
                        nav {
                            @for (p, href, label) in NAV {
                                a href=(href) class=[(*p == page).then_some("here")] { (label) }
                            }
                        }
                    }
                    @if let Some(csrf) = csrf {
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
                @if page.is_some() { script { (PreEscaped(LIVE_SCRIPT)) } }
            }
        }
    }
}

/// The login form; `csrf` is the login CSRF token also set as a cookie.
pub fn login(gateway: &str, csrf: &str, error: Option<&str>, next: &str) -> Markup {
    layout(
        "Log in",
        None,
        None,
        html! {
            section.login {
                h2 { "Technician login" }
                p.muted { "Gateway " strong { (gateway) } }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label for="username" { "User" }
                    input #username name="username" autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    p { button type="submit" { "Log in" } }
                }
            }
        },
    )
}

/// How long the oldest record not yet acknowledged has waited: `-` when none does, "unknown"
/// when its receive time is from a clock that was not set.
pub fn oldest(status: &Value) -> String {
    match (
        get(status, "outbox.oldest_age_seconds").as_u64(),
        get(status, "outbox.records_queued").as_u64(),
    ) {
        (Some(age), _) => duration(age),
        (None, Some(n)) if n > 0 => "unknown".to_owned(),
        _ => "-".to_owned(),
    }
}

/// How the backlog moves: `-` when nothing waits, else the rate out and, when it shrinks, about
/// how long until it is empty (from the latest throughput sample).
pub fn drain(status: &Value) -> String {
    let queued = get(status, "outbox.records_queued").as_u64().unwrap_or(0);
    if queued == 0 {
        return "-".to_owned();
    }
    let out = get(status, "throughput.out_per_second").as_f64().unwrap_or(0.0);
    match get(status, "throughput.backlog_empty_in_seconds").as_u64() {
        Some(secs) => format!("{out:.0} msg/s, empty in about {}", duration(secs)),
        None if out > 0.0 => format!("{out:.0} msg/s, not shrinking"),
        None => "not draining".to_owned(),
    }
}

/// The overview: identity, cloud link, registry, outbox, throughput, health.
pub fn overview(status: &Value, now_ms: u64, graph: &str, csrf: &str) -> Markup {
    let uplink_state = text(get(status, "uplink.state"));
    let queued = get(status, "outbox.records_queued").as_u64().unwrap_or(0);
    let disk = get(status, "outbox.disk_bytes").as_u64().unwrap_or(0);
    let max = get(status, "outbox.max_bytes").as_u64().unwrap_or(0);
    layout(
        "Overview",
        Some(Page::Overview),
        Some(csrf),
        html! {
            @if let Some(error) = get(status, "provisioning.error").as_str() {
                section.alert #provision-error role="alert" {
                    h2.bad { "provision.toml was refused" }
                    p {
                        "Nothing of it was applied: the gateway runs with its previous settings. "
                        "Correct the file on the PROVISION drive and restart the gateway."
                    }
                    pre { (error) }
                }
            }
            div.grid {
                section #gateway {
                    h2 { "Gateway" }
                    dl {
                        dt { "Name" } dd #gw-name { (text(get(status, "gateway.name"))) }
                        dt { "Application" } dd { (text(get(status, "gateway.application"))) }
                        dt { "Firmware" } dd { (text(get(status, "gateway.version"))) }
                        dt { "Board" } dd { (text(get(status, "board.profile"))) }
                        dt { "Slot" } dd { (text(get(status, "board.slot"))) }
                        dt { "Uptime" } dd data-live="uptime" {
                            (duration(get(status, "gateway.uptime_seconds").as_u64().unwrap_or(0)))
                        }
                        dt { "Ready" } dd data-live="ready" { (text(get(status, "gateway.ready"))) }
                        dt { "Clock" } dd #clock class=(if get(status, "gateway.clock_set") == &Value::Bool(false) { "bad" } else { "" }) {
                            @if get(status, "gateway.clock_set") == &Value::Bool(false) {
                                "not set (before 2024): readings carry no receive time upstream"
                            } @else { "set" }
                        }
                    }
                }
                section #cloud {
                    h2 { "Cloud" }
                    dl {
                        dt { "Link" }
                        dd #uplink-state class=(state_class(&uplink_state)) data-live="uplink_state" { (uplink_state) }
                        dt { "Kind" } dd { (text(get(status, "uplink.kind"))) }
                        dt { "URL" } dd { (text(get(status, "uplink.url"))) }
                        dt { "Last error" } dd data-live="uplink_error" { (text(get(status, "uplink.last_error"))) }
                        dt { "Registry sync" } dd data-live="registry_age" { (age(get(status, "registry.last_sync_at_ms"), now_ms)) }
                        dt { "Registry devices" } dd { (text(get(status, "registry.devices"))) }
                    }
                }
                section #outbox {
                    h2 { "Buffer (outbox)" }
                    dl {
                        dt { "Waiting" } dd #outbox-depth data-live="outbox_depth" { (queued) }
                        dt { "Oldest waiting" } dd #outbox-oldest data-live="outbox_oldest" { (oldest(status)) }
                        dt { "Draining" } dd #outbox-drain data-live="outbox_drain" { (drain(status)) }
                        dt { "Bytes waiting" } dd data-live="outbox_bytes" { (bytes(get(status, "outbox.bytes_queued").as_u64().unwrap_or(0))) }
                        dt { "Disk" } dd data-live="outbox_disk" { (bytes(disk)) " of " (bytes(max)) }
                        dt { "Dropped" } dd data-live="outbox_dropped" { (text(get(status, "outbox.dropped"))) }
                        dt { "Expired (refused too long)" } dd #outbox-expired { (text(get(status, "outbox.expired"))) }
                        dt { "Expired (older than max_age)" } dd #outbox-too-old { (text(get(status, "outbox.too_old"))) }
                        dt { "Dead letters" } dd data-live="dead_letters" { (text(get(status, "uplink.dead_letters"))) }
                        dt { "Parked devices" } dd { (get(status, "uplink.parked_devices").as_array().map_or(0, Vec::len)) }
                    }
                }
                section #health {
                    h2 { "Board health" }
                    dl {
                        dt { "Temperature" } dd { (text(get(status, "board.temperature_celsius"))) }
                        dt { "Watchdog" } dd { (text(get(status, "board.watchdog"))) }
                    }
                }
            }
            section #throughput {
                h2 { "Messages per second, last hour" }
                p {
                    span.legend-in { "■ in " } span data-live="rate_in" { (text(get(status, "throughput.in_per_second"))) }
                    " · "
                    span.legend-out { "■ out " } span data-live="rate_out" { (text(get(status, "throughput.out_per_second"))) }
                }
                div data-live="graph" data-html="1" { (PreEscaped(graph)) }
            }
            (held_back(status, now_ms))
        },
    )
}

/// Messages the cloud refused: parked devices and the last dead letters, each with the
/// cloud's reason.
fn held_back(status: &Value, now_ms: u64) -> Markup {
    let empty = Vec::new();
    let parked = get(status, "uplink.parked").as_array().unwrap_or(&empty);
    let dead = get(status, "uplink.recent_dead_letters").as_array().unwrap_or(&empty);
    html! {
        section #held-back {
            h2 { "Held back by the cloud" }
            h3 { "Parked devices (" (parked.len()) ")" }
            @if parked.is_empty() {
                p { "None: the cloud takes every device's messages." }
            } @else {
                p { "Their messages wait in the outbox and are tried again every "
                    code { "parked_retry" } " or with " em { "Retry parked devices" } "; a device "
                    "refused for " code { "parked_max_age" } " loses them (counted as expired)." }
                table #parked {
                    thead { tr { th { "Device" } th { "Reason" } th { "Since" } } }
                    tbody {
                        @for p in parked {
                            tr {
                                td { (text(&p["device"])) }
                                td { (text(&p["reason"])) }
                                td { (age(&p["since_ms"], now_ms)) }
                            }
                        }
                    }
                }
            }
            h3 { "Dead letters (" (text(get(status, "uplink.dead_letters"))) " in all)" }
            @if dead.is_empty() {
                p { "None since start." }
            } @else {
                p { "Messages the cloud rejected for good; they are not sent again. The last "
                    (dead.len()) ", newest last:" }
                table #dead-letters {
                    thead { tr { th { "Device" } th { "Reason" } th { "When" } } }
                    tbody {
                        @for d in dead {
                            tr {
                                td { (text(&d["device"])) }
                                td { (text(&d["reason"])) }
                                td { (age(&d["at_ms"], now_ms)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One row of the sensor list.
pub struct SensorRow {
    pub device: String,
    /// A live session (MQTT).
    pub connected: bool,
    /// No session, but a message within the last few minutes (CoAP, HTTP, bridge).
    pub active: bool,
    pub protocol: String,
    pub last_seen: String,
    pub today: u64,
    pub queued_commands: u64,
}

/// Every proxied device, with a search box that filters on the server.
pub fn sensors(rows: &[SensorRow], query: &str, total: usize, csrf: &str) -> Markup {
    layout(
        "Sensors",
        Some(Page::Sensors),
        Some(csrf),
        html! {
            section {
                h2 { "Sensors (" (rows.len()) " of " (total) ")" }
                form method="get" action="/sensors" {
                    input name="q" value=(query) placeholder="Search by name, protocol, connected…" aria-label="search";
                }
                table.wide #sensors {
                    thead { tr { th { "Device" } th { "State" } th { "Protocol" } th { "Last seen" } th { "Today" } th { "Queued commands" } } }
                    tbody {
                        @for r in rows {
                            tr data-device=(r.device) {
                                td { (r.device) }
                                td class=(if r.connected { "ok" } else if r.active { "warn" } else { "muted" }) {
                                    (if r.connected { "connected" } else if r.active { "active" } else { "not connected" })
                                }
                                td { (r.protocol) }
                                td { (r.last_seen) }
                                td { (r.today) }
                                td { (r.queued_commands) }
                            }
                        }
                    }
                }
                @if rows.is_empty() { p.muted { "No sensor matches." } }
            }
        },
    )
}

/// Recent commands and their fate, as the command router lists them.
pub fn commands(status: &Value, now_ms: u64, csrf: &str) -> Markup {
    let recent = get(status, "commands.recent").as_array().cloned().unwrap_or_default();
    let counters = get(status, "commands.counts").as_object().cloned().unwrap_or_default();
    let configured = get(status, "commands").is_object();
    layout(
        "Commands",
        Some(Page::Commands),
        Some(csrf),
        html! {
            section {
                h2 { "Counters" }
                @if !configured { p.muted { "The command router is not running." } }
                dl {
                    dt { "waiting in the queue" } dd #queued { (text(get(status, "commands.queued"))) }
                    dt { "requests waiting for one" } dd { (text(get(status, "commands.waiting_requests"))) }
                    @for (k, v) in counters.iter().filter(|(_, v)| v.is_number()) {
                        dt { (k.replace('_', " ")) } dd { (v) }
                    }
                }
            }
            section {
                h2 { "Recent commands" }
                table.wide #commands {
                    thead { tr { th { "When" } th { "Device" } th { "Command" } th { "Outcome" } th { "Via" } th { "Reason" } } }
                    tbody {
                        @for c in &recent {
                            @let outcome = text(get(c, "outcome"));
                            tr {
                                td { (age(get(c, "at"), now_ms)) }
                                td { (text(get(c, "device"))) "@" (text(get(c, "application"))) }
                                td { (text(get(c, "command"))) }
                                td class=(state_class(&outcome)) { (outcome) }
                                td { (text(get(c, "via"))) }
                                td { (text(get(c, "reason"))) }
                            }
                        }
                    }
                }
                @if recent.is_empty() { p.muted { "No command since start." } }
            }
        },
    )
}

/// Each southbound driver and bridge mapping, with its interworking descriptor.
pub fn interworking(status: &Value, csrf: &str) -> Markup {
    let listeners = get(status, "listeners").as_array().cloned().unwrap_or_default();
    let bridges = get(status, "bridges").as_array().cloned().unwrap_or_default();
    layout(
        "Interworking",
        Some(Page::Interworking),
        Some(csrf),
        html! {
            section {
                h2 { "Southbound listeners" }
                table #drivers {
                    thead { tr { th { "Protocol" } th { "Address" } th { "Accepting" } th { "Identity" } } }
                    tbody {
                        @for l in &listeners {
                            @let name = text(get(l, "name"));
                            @let accepting = get(l, "accepting").as_bool() != Some(false);
                            tr {
                                td { (name) }
                                td { (text(get(l, "addr"))) }
                                td.accepting {
                                    @if accepting { "yes" } @else { "no: " (text(get(l, "fault"))) }
                                }
                                td { (identity_handling(&name)) }
                            }
                        }
                    }
                }
            }
            @if bridges.is_empty() { section { h2 { "Legacy broker bridges" } p.muted { "No bridge configured." } } }
            @for b in &bridges {
                @let connected = get(b, "connected").as_bool() == Some(true);
                section.bridge {
                    h2 { "Bridge " (text(get(b, "name"))) }
                    dl {
                        dt { "Site broker" } dd { (text(get(b, "url"))) }
                        dt { "State" } dd class=(if connected { "ok" } else { "bad" }) { (if connected { "connected" } else { "not connected" }) }
                        dt { "Messages" } dd { (text(get(b, "messages"))) }
                        dt { "Commands published" } dd { (text(get(b, "commands_published"))) }
                        dt { "Last error" } dd { (text(get(b, "last_error"))) }
                    }
                    @for m in get(b, "mappings").as_array().into_iter().flatten() {
                        div.mapping {
                            h2 { "Mapping " (text(get(m, "name"))) }
                            dl {
                                dt { "Protocol" } dd { (text(get(m, "protocol"))) }
                                dt { "Topic template" } dd { code { (text(get(m, "topic"))) } }
                                dt { "Subscription" } dd { code { (text(get(m, "subscription"))) } }
                                dt { "Identity" } dd { (text(get(m, "identity.source"))) ", application " (text(get(m, "identity.application"))) ", devices " (text(get(m, "identity.devices"))) }
                                dt { "Channel" } dd { (text(get(m, "channel"))) }
                                dt { "Data objects" } dd { (get(m, "data_objects").as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                dt { "Commands to" } dd { code { (text(get(m, "commands"))) } }
                                dt { "Description" } dd { (text(get(m, "description"))) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn identity_handling(listener: &str) -> &'static str {
    match listener {
        "mqtt" | "mqtts" => "MQTT CONNECT: device@app + password, or client certificate",
        "coap" => "CoAP option 4209: Basic device@app:password",
        "coaps" => "CoAP over DTLS",
        "web" | "http" => "HTTP Basic device@app:password (POST /v1/<channel>)",
        _ => "—",
    }
}

/// The actions a technician may take, each a POST behind the session's CSRF token.
pub fn actions(csrf: &str, done: Option<&str>) -> Markup {
    layout(
        "Actions",
        Some(Page::Actions),
        Some(csrf),
        html! {
            @if let Some(d) = done { section role="status" #done { p.ok { (d) } } }
            @for (action, label, explain) in [
                ("resync", "Resync the registry now", "Lists the cloud registry again and refreshes the credential cache."),
                ("retry-parked", "Retry parked devices", "Devices the cloud refused are tried again at once."),
                ("restart-uplink", "Restart the uplink", "Drops the cloud connection and connects again; nothing buffered is lost."),
                ("identify", "Identify this gateway", "Blinks the activity LED, to find this box among others (toggle)."),
            ] {
                section {
                    h2 { (label) }
                    p.muted { (explain) }
                    form method="post" action=(format!("/actions/{action}")) {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { (label) }
                    }
                }
            }
        },
    )
}

/// The slots as the updater sees them, and the bundle upload form; `update` is the `update`
/// section of the status document (null without an updater).
pub fn update(
    update: &Value,
    max_bytes: Option<u64>,
    csrf: &str,
    notice: Option<&super::update_page::Notice>,
) -> Markup {
    let last = get(update, "last_install");
    layout(
        "Update",
        Some(Page::Update),
        Some(csrf),
        html! {
            @if let Some(n) = notice {
                section #result role=(if n.ok { "status" } else { "alert" }) class=[(!n.ok).then_some("alert")] {
                    p class=(if n.ok { "ok" } else { "bad" }) { (n.text) }
                }
            }
            section #slots {
                h2 { "Slots" }
                @if update.is_null() {
                    p.muted #no-updater {
                        "Updates are not configured on this gateway (they need a board with A/B "
                        "slots and an [update] section): bundles cannot be installed here."
                    }
                } @else {
                    dl {
                        dt { "State" } dd #slot-state { (text(get(update, "state"))) }
                        dt { "Booted slot" } dd { (text(get(update, "booted"))) }
                        dt { "Slot A" } dd { (text(get(update, "version_a"))) }
                        dt { "Slot B" } dd { (text(get(update, "version_b"))) }
                        dt { "Last install" } dd #last-install {
                            @match get(last, "outcome").as_str() {
                                Some("installed") => { "installed " (text(get(last, "version"))) " into slot " (text(get(last, "slot"))) }
                                Some(_) => { "refused: " (text(get(last, "reason"))) }
                                None => { "none since start" }
                            }
                        }
                    }
                }
            }
            @if let Some(max) = max_bytes {
                section #upload {
                    h2 { "Install an update bundle" }
                    p.muted {
                        "A signed bundle for this board, at most " (bytes(max)) ". It is written "
                        "into the inactive slot; the gateway keeps running the booted one until "
                        "it reboots, then tries the new slot once."
                    }
                    form method="post" action="/update" enctype="multipart/form-data" {
                        input type="hidden" name="csrf" value=(csrf);
                        p {
                            label {
                                input type="checkbox" name="force" value="1";
                                " Force downgrade (install a version older than the booted one)"
                            }
                        }
                        p { input #bundle type="file" name="bundle" accept=".bundle" required; }
                        button type="submit" { "Upload and install" }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_escaped_and_paths_read() {
        let status =
            json!({"gateway":{"name":"<gw>","uptime_seconds":3700},"uplink":{"state":"connected"}});
        let page = overview(&status, 0, "<svg></svg>", "tok").into_string();
        assert!(page.contains("&lt;gw&gt;"), "names are escaped");
        assert!(page.contains("1 h 1 min"));
        assert!(page.contains("class=\"ok\""));
        assert!(page.contains("name=\"csrf\" value=\"tok\""));
        assert_eq!(text(get(&status, "uplink.missing.deeper")), "—");
    }

    #[test]
    fn a_refused_provision_file_is_a_banner_on_the_overview() {
        let quiet = overview(&json!({"provisioning": {"error": null}}), 0, "", "tok").into_string();
        assert!(!quiet.contains("provision-error"));
        let status = json!({"provisioning": {"error": "provision.toml: cloud.url: <bad>"}});
        let page = overview(&status, 0, "", "tok").into_string();
        assert!(page.contains("id=\"provision-error\""), "{page}");
        assert!(page.contains("provision.toml: cloud.url: &lt;bad&gt;"), "escaped: {page}");
    }

    #[test]
    fn the_update_page_shows_the_slots_or_says_there_are_none() {
        let none = update(&Value::Null, None, "tok", None).into_string();
        assert!(none.contains("not configured") && !none.contains("multipart"), "{none}");
        let slots = json!({"state": "booted A, marked good", "booted": "A", "version_a": "1.0.0",
                           "version_b": null, "last_install": {"outcome": "refused", "reason": "bad signature"}});
        let page = update(&slots, Some(1 << 30), "tok", None).into_string();
        assert!(page.contains("booted A, marked good") && page.contains("1.0 GiB"), "{page}");
        assert!(page.contains("refused: bad signature"), "{page}");
        let csrf = page.find("name=\"csrf\"").unwrap();
        assert!(csrf < page.find("name=\"bundle\"").unwrap(), "the token comes before the file");
    }

    #[test]
    fn the_backlog_shows_its_drain_rate_and_when_it_will_be_empty() {
        let st = |queued: u64, out: f64, empty: Option<u64>| {
            json!({"outbox": {"records_queued": queued},
                   "throughput": {"out_per_second": out, "backlog_empty_in_seconds": empty}})
        };
        assert_eq!(drain(&st(0, 10.0, None)), "-");
        assert_eq!(drain(&st(1_000_000, 200_000.0, Some(6))), "200000 msg/s, empty in about 6 s");
        assert_eq!(drain(&st(500, 20.0, None)), "20 msg/s, not shrinking");
        assert_eq!(drain(&st(500, 0.0, None)), "not draining");
        let page = overview(&st(9, 3.0, Some(3)), 0, "", "tok").into_string();
        assert!(page.contains("3 msg/s, empty in about 3 s"), "{page}");
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(90_000), "1 d 1 h");
        assert_eq!(age(&json!(1000), 61_000), "1 min 0 s ago");
        assert_eq!(age(&Value::Null, 5), "never");
    }
}
