#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use gw_model::{AppId, CommandName, DeviceId};
use proptest::prelude::*;

use super::*;

const LIMITS: QueueLimits = QueueLimits { max_per_device: 4, max_total: 10, max_bytes: 1000 };

fn cmd(device: &str, name: &str, payload: &[u8], expires: Option<u64>) -> Command {
    Command {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        name: CommandName::new(name).unwrap(),
        content_type: Some("text/plain".into()),
        payload: Bytes::copy_from_slice(payload),
        created_at: Timestamp::from_millis(1),
        expires_at: expires.map(Timestamp::from_millis),
    }
}

fn dev(device: &str) -> Identity {
    Identity::new(AppId::new("app").unwrap(), DeviceId::new(device).unwrap())
}

const NOW: Timestamp = Timestamp::from_millis(1000);

#[test]
fn takes_oldest_first_per_device_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    q.push(cmd("s1", "a", b"1", None), NOW).unwrap();
    q.push(cmd("s2", "x", b"2", None), NOW).unwrap();
    q.push(cmd("s1", "b", b"3", None), NOW).unwrap();
    assert_eq!(q.len(), 3);
    assert_eq!(q.take(&dev("s1"), NOW).unwrap().command.unwrap().command.name, "a");
    assert_eq!(q.take(&dev("s1"), NOW).unwrap().command.unwrap().command.name, "b");
    assert_eq!(q.take(&dev("s1"), NOW).unwrap(), Taken::default());
    assert_eq!(q.len_of(&dev("s2")), 1);
    assert_eq!(q.devices(), vec![dev("s2")]);
}

#[test]
fn a_lent_command_stays_queued_until_settled_and_comes_back_in_place_when_unlent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        q.push(cmd("s1", "a", b"1", None), NOW).unwrap();
        q.push(cmd("s1", "b", b"2", None), NOW).unwrap();
        q.push(cmd("s1", "c", b"3", None), NOW).unwrap();
        let a = q.lend(&dev("s1"), NOW).unwrap().command.unwrap();
        let b = q.lend(&dev("s1"), NOW).unwrap().command.unwrap();
        assert_eq!((a.command.name.as_str(), b.command.name.as_str()), ("a", "b"));
        assert_eq!((q.len_of(&dev("s1")), q.available_of(&dev("s1"))), (3, 1));
        // a contact takes what is not lent out
        assert_eq!(q.take(&dev("s1"), NOW).unwrap().command.unwrap().command.name, "c");
        // the session that had a and b ended: b reached the sensor, a did not
        q.settle(b.id).unwrap();
        q.unlend(a.id);
        q.settle(b.id).unwrap(); // twice: nothing happens
        assert_eq!(q.available_of(&dev("s1")), 1);
        assert_eq!(q.lend(&dev("s1"), NOW).unwrap().command.unwrap().id, a.id);
        // lent out when the gateway stops: delivered again after the restart
    }
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    let names: Vec<_> =
        q.peek_all(&dev("s1")).into_iter().map(|c| c.command.name.to_string()).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(q.available_of(&dev("s1")), 1);
}

#[test]
fn lent_commands_are_not_expired_under_their_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    q.push(cmd("s1", "a", b"1", Some(2000)), NOW).unwrap();
    q.push(cmd("s1", "b", b"2", Some(2000)), NOW).unwrap();
    let a = q.lend(&dev("s1"), NOW).unwrap().command.unwrap();
    let later = Timestamp::from_millis(3000);
    let expired = q.expire(later).unwrap();
    assert_eq!(expired.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(q.len_of(&dev("s1")), 1, "a is with the sensor's session");
    q.unlend(a.id);
    assert_eq!(q.expire(later).unwrap().len(), 1);
    assert!(q.is_empty());
}

#[test]
fn survives_reopen_and_does_not_hand_out_taken_commands_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        q.push(cmd("s1", "a", b"1", None), NOW).unwrap();
        q.push(cmd("s1", "b", b"2", Some(5000)), NOW).unwrap();
        q.push(cmd("s1", "c", b"3", None), NOW).unwrap();
        assert_eq!(q.take(&dev("s1"), NOW).unwrap().command.unwrap().command.name, "a");
        // dropped without any close: every call was durable when it returned
    }
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    let names: Vec<_> =
        q.peek_all(&dev("s1")).into_iter().map(|c| c.command.name.to_string()).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(q.peek_all(&dev("s1"))[0].command, cmd("s1", "b", b"2", Some(5000)));
    // new ids continue after the old ones
    let id = q.push(cmd("s1", "d", b"4", None), NOW).unwrap();
    assert!(id > q.peek_all(&dev("s1"))[1].id);
}

