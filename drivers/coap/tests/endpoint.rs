//! The endpoint over real UDP against independent clients: libcoap's `coap-client-notls`
//! (Debian libcoap3-bin), Python's `aiocoap`, and raw datagrams for the message-layer rules
//! (duplicate message ids, a lost response). The gateway side is an in-test `Ingest` (records
//! in memory), an in-test `Authenticate` (a map of `device@app` → password) and an in-test
//! `CommandSource` that hands out the commands a test queues.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use gw_driver_coap::{CoapConfig, CoapEndpoint, Stats, wire};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, Command, CommandName, CommandSource, Identity,
    Ingest, IngestError, PresentedCredential, Telemetry, Timestamp,
};
use tokio::{net::UdpSocket, process::Command as Process, sync::watch};
use tokio_util::sync::CancellationToken;

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

struct TestIngest {
    records: Mutex<Vec<Telemetry>>,
    count: watch::Sender<usize>,
}

impl TestIngest {
    fn new() -> Arc<Self> {
        Arc::new(Self { records: Mutex::new(Vec::new()), count: watch::channel(0).0 })
    }

    fn records(&self) -> Vec<Telemetry> {
        self.records.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Telemetry> {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} messages expected, got {:?}", self.records()))
            .unwrap();
        self.records()
    }
}

impl Ingest for TestIngest {
    async fn publish(&self, telemetry: Telemetry) -> Result<(), IngestError> {
        if telemetry.channel.as_str() == "full" {
            return Err(IngestError::QuotaExceeded("test outbox full".into()));
        }
        // a bug on the way to the outbox, as the endpoint would meet it
        assert_ne!(telemetry.channel.as_str(), "panic", "the test ingest panics on request");
        self.records.lock().unwrap().push(telemetry);
        self.count.send_modify(|c| *c += 1);
        Ok(())
    }
}

struct TestAuth(HashMap<String, String>);

impl Authenticate for TestAuth {
    async fn authenticate(&self, request: &AuthRequest, _peer: Option<IpAddr>) -> AuthOutcome {
        match &request.credential {
            PresentedCredential::Password(pw)
                if self.0.get(&request.identity().to_string()).map(String::as_str)
                    == Some(pw.expose()) =>
            {
                AuthOutcome::Pass(request.identity())
            }
            _ => AuthOutcome::Fail,
        }
    }
}

/// Commands a test queues per device; `next_command` takes one or waits for one.
#[derive(Default)]
struct TestCommands {
    queues: Mutex<HashMap<Identity, VecDeque<Command>>>,
    added: tokio::sync::Notify,
}

impl TestCommands {
    fn queue(&self, device: &str, name: &str, payload: &[u8]) {
        let id: Identity = device.parse().unwrap();
        let command = Command {
            app: id.app().clone(),
            device: id.device().clone(),
            name: CommandName::new(name).unwrap(),
            content_type: Some("application/json".into()),
            payload: Bytes::copy_from_slice(payload),
            created_at: Timestamp::from_millis(0),
            expires_at: None,
        };
        self.queues.lock().unwrap().entry(id).or_default().push_back(command);
        self.added.notify_waiters();
    }

    fn take(&self, device: &Identity) -> Option<Command> {
        self.queues.lock().unwrap().get_mut(device).and_then(VecDeque::pop_front)
    }
}

impl CommandSource for TestCommands {
    async fn next_command(&self, device: &Identity, wait: Duration) -> Option<Command> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            if let Some(c) = self.take(device) {
                return Some(c);
            }
            if tokio::time::timeout_at(until, added).await.is_err() {
                return self.take(device);
            }
        }
    }
}

struct Harness {
    addr: SocketAddr,
    ingest: Arc<TestIngest>,
    commands: Arc<TestCommands>,
    stats: Stats,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut CoapConfig)) -> Self {
        let mut config =
            CoapConfig { listen: "127.0.0.1:0".parse().unwrap(), ..CoapConfig::default() };
        tweak(&mut config);
        let auth = TestAuth(HashMap::from([
            ("sensor1@app".to_owned(), "pw".to_owned()),
            ("sensor2@app".to_owned(), "pw2".to_owned()),
        ]));
        let ingest = TestIngest::new();
        let commands = Arc::new(TestCommands::default());
        let endpoint = CoapEndpoint::bind(
            &config,
            Arc::new(auth),
            ingest.clone(),
            commands.clone(),
            AppId::new("app").unwrap(),
        )
        .await
        .unwrap();
        let addr = endpoint.local_addr();
        let stats = endpoint.stats();
        let token = CancellationToken::new();
        let task = tokio::spawn(endpoint.run(token.clone()));
        Self { addr, ingest, commands, stats, token, task }
    }

    fn uri(&self, path: &str) -> String {
        format!("coap://127.0.0.1:{}{path}", self.addr.port())
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.unwrap().unwrap();
    }
}

