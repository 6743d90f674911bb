//! Bytes from a sensor through the codec into the session state machine: whatever arrives
//! after a successful login, the endpoint must not panic. The first byte picks the protocol
//! version and how eagerly ingests complete (so the in-flight window fills and drains).
#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gw_driver_mqtt::{Action, Codec, Connect, Login, Packet, Session, SessionConfig, Version};
use gw_model::{AppId, AuthOutcome, CommandName, IngestError, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let version = if mode & 1 == 0 { Version::V311 } else { Version::V5 };
    let quota = mode & 2 != 0;
    let codec = Codec::new(version, 512);
    let Ok(app) = AppId::new("gw") else { return };
    let config = SessionConfig {
        default_app: app,
        max_inflight: 1 + usize::from(mode >> 4),
        max_packet_size: 512,
        connect_timeout: Duration::from_secs(10),
    };
    let mut now = Instant::now();
    let mut session = Session::new(config, now, Timestamp::from_millis(0));
    let mut connect = Connect::new(version, "fuzz");
    connect.keep_alive = 2;
    connect.login = Some(Login { username: "sensor1@app".into(), password: "pw".into() });
    session.handle_packet(Packet::Connect(connect), now);
    let Ok(me) = "sensor1@app".parse() else { return };
    session.auth_done(AuthOutcome::Pass(me), now);
    let Ok(cmd) = CommandName::new("led") else { return };

    let mut buf = BytesMut::from(rest);
    let mut tokens = Vec::new();
    while !session.is_closed() {
        now += Duration::from_millis(100);
        let actions = match codec.decode(&mut buf) {
            Ok(Some(packet)) => session.handle_packet(packet, now),
            Ok(None) => break,
            Err(e) => session.bad_frame(&e, now),
        };
        for action in actions {
            if let Action::Ingest { token, .. } = action {
                tokens.push(token);
            }
        }
        if session.accepts_commands() {
            session.command(&cmd, Bytes::from_static(b"on"), None);
        }
        if !session.wants_read() {
            for t in tokens.drain(..).rev() {
                let result =
                    if quota { Err(IngestError::QuotaExceeded("fuzz".into())) } else { Ok(()) };
                session.ingest_done(t, result, now);
            }
        }
        session.tick(now);
    }
});