#[test]
fn expired_commands_are_dropped_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    q.push(cmd("s1", "old", b"", Some(1500)), NOW).unwrap();
    q.push(cmd("s1", "new", b"", Some(9000)), NOW).unwrap();
    q.push(cmd("s2", "old2", b"", Some(1200)), NOW).unwrap();
    assert_eq!(q.next_expiry(), Some(Timestamp::from_millis(1200)));
    let taken = q.take(&dev("s1"), Timestamp::from_millis(2000)).unwrap();
    assert_eq!(taken.command.unwrap().command.name, "new");
    assert_eq!(taken.expired.len(), 1);
    assert_eq!(taken.expired[0].name, "old");
    let expired = q.expire(Timestamp::from_millis(2000)).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].name, "old2");
    assert!(q.is_empty());
    assert_eq!(q.next_expiry(), None);
    drop(q);
    assert!(CommandQueue::open(dir.path(), LIMITS).unwrap().is_empty());
}

#[test]
fn refuses_an_already_expired_command() {
    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    let err = q.push(cmd("s1", "a", b"", Some(NOW.as_millis())), NOW).unwrap_err();
    assert!(matches!(err, StoreError::CommandExpired), "{err}");
    assert!(q.is_empty());
}

#[test]
fn bounds_per_device_total_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    for i in 0..4 {
        q.push(cmd("s1", &format!("c{i}"), b"", None), NOW).unwrap();
    }
    let err = q.push(cmd("s1", "c4", b"", None), NOW).unwrap_err();
    assert!(matches!(err, StoreError::CommandQueueFull { max: 4, .. }), "{err}");
    assert!(err.to_string().contains("s1@app"), "{err}");
    for d in ["s2", "s3"] {
        for i in 0..3 {
            q.push(cmd(d, &format!("c{i}"), b"", None), NOW).unwrap();
        }
    }
    let err = q.push(cmd("s4", "c", b"", None), NOW).unwrap_err();
    assert!(matches!(err, StoreError::CommandStoreFull { queued: 10, .. }), "{err}");
    // taking one makes room again
    q.take(&dev("s2"), NOW).unwrap();
    q.push(cmd("s4", "c", b"", None), NOW).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    q.push(cmd("s1", "big", &[0; 900], None), NOW).unwrap();
    let err = q.push(cmd("s2", "big", &[0; 101], None), NOW).unwrap_err();
    assert!(matches!(err, StoreError::CommandStoreFull { bytes: 900, .. }), "{err}");
    q.push(cmd("s2", "fits", &[0; 100], None), NOW).unwrap();
}

#[test]
fn reopening_keeps_commands_above_smaller_limits() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        for i in 0..4 {
            q.push(cmd("s1", &format!("c{i}"), b"", None), NOW).unwrap();
        }
    }
    let small = QueueLimits { max_per_device: 1, ..LIMITS };
    let q = CommandQueue::open(dir.path(), small).unwrap();
    assert_eq!(q.len_of(&dev("s1")), 4);
    assert!(q.push(cmd("s1", "more", b"", None), NOW).is_err());
}

