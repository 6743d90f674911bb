//! Requests waiting for a command (HTTP and CoAP `ct`): per device, oldest first. A command is
//! handed to a waiter through a oneshot channel; a waiter that goes away (timeout, dropped
//! connection) with a command already handed to it gives it back, so nothing is lost.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use gw_model::{Command, Identity, Timestamp};
use tokio::sync::oneshot;

/// The waiting requests of one device, oldest first, by id.
type Queue = VecDeque<(u64, oneshot::Sender<Command>)>;

/// How long the end of a device's last wait is remembered: longer than any wait lasts.
const ENDED_KEPT_MS: u64 = 2 * 3600 * 1000;

#[derive(Default)]
pub struct Waiters {
    next: AtomicU64,
    map: Mutex<HashMap<Identity, Queue>>,
    /// When each device's last wait ended (answered, timed out, or gone).
    ended: Mutex<HashMap<Identity, Timestamp>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Queue>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a waiter for `device`; the id removes it again.
    pub fn register(&self, device: &Identity) -> (u64, oneshot::Receiver<Command>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().entry(device.clone()).or_default().push_back((id, tx));
        (id, rx)
    }

    /// The wait `id` of `device` ended at `now`.
    pub fn remove(&self, device: &Identity, id: u64, now: Timestamp) {
        let mut map = self.lock();
        if let Some(queue) = map.get_mut(device) {
            queue.retain(|(i, _)| *i != id);
            if queue.is_empty() {
                map.remove(device);
            }
        }
        drop(map);
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let cutoff = now.as_millis().saturating_sub(ENDED_KEPT_MS);
        if ended.len() > 1024 {
            ended.retain(|_, at| at.as_millis() >= cutoff);
        }
        ended.insert(device.clone(), now);
    }

    /// Whether `device` has no wait now and its last one ended at or after `since`: a
    /// message it sent at `since` to wait for a command has had its answer.
    pub fn ended_since(&self, device: &Identity, since: Timestamp) -> bool {
        if self.has(device) {
            return false;
        }
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.get(device).is_some_and(|at| *at >= since)
    }

    /// Hands `command` to the oldest live waiter of `device`: `None` when one took it, else
    /// the command back.
    pub fn hand(&self, device: &Identity, mut command: Command) -> Option<Command> {
        let mut map = self.lock();
        let Some(queue) = map.get_mut(device) else { return Some(command) };
        let result = loop {
            let Some((_, tx)) = queue.pop_front() else { break Some(command) };
            match tx.send(command) {
                Ok(()) => break None,
                Err(back) => command = back,
            }
        };
        if queue.is_empty() {
            map.remove(device);
        }
        result
    }

    /// Whether a request of `device` is waiting.
    pub fn has(&self, device: &Identity) -> bool {
        self.lock().get(device).is_some_and(|q| q.iter().any(|(_, tx)| !tx.is_closed()))
    }

    /// Requests waiting now, over all devices.
    pub fn count(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_model::{AppId, CommandName, DeviceId};

    fn command(name: &str) -> Command {
        Command {
            app: AppId::new("app").unwrap(),
            device: DeviceId::new("s1").unwrap(),
            name: CommandName::new(name).unwrap(),
            content_type: None,
            payload: Default::default(),
            created_at: Timestamp::from_millis(0),
            expires_at: None,
        }
    }

    #[test]
    fn hands_to_the_oldest_live_waiter_and_skips_gone_ones() {
        let w = Waiters::default();
        let dev = Identity::new(AppId::new("app").unwrap(), DeviceId::new("s1").unwrap());
        assert_eq!(w.hand(&dev, command("a")).unwrap().name, "a");
        let (_, gone) = w.register(&dev);
        let (_, mut first) = w.register(&dev);
        let (_, mut second) = w.register(&dev);
        drop(gone);
        assert!(w.has(&dev));
        assert_eq!(w.hand(&dev, command("x")), None);
        assert_eq!(first.try_recv().unwrap().name, "x");
        assert!(second.try_recv().is_err());
        assert_eq!(w.hand(&dev, command("y")), None);
        assert_eq!(second.try_recv().unwrap().name, "y");
        assert!(!w.has(&dev));
        assert_eq!(w.count(), 0);
        let (id, _rx) = w.register(&dev);
        w.remove(&dev, id, Timestamp::from_millis(5_000));
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn knows_when_a_devices_wait_ended() {
        let w = Waiters::default();
        let dev = Identity::new(AppId::new("app").unwrap(), DeviceId::new("s1").unwrap());
        let at = Timestamp::from_millis;
        assert!(!w.ended_since(&dev, at(0)), "never waited: the wait may be about to begin");
        let (id, _rx) = w.register(&dev);
        assert!(!w.ended_since(&dev, at(0)), "waiting now");
        w.remove(&dev, id, at(2_000));
        assert!(w.ended_since(&dev, at(1_000)), "the message of 1 s had its answer at 2 s");
        assert!(!w.ended_since(&dev, at(3_000)), "a later message's wait has not ended");
    }
}