fn basic(user_pw: &str) -> String {
    format!("Basic {}", STANDARD_NO_PAD.encode(user_pw))
}

/// Whether `coap-client-notls` is installed; in CI its absence fails the test.
fn have_coap_client() -> bool {
    let ok = std::process::Command::new("coap-client-notls").arg("-h").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "coap-client-notls missing in CI");
        eprintln!("SKIP: coap-client-notls (libcoap3-bin) not installed");
    }
    ok
}

/// Runs coap-client-notls; returns (stdout, stderr).
async fn coap_client(args: &[&str]) -> (String, String) {
    let mut c = Process::new("coap-client-notls");
    c.args(["-B", "15"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out =
        tokio::time::timeout(DEADLINE, c.output()).await.expect("coap-client timed out").unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of option `number` of the last response in a `-v 7` debug dump, where libcoap
/// prints options as `[ 4210:\x73\x65\x74 ]` (or plain text where printable).
fn dumped_option(dump: &str, number: u16) -> Option<String> {
    let marker = format!("{number}:");
    let line = dump.lines().rev().find(|l| l.contains("c:2.05") && l.contains(&marker))?;
    let start = line.find(&marker)? + marker.len();
    let rest = &line[start..];
    let end = rest.find([' ', ',', ']']).unwrap_or(rest.len());
    let raw = &rest[..end];
    let mut bytes = Vec::new();
    let mut chars = raw.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == '\\' && raw[i..].starts_with("\\x") && raw.len() >= i + 4 {
            bytes.push(u8::from_str_radix(&raw[i + 2..i + 4], 16).ok()?);
            for _ in 0..3 {
                chars.next();
            }
        } else {
            bytes.extend_from_slice(ch.to_string().as_bytes());
        }
    }
    String::from_utf8(bytes).ok()
}

#[tokio::test]
async fn coap_client_post_with_4209_reaches_the_ingest_as_the_sensor() {
    if !have_coap_client() {
        return;
    }
    let h = Harness::start().await;
    let auth = format!("4209,{}", basic("sensor1@app:pw"));
    let (_, err) = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-O",
        &auth,
        "-e",
        "{\"temp\":21.5}",
        &h.uri("/v1/telemetry/room/3"),
    ])
    .await;
    let records = h.ingest.wait_for(1).await;
    assert_eq!(records[0].device, "sensor1", "{err}");
    assert_eq!(records[0].app, "app");
    assert_eq!(records[0].channel, "telemetry");
    assert_eq!(records[0].suffix.as_deref(), Some("room/3"));
    assert_eq!(records[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(&records[0].payload[..], b"{\"temp\":21.5}");
    // a bare device name belongs to the gateway's application; padded base64 works too
    let padded =
        format!("4209,Basic {}", base64::engine::general_purpose::STANDARD.encode("sensor2:pw2"));
    coap_client(&["-m", "post", "-O", &padded, "-e", "x", &h.uri("/v1/t")]).await;
    let records = h.ingest.wait_for(2).await;
    assert_eq!(records[1].device, "sensor2");
    h.stop().await;
}

#[tokio::test]
async fn coap_client_wrong_credentials_print_4_03_and_missing_ones_4_01() {
    if !have_coap_client() {
        return;
    }
    let h = Harness::start().await;
    let wrong = format!("4209,{}", basic("sensor1@app:nope"));
    let (out, err) = coap_client(&["-m", "post", "-O", &wrong, "-e", "x", &h.uri("/v1/t")]).await;
    let all = format!("{out}{err}");
    assert!(all.contains("4.03"), "{all}");
    assert!(all.contains("authentication failed"), "{all}");
    let (out, err) = coap_client(&["-m", "post", "-e", "x", &h.uri("/v1/t")]).await;
    let all = format!("{out}{err}");
    assert!(all.contains("4.01"), "{all}");
    assert!(h.ingest.records().is_empty());
    assert_eq!(h.stats.snapshot().auth_refused, 2);
    h.stop().await;
}

#[tokio::test]
async fn coap_client_single_raw_uri_query_option_and_standard_form() {
    if !have_coap_client() {
        return;
    }
    let h = Harness::start().await;
    let auth = format!("4209,{}", basic("sensor1@app:pw"));
    // Drogue's form: the whole query in one option
    coap_client(&[
        "-m",
        "post",
        "-O",
        &auth,
        "-O",
        "15,data_schema=s1&as=sensor1",
        "-e",
        "a",
        &h.uri("/v1/t"),
    ])
    .await;
    // the standard form: one option per parameter (libcoap splits the URI query)
    coap_client(&["-m", "post", "-O", &auth, "-e", "b", &h.uri("/v1/t?data_schema=s2&as=sensor1")])
        .await;
    let records = h.ingest.wait_for(2).await;
    assert_eq!(records[0].data_schema.as_deref(), Some("s1"));
    assert_eq!(records[1].data_schema.as_deref(), Some("s2"));
    // as= another device is refused
    let (out, err) = coap_client(&[
        "-m",
        "post",
        "-O",
        &auth,
        "-O",
        "15,as=sensor2",
        "-e",
        "c",
        &h.uri("/v1/t"),
    ])
    .await;
    assert!(format!("{out}{err}").contains("4.03"), "{out}{err}");
    // an unknown parameter is 4.00 with a diagnostic
    let (out, err) =
        coap_client(&["-m", "post", "-O", &auth, "-e", "d", &h.uri("/v1/t?bogus=1")]).await;
    assert!(format!("{out}{err}").contains("4.00"), "{out}{err}");
    h.stop().await;
}

#[tokio::test]
async fn coap_client_block_wise_upload_of_4_kib_arrives_whole() {
    if !have_coap_client() {
        return;
    }
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let body: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let auth = format!("4209,{}", basic("sensor1@app:pw"));
    let (_, err) = coap_client(&[
        "-m",
        "post",
        "-b",
        "512",
        "-O",
        &auth,
        "-f",
        file.to_str().unwrap(),
        &h.uri("/v1/fw"),
    ])
    .await;
    let records = h.ingest.wait_for(1).await;
    assert_eq!(records.len(), 1, "{err}");
    assert_eq!(&records[0].payload[..], &body[..]);
    assert!(h.stats.snapshot().blocks_in >= 8);
    h.stop().await;
}

#[tokio::test]
async fn coap_client_gets_a_waiting_command_in_2_05_with_option_4210() {
    if !have_coap_client() {
        return;
    }
    let h = Harness::start().await;
    h.commands.queue("sensor1@app", "set-temp", b"{\"t\":20}");
    let auth = format!("4209,{}", basic("sensor1@app:pw"));
    let (out, err) = coap_client(&[
        "-v",
        "7",
        "-m",
        "post",
        "-O",
        &auth,
        "-O",
        "15,ct=5",
        "-e",
        "x",
        &h.uri("/v1/t"),
    ])
    .await;
    assert!(out.contains("{\"t\":20}"), "payload on stdout: {out} / {err}");
    let dump = format!("{out}\n{err}");
    assert_eq!(dumped_option(&dump, 4210).as_deref(), Some("set-temp"), "{dump}");
    assert_eq!(h.ingest.records().len(), 1, "the message is stored as well");
    // a command that arrives during the wait is delivered too (separate response)
    let commands = h.commands.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        commands.queue("sensor1@app", "reboot", b"now");
    });
    let (out, err) =
        coap_client(&["-v", "7", "-m", "post", "-O", &auth, "-e", "y", &h.uri("/v1/t?ct=10")])
            .await;
    later.await.unwrap();
    assert!(out.contains("now"), "{out} / {err}");
    assert_eq!(dumped_option(&format!("{out}\n{err}"), 4210).as_deref(), Some("reboot"));
    assert!(h.stats.snapshot().separate_responses >= 1);
    h.stop().await;
}

