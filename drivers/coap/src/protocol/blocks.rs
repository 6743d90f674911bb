//! Block-wise transfer state (RFC 7959): uploads being reassembled from Block1 blocks, and
//! answer bodies too large for one datagram waiting for their Block2 continuations. Keyed by
//! peer and resource (path and query); memory is charged per peer and in total, and a transfer
//! not continued within its lifetime is dropped.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use coap_lite::ResponseType;

use crate::{request::Refusal, wire::Block};

/// Bookkeeping cost charged per transfer besides its bytes (map entry, key).
const OVERHEAD: usize = 64;

type Key = (SocketAddr, Vec<u8>);

struct Upload {
    data: Vec<u8>,
    szx: u8,
    expires: Instant,
}

/// A large answer: the options every block repeats, and the whole payload.
#[derive(Clone)]
pub struct Body {
    resource: Vec<u8>,
    pub code: ResponseType,
    pub options: Vec<(u16, Vec<u8>)>,
    pub payload: Bytes,
    expires: Instant,
}

pub struct Blocks {
    uploads: HashMap<Key, Upload>,
    /// At most one per peer (a sensor has one request outstanding, RFC 7252 NSTART = 1).
    bodies: HashMap<SocketAddr, Body>,
    per_peer: HashMap<SocketAddr, usize>,
    total: usize,
    max_message: usize,
    max_per_peer: usize,
    max_total: usize,
    lifetime: Duration,
}

impl Blocks {
    pub fn new(
        max_message: usize,
        max_per_peer: usize,
        max_total: usize,
        lifetime: Duration,
    ) -> Self {
        Self {
            uploads: HashMap::new(),
            bodies: HashMap::new(),
            per_peer: HashMap::new(),
            total: 0,
            max_message,
            max_per_peer,
            max_total,
            lifetime,
        }
    }

    /// Bytes held, over all peers.
    pub fn bytes(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.uploads.is_empty() && self.bodies.is_empty()
    }

    fn too_large(&self) -> Refusal {
        let mut r = Refusal::new(
            ResponseType::RequestEntityTooLarge,
            format!("message larger than {} bytes", self.max_message),
        );
        r.size1 = u32::try_from(self.max_message).ok();
        r
    }

    fn charge(&mut self, peer: SocketAddr, add: usize) {
        *self.per_peer.entry(peer).or_default() += add;
        self.total += add;
    }

    fn release(&mut self, peer: SocketAddr, sub: usize) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(sub);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        self.total = self.total.saturating_sub(sub);
    }

    fn upload_cost(key: &Key, data_len: usize) -> usize {
        data_len + key.1.len() + OVERHEAD
    }

    fn remove_upload(&mut self, key: &Key) -> Option<Upload> {
        let upload = self.uploads.remove(key)?;
        self.release(key.0, Self::upload_cost(key, upload.data.len()));
        Some(upload)
    }

    /// Takes one block of an upload. `Ok(None)`: more blocks expected; `Ok(Some(body))`: this
    /// was the last block and `body` is the whole message.
    pub fn upload(
        &mut self,
        peer: SocketAddr,
        resource: Vec<u8>,
        block: Block,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Bytes>, Refusal> {
        let key = (peer, resource);
        if block.more && payload.len() != block.size() {
            self.remove_upload(&key);
            return Err(Refusal::bad_request(format!(
                "block {} is {} bytes, its Block1 size is {}",
                block.num,
                payload.len(),
                block.size()
            )));
        }
        let offset = block.offset().ok_or_else(|| self.too_large())?;
        let mut data = if block.num == 0 {
            // a new transfer replaces an unfinished one for the same resource
            self.remove_upload(&key);
            Vec::new()
        } else {
            match self.remove_upload(&key) {
                Some(u) if u.data.len() == offset => u.data,
                Some(u) if u.data.len() > offset && u.szx > block.szx => {
                    // the sensor switched to smaller blocks mid-transfer (RFC 7959 §2.3):
                    // offsets stay valid, so keep what came up to this one
                    let mut d = u.data;
                    d.truncate(offset);
                    d
                }
                _ => {
                    return Err(Refusal::new(
                        ResponseType::RequestEntityIncomplete,
                        format!("block {} does not continue an upload in progress", block.num),
                    ));
                }
            }
        };
        if offset + payload.len() > self.max_message {
            return Err(self.too_large());
        }
        if !block.more {
            data.extend_from_slice(payload);
            return Ok(Some(Bytes::from(data)));
        }
        let cost = Self::upload_cost(&key, offset + payload.len());
        let peer_used = self.per_peer.get(&peer).copied().unwrap_or(0);
        if peer_used + cost > self.max_per_peer || self.total + cost > self.max_total {
            let mut r = self.too_large();
            r.text = "too many block-wise transfers in progress; try later".into();
            r.code = ResponseType::ServiceUnavailable;
            r.max_age = Some(5);
            r.size1 = None;
            return Err(r);
        }
        data.extend_from_slice(payload);
        self.charge(peer, cost);
        self.uploads.insert(key, Upload { data, szx: block.szx, expires: now + self.lifetime });
        Ok(None)
    }

    /// Keeps a large answer for its Block2 continuations, replacing the peer's earlier one.
    /// It is kept even above the memory limits: the command in it was already taken from its
    /// queue and must reach the sensor; one per peer bounds them.
    pub fn keep_body(&mut self, peer: SocketAddr, resource: Vec<u8>, mut body: Body, now: Instant) {
        self.remove_body(peer);
        body.expires = now + self.lifetime;
        body.resource = resource;
        self.charge(peer, Self::body_cost(&body));
        self.bodies.insert(peer, body);
    }

    fn body_cost(body: &Body) -> usize {
        body.payload.len() + body.resource.len() + OVERHEAD
    }

    fn remove_body(&mut self, peer: SocketAddr) {
        if let Some(b) = self.bodies.remove(&peer) {
            self.release(peer, Self::body_cost(&b));
        }
    }

    /// The kept body for a Block2 continuation of `resource`.
    pub fn body(&self, peer: SocketAddr, resource: &[u8]) -> Option<&Body> {
        self.bodies.get(&peer).filter(|b| b.resource == resource)
    }

    /// Drops transfers not continued within their lifetime.
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<Key> =
            self.uploads.iter().filter(|(_, u)| u.expires <= now).map(|(k, _)| k.clone()).collect();
        for key in stale {
            self.remove_upload(&key);
        }
        let stale: Vec<SocketAddr> =
            self.bodies.iter().filter(|(_, b)| b.expires <= now).map(|(k, _)| *k).collect();
        for peer in stale {
            self.remove_body(peer);
        }
    }

    /// Whether a peer holds any transfer state.
    pub fn holds(&self, peer: SocketAddr) -> bool {
        self.per_peer.contains_key(&peer)
    }
}