#[test]
fn restore_puts_a_command_back_in_its_place_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        q.push(cmd("s1", "a", b"", None), NOW).unwrap();
        q.push(cmd("s1", "b", b"", None), NOW).unwrap();
        let a = q.take(&dev("s1"), NOW).unwrap().command.unwrap();
        q.restore(a.clone()).unwrap();
        q.restore(a).unwrap(); // twice is once
        assert_eq!(q.len(), 2);
    }
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    let names: Vec<_> =
        q.peek_all(&dev("s1")).into_iter().map(|c| c.command.name.to_string()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn torn_tail_after_a_crash_is_cut_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        q.push(cmd("s1", "a", b"payload-a", None), NOW).unwrap();
        q.push(cmd("s1", "b", b"payload-b", None), NOW).unwrap();
        q.take(&dev("s1"), NOW).unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    let full = fs::read(&path).unwrap();
    let (entries, _) = scan(&full[MAGIC.len()..]);
    let mut boundaries = vec![MAGIC.len()];
    for (_, size) in &entries {
        boundaries.push(boundaries.last().unwrap() + *size as usize);
    }
    // what a reopen must see when the file ends after k whole records
    let expected = |k: usize| -> Vec<&str> {
        match k {
            0 => vec![],
            1 => vec!["a"],
            2 => vec!["a", "b"],
            _ => vec!["b"],
        }
    };
    for cut in MAGIC.len()..=full.len() {
        let dir2 = tempfile::tempdir().unwrap();
        fs::write(dir2.path().join(LOG_FILE), &full[..cut]).unwrap();
        let whole = boundaries.iter().filter(|b| **b <= cut).count() - 1;
        let q = CommandQueue::open(dir2.path(), LIMITS).unwrap();
        let names: Vec<_> =
            q.peek_all(&dev("s1")).into_iter().map(|c| c.command.name.to_string()).collect();
        assert_eq!(names, expected(whole), "cut at {cut}");
        // the tail was cut: appending works and survives another reopen
        q.push(cmd("s9", "after", b"", None), NOW).unwrap();
        drop(q);
        let q = CommandQueue::open(dir2.path(), LIMITS).unwrap();
        assert_eq!(q.len_of(&dev("s9")), 1, "cut at {cut}");
    }
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
        q.push(cmd("s1", "a", b"x", None), NOW).unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    let good = fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0xff; 37]).unwrap();
    drop(f);
    let q = CommandQueue::open(dir.path(), LIMITS).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), good);
}

#[test]
fn a_file_that_is_not_a_command_log_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(LOG_FILE), b"something else entirely").unwrap();
    let err = CommandQueue::open(dir.path(), LIMITS).unwrap_err();
    assert!(matches!(err, StoreError::CommandLogCorrupt { .. }), "{err}");
    assert!(err.to_string().contains(LOG_FILE), "{err}");
}

#[test]
fn log_is_0600_and_compacts_once_mostly_dead() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits { max_per_device: 10, max_total: 100, max_bytes: 1 << 20 };
    let q = CommandQueue::open(dir.path(), limits).unwrap();
    let path = dir.path().join(LOG_FILE);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    q.push(cmd("keep", "k", b"kept", None), NOW).unwrap();
    let mut max_size = 0;
    for i in 0..200 {
        q.push(cmd("s1", &format!("c{i}"), &[7; 1000], None), NOW).unwrap();
        q.take(&dev("s1"), NOW).unwrap();
        max_size = max_size.max(fs::metadata(&path).unwrap().len());
    }
    assert!(max_size < 2 * COMPACT_MIN_BYTES, "log grew to {max_size}");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    drop(q);
    let q = CommandQueue::open(dir.path(), limits).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q.peek_all(&dev("keep"))[0].command.payload, Bytes::from_static(b"kept"));
    assert!(q.stats().log_bytes < COMPACT_MIN_BYTES);
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        device: u8,
        expires: Option<u16>,
        size: u8,
    },
    Take {
        device: u8,
    },
    Expire,
    Advance(u16),
    Reopen,
    /// A crash that leaves a partial record behind.
    CrashWithTornTail(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, proptest::option::of(0u16..500), any::<u8>())
            .prop_map(|(device, expires, size)| Op::Push { device, expires, size }),
        3 => (0u8..3).prop_map(|device| Op::Take { device }),
        1 => Just(Op::Expire),
        2 => (0u16..300).prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::CrashWithTornTail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The queue behaves like a simple model (per-device FIFO with bounds and expiry) under
    /// any sequence of operations, reopens and crashes that leave a torn record.
    #[test]
    fn behaves_like_the_model_across_crashes(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueueLimits { max_per_device: 3, max_total: 6, max_bytes: 600 };
        let mut q = CommandQueue::open(dir.path(), limits).unwrap();
        let mut model: BTreeMap<u8, VecDeque<(u32, Option<u64>, usize)>> = BTreeMap::new();
        let mut now = 1000u64;
        let mut serial = 0u32;
        let name = |d: u8| format!("s{d}");
        for op in ops {
            match op {
                Op::Push { device, expires, size } => {
                    serial += 1;
                    let expires = expires.map(|e| now + u64::from(e));
                    let c = cmd(&name(device), &format!("c{serial}"), &vec![1; size as usize], expires);
                    let total: usize = model.values().map(VecDeque::len).sum();
                    let bytes: usize = model.values().flatten().map(|e| e.2).sum();
                    let on_device = model.get(&device).map_or(0, VecDeque::len);
                    let expect_ok = expires.is_none_or(|e| e > now)
                        && on_device < 3 && total < 6 && bytes + size as usize <= 600;
                    let result = q.push(c, Timestamp::from_millis(now));
                    prop_assert_eq!(result.is_ok(), expect_ok, "{:?}", result);
                    if expect_ok {
                        model.entry(device).or_default().push_back((serial, expires, size as usize));
                    }
                }
                Op::Take { device } => {
                    let taken = q.take(&dev(&name(device)), Timestamp::from_millis(now)).unwrap();
                    let entry = model.entry(device).or_default();
                    let mut expired = 0;
                    let mut got = None;
                    while let Some((s, e, _)) = entry.pop_front() {
                        if e.is_some_and(|e| now >= e) {
                            expired += 1;
                        } else {
                            got = Some(s);
                            break;
                        }
                    }
                    prop_assert_eq!(taken.expired.len(), expired);
                    prop_assert_eq!(taken.command.map(|c| c.command.name.to_string()), got.map(|s| format!("c{s}")));
                }
                Op::Expire => {
                    let expired = q.expire(Timestamp::from_millis(now)).unwrap();
                    let mut n = 0;
                    for entry in model.values_mut() {
                        let before = entry.len();
                        entry.retain(|(_, e, _)| !e.is_some_and(|e| now >= e));
                        n += before - entry.len();
                    }
                    prop_assert_eq!(expired.len(), n);
                }
                Op::Advance(ms) => now += u64::from(ms),
                Op::Reopen => {
                    drop(q);
                    q = CommandQueue::open(dir.path(), limits).unwrap();
                }
                Op::CrashWithTornTail(bytes) => {
                    drop(q);
                    let mut f = OpenOptions::new().append(true).open(dir.path().join(LOG_FILE)).unwrap();
                    f.write_all(&bytes).unwrap();
                    drop(f);
                    q = CommandQueue::open(dir.path(), limits).unwrap();
                }
            }
            for (device, entry) in &model {
                let names: Vec<String> = q.peek_all(&dev(&name(*device))).into_iter()
                    .map(|c| c.command.name.to_string()).collect();
                let expected: Vec<String> = entry.iter().map(|(s, _, _)| format!("c{s}")).collect();
                prop_assert_eq!(names, expected);
            }
            prop_assert_eq!(q.len(), model.values().map(VecDeque::len).sum::<usize>());
        }
    }
}

