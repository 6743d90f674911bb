//! The publish pipeline's order, as a property: whatever the commits' completion order, one
//! connection's publishes reach the ingest in the order they were sent, and their PUBACKs come
//! back in that order too.

use proptest::prelude::*;

use super::*;

/// Sends every publish of `delays` in one write (the endpoint decodes them from one read
/// buffer), lets the n-th take `delays[n]` ms in the ingest, and returns the PUBACKs' pkids in
/// arrival order and the payloads in the order the ingest saw them.
async fn run(version: Version, delays: &[u64]) -> (Vec<u16>, Vec<Bytes>, usize) {
    let h = Harness::with(|c| c.max_inflight = 64).await;
    h.ingest.delays.lock().unwrap().extend(delays.iter().map(|d| Duration::from_millis(*d)));
    let (mut s, codec, mut buf) = raw_connect(h.addr, version).await;
    let mut out = BytesMut::new();
    for (i, _) in delays.iter().enumerate() {
        let payload = Bytes::from(format!("{{\"n\":{i}}}"));
        let mut p = Publish::new("temperature", QoS::AtLeastOnce, payload);
        p.pkid = i as u16 + 1;
        codec.encode(&Packet::Publish(p), &mut out).unwrap();
    }
    tokio::io::AsyncWriteExt::write_all(&mut s, &out).await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < delays.len() {
        let got = tokio::time::timeout(DEADLINE, read_packet(&mut s, &mut buf, &codec))
            .await
            .expect("a PUBACK within the deadline")
            .unwrap();
        match got {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.reason, PubAckReason::Success);
                acked.push(a.pkid);
            }
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    let arrivals = h.ingest.arrivals.lock().unwrap().clone();
    let stored = h.ingest.records().len();
    h.stop().await;
    (acked, arrivals, stored)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_connections_publishes_keep_their_order_however_their_commits_finish(
        delays in proptest::collection::vec(0u64..4, 1..48),
        v5 in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let version = if v5 { Version::V5 } else { Version::V311 };
        let (acked, arrivals, stored) = rt.block_on(run(version, &delays));
        let sent: Vec<u16> = (1..=delays.len() as u16).collect();
        prop_assert_eq!(acked, sent, "PUBACKs in the order of the publishes");
        let expected: Vec<Bytes> =
            (0..delays.len()).map(|i| Bytes::from(format!("{{\"n\":{i}}}"))).collect();
        prop_assert_eq!(arrivals, expected, "handed to the ingest in the order sent");
        prop_assert_eq!(stored, delays.len());
    }
}