impl Body {
    pub fn new(code: ResponseType, options: Vec<(u16, Vec<u8>)>, payload: Bytes) -> Self {
        Self { resource: Vec::new(), code, options, payload, expires: Instant::now() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    fn blk(num: u32, more: bool) -> Block {
        Block { num, more, szx: 0 } // 16 bytes
    }

    #[test]
    fn reassembles_in_order_and_releases_memory() {
        let mut b = Blocks::new(1024, 2048, 4096, Duration::from_secs(10));
        let now = Instant::now();
        let r = b"k".to_vec();
        assert_eq!(b.upload(peer(), r.clone(), blk(0, true), &[1; 16], now).unwrap(), None);
        assert!(b.bytes() > 16);
        assert_eq!(b.upload(peer(), r.clone(), blk(1, true), &[2; 16], now).unwrap(), None);
        let body = b.upload(peer(), r.clone(), blk(2, false), &[3; 5], now).unwrap().unwrap();
        assert_eq!(body.len(), 37);
        assert_eq!(&body[16..32], &[2; 16]);
        assert_eq!(b.bytes(), 0);
        assert!(!b.holds(peer()));
    }

    #[test]
    fn refuses_gaps_wrong_sizes_and_oversize() {
        let mut b = Blocks::new(40, 2048, 4096, Duration::from_secs(10));
        let now = Instant::now();
        let r = b"k".to_vec();
        let e = b.upload(peer(), r.clone(), blk(1, true), &[0; 16], now).unwrap_err();
        assert_eq!(e.code, ResponseType::RequestEntityIncomplete);
        let e = b.upload(peer(), r.clone(), blk(0, true), &[0; 15], now).unwrap_err();
        assert_eq!(e.code, ResponseType::BadRequest);
        b.upload(peer(), r.clone(), blk(0, true), &[0; 16], now).unwrap();
        b.upload(peer(), r.clone(), blk(1, true), &[0; 16], now).unwrap();
        let e = b.upload(peer(), r.clone(), blk(2, true), &[0; 16], now).unwrap_err();
        assert_eq!(e.code, ResponseType::RequestEntityTooLarge);
        assert_eq!(e.size1, Some(40));
        assert_eq!(b.bytes(), 0, "a refused transfer is dropped");
    }

    #[test]
    fn memory_limits_per_peer_and_expiry() {
        let mut b = Blocks::new(1024, 200, 4096, Duration::from_secs(10));
        let now = Instant::now();
        b.upload(peer(), b"a".to_vec(), blk(0, true), &[0; 16], now).unwrap();
        b.upload(peer(), b"b".to_vec(), blk(0, true), &[0; 16], now).unwrap();
        let e = b.upload(peer(), b"c".to_vec(), blk(0, true), &[0; 16], now).unwrap_err();
        assert_eq!(e.code, ResponseType::ServiceUnavailable);
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        b.upload(other, b"c".to_vec(), blk(0, true), &[0; 16], now).unwrap();
        b.expire(now + Duration::from_secs(11));
        assert_eq!(b.bytes(), 0);
        assert!(b.is_empty());
    }
}