/// A raw CON POST as `sensor1@app` with the given message id.
fn raw_post(mid: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(vec![1, 2, 3, 4]);
    p.add_option(CoapOption::UriPath, b"v1".to_vec());
    p.add_option(CoapOption::UriPath, b"raw".to_vec());
    p.add_option(CoapOption::Unknown(wire::AUTH_OPTION), basic("sensor1@app:pw").into_bytes());
    p.payload = payload.to_vec();
    p.to_bytes_unlimited().unwrap()
}

async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 2048];
    let n =
        tokio::time::timeout(DEADLINE, socket.recv(&mut buf)).await.expect("no answer").unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn same_con_message_id_twice_is_stored_once() {
    let h = Harness::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    let request = raw_post(0x4242, b"once");
    // both copies go out before any answer comes back
    socket.send(&request).await.unwrap();
    socket.send(&request).await.unwrap();
    let a = wire::decode(&recv(&socket).await).unwrap();
    let b = wire::decode(&recv(&socket).await).unwrap();
    let codes = [a.header.code, b.header.code];
    assert!(codes.contains(&MessageClass::Response(ResponseType::Changed)), "{codes:?}");
    h.ingest.wait_for(1).await;
    // and once more after the answer: the same answer, still one message
    socket.send(&request).await.unwrap();
    let c = wire::decode(&recv(&socket).await).unwrap();
    assert!(matches!(
        c.header.code,
        MessageClass::Response(ResponseType::Changed) | MessageClass::Empty
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.ingest.records().len(), 1);
    assert!(h.stats.snapshot().duplicates >= 2);
    h.stop().await;
}

#[tokio::test]
async fn a_lost_response_is_repeated_identically_on_retransmission() {
    let h = Harness::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    let request = raw_post(7, b"lost-ack");
    socket.send(&request).await.unwrap();
    let first = recv(&socket).await; // the sensor "never got" this one
    h.ingest.wait_for(1).await;
    socket.send(&request).await.unwrap(); // its retransmission
    let second = recv(&socket).await;
    assert_eq!(first, second, "the cached answer, byte for byte");
    let p = wire::decode(&second).unwrap();
    assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(p.header.message_id, 7);
    assert_eq!(p.header.code, MessageClass::Response(ResponseType::Changed));
    assert_eq!(h.ingest.records().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn garbage_is_counted_quota_is_5_03_and_non_is_answered_non() {
    let h = Harness::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    socket.send(b"\x01\x02").await.unwrap();
    // a CON whose options do not parse: Reset
    socket.send(&[0x40, 0x02, 0x00, 0x09, 0xf1]).await.unwrap();
    let r = wire::decode(&recv(&socket).await).unwrap();
    assert_eq!((r.header.get_type(), r.header.message_id), (MessageType::Reset, 9));
    // the outbox is full: 5.03 with Max-Age
    let mut full = wire::decode(&raw_post(10, b"x")).unwrap();
    full.clear_option(CoapOption::UriPath);
    full.add_option(CoapOption::UriPath, b"v1".to_vec());
    full.add_option(CoapOption::UriPath, b"full".to_vec());
    socket.send(&full.to_bytes_unlimited().unwrap()).await.unwrap();
    let r = wire::decode(&recv(&socket).await).unwrap();
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::ServiceUnavailable));
    assert!(wire::option_values(&r, 14).next().is_some(), "Max-Age");
    // NON in, NON out
    let mut non = wire::decode(&raw_post(11, b"non")).unwrap();
    non.header.set_type(MessageType::NonConfirmable);
    socket.send(&non.to_bytes_unlimited().unwrap()).await.unwrap();
    let r = wire::decode(&recv(&socket).await).unwrap();
    assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
    let s = h.stats.snapshot();
    assert_eq!(s.malformed, 2);
    assert_eq!(s.quota_exceeded, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_job_that_panics_is_answered_5_00_and_the_endpoint_keeps_serving() {
    let h = Harness::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    let mut bad = wire::decode(&raw_post(20, b"x")).unwrap();
    bad.clear_option(CoapOption::UriPath);
    bad.add_option(CoapOption::UriPath, b"v1".to_vec());
    bad.add_option(CoapOption::UriPath, b"panic".to_vec());
    socket.send(&bad.to_bytes_unlimited().unwrap()).await.unwrap();
    let r = wire::decode(&recv(&socket).await).unwrap();
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::InternalServerError));
    // the next request is served as usual
    socket.send(&raw_post(21, b"after")).await.unwrap();
    let r = wire::decode(&recv(&socket).await).unwrap();
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
    assert_eq!(h.ingest.wait_for(1).await.len(), 1);
    h.stop().await;
}

/// The Python venv with aiocoap: `$AIOCOAP_VENV`, or one made in a temp dir. `None` (with a
/// skip line) when pip cannot install it, unless `CI` is set.
async fn aiocoap_python(dir: &std::path::Path) -> Option<PathBuf> {
    let venv = match std::env::var_os("AIOCOAP_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let venv = dir.join("venv");
            let made = Process::new("python3").arg("-m").arg("venv").arg(&venv).status().await;
            let installed = match made {
                Ok(s) if s.success() => Process::new(venv.join("bin/pip"))
                    .args(["install", "-q", "aiocoap>=0.4.7,<0.5"])
                    .status()
                    .await
                    .is_ok_and(|s| s.success()),
                _ => false,
            };
            if !installed {
                assert!(std::env::var_os("CI").is_none(), "aiocoap cannot be installed in CI");
                eprintln!("SKIP: aiocoap not installable");
                return None;
            }
            venv
        }
    };
    Some(venv.join("bin/python"))
}