#[test]
fn pushes_from_many_threads_share_fdatasyncs_and_all_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits { max_per_device: 1000, max_total: 1000, max_bytes: 1 << 20 };
    let q = std::sync::Arc::new(CommandQueue::open(dir.path(), limits).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let q = std::sync::Arc::clone(&q);
            std::thread::spawn(move || {
                for n in 0..25 {
                    q.push(cmd(&format!("s{t}"), &format!("c{n}"), b"x", None), NOW).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(q.len(), 200);
    let syncs = q.syncs();
    assert!((1..=200).contains(&syncs), "{syncs} syncs");
    eprintln!("200 pushes from 8 threads: {syncs} fdatasyncs");
    // deterministic: while a sync is under way, four pushes write and wait; the one sync
    // that follows covers all four
    q.sync.lock().unwrap().syncing = true;
    let before = (q.syncs(), q.lock().written);
    let waiting: Vec<_> = (0..4)
        .map(|t| {
            let q = std::sync::Arc::clone(&q);
            std::thread::spawn(move || q.push(cmd(&format!("w{t}"), "c", b"x", None), NOW).unwrap())
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while q.lock().written < before.1 + 4 {
        assert!(std::time::Instant::now() < deadline, "the pushes did not write");
        std::thread::yield_now();
    }
    q.end_sync(None); // the sync under way ends without covering them
    for t in waiting {
        t.join().unwrap();
    }
    assert_eq!(q.syncs(), before.0 + 1, "one fdatasync for four pushes");
    drop(q);
    let q = CommandQueue::open(dir.path(), limits).unwrap();
    assert_eq!(q.len(), 204);
    for t in 0..8 {
        let names: Vec<_> = q
            .peek_all(&dev(&format!("s{t}")))
            .into_iter()
            .map(|c| c.command.name.to_string())
            .collect();
        assert_eq!(
            names,
            (0..25).map(|n| format!("c{n}")).collect::<Vec<_>>(),
            "in order per device"
        );
    }
}