const AIOCOAP_SCRIPT: &str = r#"
import asyncio, sys, json
from aiocoap import Context, Message, POST
from aiocoap.optiontypes import StringOption

async def post(ctx, uri, auth, query, payload):
    req = Message(code=POST, uri=uri, payload=payload)
    if auth is not None:
        req.opt.add_option(StringOption(4209, auth))
    if query is not None:
        req.opt.uri_query = (query,)
    resp = await asyncio.wait_for(ctx.request(req).response, 15)
    command = None
    for o in resp.opt.option_list():
        if o.number == 4210:
            command = o.value.decode() if isinstance(o.value, bytes) else str(o.value)
    return {"code": str(resp.code), "command": command, "payload": resp.payload.decode(errors="replace")}

async def main():
    base, good, bad = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = await Context.create_client_context()
    out = {}
    # the queued command comes back on the first contact (with ct= it would also be waited for)
    out["command"] = await post(ctx, base + "/v1/telemetry", good, "ct=5", b"aio-4")
    out["post"] = await post(ctx, base + "/v1/telemetry", good, None, b"aio-1")
    out["query"] = await post(ctx, base + "/v1/telemetry", good, "data_schema=aio&as=sensor1", b"aio-2")
    out["wrong"] = await post(ctx, base + "/v1/telemetry", bad, None, b"aio-3")
    print(json.dumps(out))
    await ctx.shutdown()

asyncio.run(main())
"#;

#[tokio::test]
async fn aiocoap_post_query_wrong_credentials_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let Some(python) = aiocoap_python(dir.path()).await else { return };
    let h = Harness::start().await;
    h.commands.queue("sensor1@app", "set-led", b"on");
    let script = dir.path().join("client.py");
    std::fs::write(&script, AIOCOAP_SCRIPT).unwrap();
    let base = format!("coap://127.0.0.1:{}", h.addr.port());
    let mut c = Process::new(python);
    c.arg(&script)
        .args([&base, &basic("sensor1@app:pw"), &basic("sensor1@app:wrong")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["post"]["code"].as_str().unwrap().contains("2.04"), "{v}");
    assert!(v["query"]["code"].as_str().unwrap().contains("2.04"), "{v}");
    assert!(v["wrong"]["code"].as_str().unwrap().contains("4.03"), "{v}");
    assert_eq!(v["wrong"]["payload"], "authentication failed");
    assert!(v["command"]["code"].as_str().unwrap().contains("2.05"), "{v}");
    assert_eq!(v["command"]["command"], "set-led");
    assert_eq!(v["command"]["payload"], "on");
    let records = h.ingest.wait_for(3).await;
    let payloads: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(payloads, [&b"aio-4"[..], b"aio-1", b"aio-2"]);
    assert_eq!(records[2].data_schema.as_deref(), Some("aio"));
    h.stop().await;
}
