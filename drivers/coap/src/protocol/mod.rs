//! The pure protocol core: datagrams, answers and time in; datagrams and jobs out. No sockets,
//! no tokio, no clock: the caller passes `now`. It does RFC 7252's message layer (CON/NON,
//! piggy-backed or separate responses, retransmission of separate CON responses with
//! exponential backoff, de-duplication by message id), RFC 7959's block-wise transfer, the
//! per-peer rate limit, and every bound on state. What it cannot do itself (check credentials,
//! make a message durable, wait for a command) it hands out as a [`Job`]; the answer comes
//! back through [`Core::on_answer`].
//!
//! A request is answered from the exchange table when its `(peer, message id)` is seen again
//! within `exchange_lifetime`, so a retransmitted CON is never stored twice: while its job
//! runs, a duplicate gets an empty ACK (the answer follows as a separate response); once
//! answered, the duplicate gets the very same datagram again.
//!
//! Strangers leave no lasting state: UDP sources are spoofed for free, so a peer enters the
//! peer table only when one of its requests becomes a job (it presents credentials), and only
//! a peer whose credentials passed is remembered afterwards. Every other answer (4.01 for a
//! request without option 4209, 4.03 for a failed login, 4.00 for a malformed request) is sent
//! and forgotten: a duplicate is simply answered again. A block-wise upload (Block1) starts only
//! after its first block's credentials pass ([`JobKind::Authenticate`]), so reassembly memory
//! goes to sensors, never to strangers.

mod blocks;
#[cfg(test)]
mod tests;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use gw_model::{AppId, Command};

use crate::{
    CoapConfig,
    request::{self, Publish, Refusal},
    stats::Counters,
    wire::{self, Block, COMMAND_OPTION, Malformed, Reply},
};
use blocks::{Blocks, Body};

const CONTENT_FORMAT: u16 = 12;
const BLOCK2: u16 = 23;
const BLOCK1: u16 = 27;
const SIZE2: u16 = 28;
const ETAG: u16 = 4;
const MAX_AGE: u16 = 14;
const SIZE1: u16 = 60;
/// How often remembered exchanges, idle peers and stale transfers are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Identifies a job handed out by [`Core::on_datagram`].
pub type JobId = u64;

/// A publish the caller must carry out: authenticate, ingest, maybe wait for a command; then
/// call [`Core::on_answer`] with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub peer: SocketAddr,
    pub kind: JobKind,
    pub publish: Publish,
}

/// What a [`Job`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Authenticate, store, maybe wait for a command: answered `Stored`, `Command` or `Refused`.
    Publish,
    /// Only check the credentials (and `as=`) of the first block of a block-wise upload (its
    /// payload is empty): answered `Authenticated` or `Refused`.
    Authenticate,
}

/// What the core asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send { peer: SocketAddr, datagram: Vec<u8> },
    Process(Box<Job>),
}

/// The outcome of a [`Job`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The message is durable and no command is waiting: 2.04.
    Stored,
    /// The message is durable and this command was taken for the sensor: 2.05 + 4210.
    Command(Command),
    /// Not stored: the refusal's code and diagnostic.
    Refused(Refusal),
    /// The credentials of a [`JobKind::Authenticate`] job passed.
    Authenticated,
}

/// The core's limits and timers (from [`CoapConfig`]).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub default_app: AppId,
    pub max_message_size: usize,
    pub block_memory_per_peer: usize,
    pub block_memory_total: usize,
    pub block_szx: u8,
    pub max_exchanges: usize,
    pub max_exchanges_per_peer: usize,
    pub exchange_lifetime: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_per_peer: usize,
    pub max_peers: usize,
    pub rate_limit: f64,
    pub rate_burst: f64,
    pub max_command_wait: Duration,
    pub piggyback_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_retransmit: u32,
}

impl CoreConfig {
    pub fn new(config: &CoapConfig, default_app: AppId) -> Self {
        let size = |b: gw_model::ByteSize| usize::try_from(b.bytes()).unwrap_or(usize::MAX);
        Self {
            default_app,
            max_message_size: size(config.max_message_size),
            block_memory_per_peer: size(config.block_memory_per_peer),
            block_memory_total: size(config.block_memory_total),
            block_szx: Block::szx_of(config.block_size),
            max_exchanges: config.max_exchanges,
            max_exchanges_per_peer: config.max_exchanges_per_peer,
            exchange_lifetime: config.exchange_lifetime,
            max_in_flight: config.max_in_flight,
            max_in_flight_per_peer: config.max_in_flight_per_peer,
            max_peers: config.max_peers,
            rate_limit: f64::from(config.rate_limit),
            rate_burst: f64::from(config.rate_burst),
            max_command_wait: config.max_command_wait,
            piggyback_timeout: config.piggyback_timeout,
            ack_timeout: config.ack_timeout,
            max_retransmit: config.max_retransmit,
        }
    }
}

type Key = (SocketAddr, u16);

struct Exchange {
    generation: u64,
    state: State,
}

enum State {
    Pending(Pending),
    /// Answered: the datagram a duplicate gets.
    Done(Vec<u8>),
}

struct Pending {
    job: JobId,
    con: bool,
    token: Vec<u8>,
    /// An empty ACK was sent: the answer goes out as a separate CON response.
    acked: bool,
    /// The last Block1 of a block-wise upload, echoed in the answer.
    block1: Option<Block>,
    /// The block size the sensor asked for (early Block2 negotiation).
    block2_szx: u8,
    resource: Vec<u8>,
    /// The first block of an upload, kept while its credentials are checked.
    first_block: Option<Vec<u8>>,
}

struct Peer {
    tokens: f64,
    refilled: Instant,
    /// Remembered exchanges of this peer, oldest first (may name entries already gone).
    done: VecDeque<(u16, u64)>,
    in_flight: usize,
    /// Credentials of this peer passed: its answers are remembered for duplicates.
    authenticated: bool,
}

/// A separate CON response awaiting the sensor's ACK.
struct Outgoing {
    datagram: Vec<u8>,
    sent: u32,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Piggyback { peer: SocketAddr, mid: u16, generation: u64 },
    Retransmit { peer: SocketAddr, mid: u16 },
}

/// The protocol state of one endpoint (all peers).
pub struct Core {
    config: CoreConfig,
    counters: Arc<Counters>,
    exchanges: HashMap<Key, Exchange>,
    /// Remembered (answered) exchanges in answer order, with their expiry.
    order: VecDeque<(Key, u64, Instant)>,
    remembered: usize,
    peers: HashMap<SocketAddr, Peer>,
    jobs: HashMap<JobId, (Key, u64)>,
    in_flight: usize,
    outgoing: HashMap<Key, Outgoing>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// The piggyback deadlines of CON requests: all `piggyback_timeout` after their arrival,
    /// so in order already (a queue, not the heap: one push and one pop per request).
    piggybacks: VecDeque<(Instant, Timer)>,
    blocks: Blocks,
    next_generation: u64,
    next_job: JobId,
    next_mid: u16,
    rng: u64,
    last_sweep: Option<Instant>,
}

impl Core {
    /// A core with no state. `seed` varies the first message id and retransmission jitter.
    pub fn new(config: CoreConfig, counters: Arc<Counters>, seed: u64) -> Self {
        let blocks = Blocks::new(
            config.max_message_size,
            config.block_memory_per_peer,
            config.block_memory_total,
            config.exchange_lifetime,
        );
        let rng = seed | 1;
        Self {
            config,
            counters,
            exchanges: HashMap::new(),
            order: VecDeque::new(),
            remembered: 0,
            peers: HashMap::new(),
            jobs: HashMap::new(),
            in_flight: 0,
            outgoing: HashMap::new(),
            timers: BinaryHeap::new(),
            piggybacks: VecDeque::new(),
            blocks,
            next_generation: 1,
            next_job: 1,
            next_mid: (seed >> 16) as u16,
            rng,
            last_sweep: None,
        }
    }

    /// Requests being processed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When [`on_tick`](Self::on_tick) should next run, if anything is time-bound.
    pub fn next_deadline(&self) -> Option<Instant> {
        let heap = self.timers.peek().map(|Reverse((t, _))| *t);
        let piggyback = self.piggybacks.front().map(|(t, _)| *t);
        let timer = match (heap, piggyback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sweep = self.has_sweepable().then(|| match self.last_sweep {
            Some(t) => t + SWEEP_EVERY,
            None => Instant::now(),
        });
        match (timer, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn has_sweepable(&self) -> bool {
        !self.order.is_empty() || !self.peers.is_empty() || !self.blocks.is_empty()
    }

    /// One datagram from `peer`.
    pub fn on_datagram(
        &mut self,
        peer: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        Counters::add(&self.counters.datagrams);
        match wire::decode(datagram) {
            Err(Malformed::NotCoap) => Counters::add(&self.counters.malformed),
            Err(Malformed::Format { con, message_id }) => {
                Counters::add(&self.counters.malformed);
                if con {
                    send(out, peer, Reply::empty(MessageType::Reset, message_id).encode());
                }
            }
            Ok(packet) => self.on_message(peer, packet, now, out),
        }
        self.update_gauges();
    }

    fn on_message(
        &mut self,
        peer: SocketAddr,
        packet: Packet,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let mid = packet.header.message_id;
        let kind = packet.header.get_type();
        match (kind, packet.header.code) {
            (MessageType::Acknowledgement | MessageType::Reset, MessageClass::Empty) => {
                // the sensor took (ACK) or refused (Reset) a separate response: stop sending it
                self.outgoing.remove(&(peer, mid));
                if kind == MessageType::Reset {
                    Counters::add(&self.counters.resets);
                }
            }
            // A CON ping (empty) or a message we cannot take (a response: we send no
            // requests) is rejected with a Reset; a NON one is ignored.
            (MessageType::Confirmable, MessageClass::Empty | MessageClass::Response(_)) => {
                send(out, peer, Reply::empty(MessageType::Reset, mid).encode());
            }
            (
                MessageType::Confirmable | MessageType::NonConfirmable,
                MessageClass::Request(method),
            ) => {
                self.on_request(peer, packet, kind == MessageType::Confirmable, method, now, out);
            }
            _ => Counters::add(&self.counters.malformed),
        }
    }

    fn on_request(
        &mut self,
        peer: SocketAddr,
        packet: Packet,
        con: bool,
        method: RequestType,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let mid = packet.header.message_id;
        let key = (peer, mid);
        if let Some(exchange) = self.exchanges.get_mut(&key) {
            Counters::add(&self.counters.duplicates);
            match &mut exchange.state {
                State::Pending(p) if p.con => {
                    // Still working on it: stop the retransmissions; the answer follows
                    // as a separate response.
                    if !p.acked {
                        p.acked = true;
                        Counters::add(&self.counters.separate_responses);
                    }
                    send(out, peer, Reply::empty(MessageType::Acknowledgement, mid).encode());
                }
                State::Pending(_) => {}
                State::Done(datagram) => send(out, peer, datagram.clone()),
            }
            return;
        }
        let reply_base = |code| {
            let mut r = Reply::response(code);
            r.token = packet.get_token().to_vec();
            r
        };
        // A known peer's rate limit; refusals here keep no state. A peer not in the table has
        // none yet: it enters when a request of its becomes a job.
        if let Some(wait) = self.take_token(peer, now) {
            Counters::add(&self.counters.rate_limited);
            let text = Refusal::new(ResponseType::TooManyRequests, "request rate limit exceeded")
                .retry_after(wait);
            let r = refusal(reply_base(ResponseType::TooManyRequests), &text);
            self.send_uncached(out, peer, con, mid, r);
            return;
        }
        Counters::add(&self.counters.requests);

        if let Some(number) = wire::unknown_critical_option(&packet) {
            let r =
                Refusal::new(ResponseType::BadOption, format!("unknown critical option {number}"));
            return self.answer_now(peer, con, mid, &packet, &r, now, out);
        }
        if method != RequestType::Post {
            let r =
                Refusal::new(ResponseType::MethodNotAllowed, "only POST /v1/<channel> is served");
            return self.answer_now(peer, con, mid, &packet, &r, now, out);
        }
        let block2 = match wire::option_values(&packet, BLOCK2).next().map(|v| Block::parse(v)) {
            None => None,
            Some(Some(b)) => Some(b),
            Some(None) => {
                let r = Refusal::bad_request("bad Block2 option");
                return self.answer_now(peer, con, mid, &packet, &r, now, out);
            }
        };
        let resource = request::resource_key(&packet);
        if let Some(b2) = block2.filter(|b| b.num > 0) {
            // a continuation of a large answer: served from what was kept
            let reply = match self.blocks.body(peer, &resource) {
                Some(body) => block2_reply(
                    reply_base(body.code),
                    body,
                    b2.num,
                    b2.szx.min(self.config.block_szx),
                ),
                None => Some(refusal(
                    reply_base(ResponseType::BadRequest),
                    &Refusal::bad_request(format!(
                        "no answer body to continue with block {}",
                        b2.num
                    )),
                )),
            };
            let reply = reply.unwrap_or_else(|| {
                refusal(
                    reply_base(ResponseType::BadOption),
                    &Refusal::new(ResponseType::BadOption, "Block2 beyond the end of the body"),
                )
            });
            Counters::add(&self.counters.blocks_out);
            return self.remember(peer, con, mid, reply, now, out);
        }
        let block1 = match wire::option_values(&packet, BLOCK1).next().map(|v| Block::parse(v)) {
            None => None,
            Some(Some(b)) => Some(b),
            Some(None) => {
                let r = Refusal::bad_request("bad Block1 option");
                return self.answer_now(peer, con, mid, &packet, &r, now, out);
            }
        };
        let is_final = block1.is_none_or(|b| !b.more);
        let first_of_many = block1.is_some_and(|b| b.num == 0 && b.more);
        if is_final || first_of_many {
            // The whole message is here (or will be with this block): room to process it?
            let peer_busy = self
                .peers
                .get(&peer)
                .is_some_and(|p| p.in_flight >= self.config.max_in_flight_per_peer);
            if self.in_flight >= self.config.max_in_flight || peer_busy {
                Counters::add(&self.counters.busy);
                let r =
                    Refusal::new(ResponseType::ServiceUnavailable, "too many requests in progress")
                        .retry_after(1);
                let reply = refusal(reply_base(r.code), &r);
                self.send_uncached(out, peer, con, mid, reply);
                return;
            }
        }
        let payload = match block1 {
            None => {
                if packet.payload.len() > self.config.max_message_size {
                    let mut r =
                        Refusal::new(ResponseType::RequestEntityTooLarge, "message too large");
                    r.size1 = u32::try_from(self.config.max_message_size).ok();
                    return self.answer_now(peer, con, mid, &packet, &r, now, out);
                }
                Bytes::from(packet.payload.clone())
            }
            // the first of several blocks: its credentials are checked before it is kept
            Some(b1) if first_of_many => {
                Counters::add(&self.counters.blocks_in);
                if packet.payload.len() != b1.size() {
                    let r = Refusal::bad_request(format!(
                        "block 0 is {} bytes, its Block1 size is {}",
                        packet.payload.len(),
                        b1.size()
                    ));
                    return self.answer_now(peer, con, mid, &packet, &r, now, out);
                }
                Bytes::new()
            }
            Some(b1) => {
                Counters::add(&self.counters.blocks_in);
                match self.blocks.upload(peer, resource.clone(), b1, &packet.payload, now) {
                    Ok(None) => {
                        let reply = reply_base(ResponseType::Continue).option(BLOCK1, b1.encode());
                        return self.remember(peer, con, mid, reply, now, out);
                    }
                    Ok(Some(body)) => body,
                    Err(r) => return self.answer_now(peer, con, mid, &packet, &r, now, out),
                }
            }
        };
        let publish = match request::parse_publish(
            &packet,
            payload,
            &self.config.default_app,
            self.config.max_command_wait,
        ) {
            Ok(p) => p,
            Err(r) => return self.answer_now(peer, con, mid, &packet, &r, now, out),
        };
        if !self.admit_peer(peer, now) {
            Counters::add(&self.counters.busy);
            let r = refusal(
                reply_base(ResponseType::ServiceUnavailable),
                &Refusal::new(ResponseType::ServiceUnavailable, "too many peers").retry_after(5),
            );
            self.send_uncached(out, peer, con, mid, r);
            return;
        }
        let kind = if first_of_many { JobKind::Authenticate } else { JobKind::Publish };
        let first_block = first_of_many.then(|| packet.payload.clone());
        let id = self.next_job;
        self.next_job += 1;
        let generation = self.generation();
        self.exchanges.insert(
            key,
            Exchange {
                generation,
                state: State::Pending(Pending {
                    job: id,
                    con,
                    token: packet.get_token().to_vec(),
                    acked: false,
                    block1,
                    block2_szx: block2
                        .map_or(self.config.block_szx, |b| b.szx.min(self.config.block_szx)),
                    resource,
                    first_block,
                }),
            },
        );
        self.jobs.insert(id, (key, generation));
        self.in_flight += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight += 1;
        }
        if con {
            let at = now + self.config.piggyback_timeout;
            self.piggybacks.push_back((at, Timer::Piggyback { peer, mid, generation }));
        }
        out.push(Output::Process(Box::new(Job { id, peer, kind, publish })));
    }

    /// The answer to a job handed out earlier.
    pub fn on_answer(&mut self, job: JobId, answer: Answer, now: Instant, out: &mut Vec<Output>) {
        let Some((key, generation)) = self.jobs.remove(&job) else { return };
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(p) = self.peers.get_mut(&key.0) {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
        let pending = match self.exchanges.remove(&key) {
            Some(Exchange { generation: g, state: State::Pending(p) })
                if g == generation && p.job == job =>
            {
                p
            }
            Some(other) => {
                self.exchanges.insert(key, other);
                return;
            }
            None => return,
        };
        let (peer, mid) = key;
        let passed = !matches!(answer, Answer::Refused(_));
        if passed && let Some(p) = self.peers.get_mut(&peer) {
            p.authenticated = true;
        }
        let mut pending = pending;
        let mut reply = match &answer {
            Answer::Authenticated => {
                let first = pending.first_block.take().unwrap_or_default();
                let upload = pending
                    .block1
                    .map(|b1| self.blocks.upload(peer, pending.resource.clone(), b1, &first, now));
                match upload {
                    Some(Ok(_)) => Reply::response(ResponseType::Continue),
                    Some(Err(r)) => {
                        self.count_refusal(r.code);
                        refusal(Reply::response(r.code), &r)
                    }
                    None => Reply::response(ResponseType::BadRequest),
                }
            }
            Answer::Stored => {
                Counters::add(&self.counters.stored);
                Reply::response(ResponseType::Changed)
            }
            Answer::Command(command) => {
                Counters::add(&self.counters.stored);
                Counters::add(&self.counters.commands);
                let mut options = vec![(COMMAND_OPTION, command.name.as_str().as_bytes().to_vec())];
                if let Some(n) = command.content_type.as_deref().and_then(wire::format_of) {
                    options.push((CONTENT_FORMAT, wire::encode_uint(u32::from(n))));
                }
                let size = Block { num: 0, more: false, szx: pending.block2_szx }.size();
                if command.payload.len() > size {
                    Counters::add(&self.counters.blocks_out);
                    options.push((ETAG, generation.to_be_bytes()[4..].to_vec()));
                    let body = Body::new(ResponseType::Content, options, command.payload.clone());
                    let first = block2_reply(
                        Reply::response(ResponseType::Content),
                        &body,
                        0,
                        pending.block2_szx,
                    );
                    self.blocks.keep_body(peer, pending.resource.clone(), body, now);
                    first.unwrap_or_else(|| Reply::response(ResponseType::Content))
                } else {
                    let mut r = Reply::response(ResponseType::Content);
                    r.options = options;
                    r.payload = command.payload.to_vec();
                    r
                }
            }
            Answer::Refused(r) => {
                self.count_refusal(r.code);
                refusal(Reply::response(r.code), r)
            }
        };
        reply.token = pending.token;
        if let Some(b1) = pending.block1 {
            reply.options.push((BLOCK1, b1.encode()));
        }
        let remembers = self.remembers(peer);
        if !pending.con {
            reply.kind = MessageType::NonConfirmable;
            reply.message_id = self.mid();
            let datagram = reply.encode();
            send(out, peer, datagram.clone());
            if remembers {
                self.remember_datagram(key, datagram, now);
            }
        } else if !pending.acked {
            reply.kind = MessageType::Acknowledgement;
            reply.message_id = mid;
            let datagram = reply.encode();
            send(out, peer, datagram.clone());
            if remembers {
                self.remember_datagram(key, datagram, now);
            }
        } else {
            // separate response: CON, retransmitted until the sensor ACKs it
            reply.kind = MessageType::Confirmable;
            let out_mid = self.mid();
            reply.message_id = out_mid;
            let datagram = reply.encode();
            send(out, peer, datagram.clone());
            let timeout = self.initial_timeout();
            self.outgoing.insert((peer, out_mid), Outgoing { datagram, sent: 0, timeout });
            self.timers.push(Reverse((now + timeout, Timer::Retransmit { peer, mid: out_mid })));
            if remembers {
                let ack = Reply::empty(MessageType::Acknowledgement, mid).encode();
                self.remember_datagram(key, ack, now);
            }
        }
        self.forget_stranger(peer);
        self.update_gauges();
    }

    /// Whether answers to `peer` are remembered: only once its credentials passed.
    fn remembers(&self, peer: SocketAddr) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.authenticated)
    }

    /// Drops a peer whose credentials never passed once nothing of it is in progress.
    fn forget_stranger(&mut self, peer: SocketAddr) {
        let idle = self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.authenticated && p.in_flight == 0 && p.done.is_empty());
        if idle && !self.blocks.holds(peer) {
            self.peers.remove(&peer);
        }
    }

    /// Runs due timers and the periodic sweep.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        loop {
            let heap = self.timers.peek().map(|Reverse((at, _))| *at).filter(|at| *at <= now);
            let piggyback = self.piggybacks.front().map(|(at, _)| *at).filter(|at| *at <= now);
            let timer = match (heap, piggyback) {
                (None, None) => break,
                (Some(h), Some(p)) if h < p => self.timers.pop().map(|Reverse((_, t))| t),
                (Some(_), None) => self.timers.pop().map(|Reverse((_, t))| t),
                (_, Some(_)) => self.piggybacks.pop_front().map(|(_, t)| t),
            };
            let Some(timer) = timer else { break };
            match timer {
                Timer::Piggyback { peer, mid, generation } => {
                    if let Some(Exchange { generation: g, state: State::Pending(p) }) =
                        self.exchanges.get_mut(&(peer, mid))
                        && *g == generation
                        && p.con
                        && !p.acked
                    {
                        p.acked = true;
                        Counters::add(&self.counters.separate_responses);
                        send(out, peer, Reply::empty(MessageType::Acknowledgement, mid).encode());
                    }
                }
                Timer::Retransmit { peer, mid } => {
                    let Some(o) = self.outgoing.get_mut(&(peer, mid)) else { continue };
                    if o.sent >= self.config.max_retransmit {
                        self.outgoing.remove(&(peer, mid));
                        Counters::add(&self.counters.gave_up);
                        continue;
                    }
                    o.sent += 1;
                    o.timeout *= 2;
                    let (datagram, timeout) = (o.datagram.clone(), o.timeout);
                    Counters::add(&self.counters.retransmissions);
                    send(out, peer, datagram);
                    self.timers.push(Reverse((now + timeout, Timer::Retransmit { peer, mid })));
                }
            }
        }
        if self.last_sweep.is_none_or(|t| now >= t + SWEEP_EVERY) {
            self.sweep(now);
            self.last_sweep = Some(now);
        }
        self.update_gauges();
    }

    fn sweep(&mut self, now: Instant) {
        while let Some(&(key, generation, expires)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.forget(key, generation);
        }
        self.blocks.expire(now);
        let (rate, burst) = (self.config.rate_limit, self.config.rate_burst);
        let exchanges = &self.exchanges;
        let blocks = &self.blocks;
        self.peers.retain(|addr, p| {
            while let Some(&(mid, g)) = p.done.front() {
                match exchanges.get(&(*addr, mid)) {
                    Some(e) if e.generation == g => break,
                    _ => {
                        p.done.pop_front();
                    }
                }
            }
            let refilled = (p.tokens
                + now.saturating_duration_since(p.refilled).as_secs_f64() * rate)
                >= burst;
            !(p.done.is_empty() && p.in_flight == 0 && refilled && !blocks.holds(*addr))
        });
    }

    /// Removes a remembered exchange if it is still the one of `generation`.
    fn forget(&mut self, key: Key, generation: u64) {
        if let Some(e) = self.exchanges.get(&key)
            && e.generation == generation
            && matches!(e.state, State::Done(_))
        {
            self.exchanges.remove(&key);
            self.remembered = self.remembered.saturating_sub(1);
        }
    }

    fn admit_peer(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.peers.contains_key(&peer) {
            return true;
        }
        if self.peers.len() >= self.config.max_peers {
            self.sweep(now);
            if self.peers.len() >= self.config.max_peers {
                return false;
            }
        }
        self.peers.insert(
            peer,
            Peer {
                // this request, the one that brought the peer in, takes its first token
                tokens: self.config.rate_burst - 1.0,
                refilled: now,
                done: VecDeque::new(),
                in_flight: 0,
                authenticated: false,
            },
        );
        true
    }

    /// Takes a token from the peer's bucket; `Some(seconds)` to wait when there is none.
    fn take_token(&mut self, peer: SocketAddr, now: Instant) -> Option<u32> {
        let (rate, burst) = (self.config.rate_limit, self.config.rate_burst);
        let p = self.peers.get_mut(&peer)?;
        let elapsed = now.saturating_duration_since(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + elapsed * rate).min(burst);
        p.refilled = now;
        if p.tokens >= 1.0 {
            p.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - p.tokens) / rate).ceil().max(1.0) as u32)
        }
    }

    /// Answers a request at once with a refusal, remembered for duplicates.
    #[allow(clippy::too_many_arguments)]
    fn answer_now(
        &mut self,
        peer: SocketAddr,
        con: bool,
        mid: u16,
        packet: &Packet,
        r: &Refusal,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.count_refusal(r.code);
        let mut reply = refusal(Reply::response(r.code), r);
        reply.token = packet.get_token().to_vec();
        self.remember(peer, con, mid, reply, now, out);
    }

    fn count_refusal(&self, code: ResponseType) {
        let c = &self.counters;
        Counters::add(match code {
            ResponseType::Unauthorized | ResponseType::Forbidden => &c.auth_refused,
            ResponseType::TooManyRequests => &c.rate_limited,
            ResponseType::RequestEntityTooLarge => &c.too_large,
            ResponseType::ServiceUnavailable => &c.unavailable,
            _ => &c.bad_requests,
        });
    }

    /// Sends an immediate answer (piggy-backed on the ACK of a CON, or NON) and remembers it.
    fn remember(
        &mut self,
        peer: SocketAddr,
        con: bool,
        mid: u16,
        mut reply: Reply,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if con {
            reply.kind = MessageType::Acknowledgement;
            reply.message_id = mid;
        } else {
            reply.kind = MessageType::NonConfirmable;
            reply.message_id = self.mid();
        }
        let datagram = reply.encode();
        if self.remembers(peer) {
            send(out, peer, datagram.clone());
            self.remember_datagram((peer, mid), datagram, now);
        } else {
            send(out, peer, datagram);
        }
    }

    fn send_uncached(
        &mut self,
        out: &mut Vec<Output>,
        peer: SocketAddr,
        con: bool,
        mid: u16,
        mut reply: Reply,
    ) {
        if con {
            reply.kind = MessageType::Acknowledgement;
            reply.message_id = mid;
        } else {
            reply.kind = MessageType::NonConfirmable;
            reply.message_id = self.mid();
        }
        send(out, peer, reply.encode());
    }

    fn remember_datagram(&mut self, key: Key, datagram: Vec<u8>, now: Instant) {
        let generation = self.generation();
        let replaced =
            self.exchanges.insert(key, Exchange { generation, state: State::Done(datagram) });
        if matches!(replaced, Some(Exchange { state: State::Done(_), .. })) {
            self.remembered = self.remembered.saturating_sub(1);
        }
        self.remembered += 1;
        self.order.push_back((key, generation, now + self.config.exchange_lifetime));
        let per_peer = self.config.max_exchanges_per_peer;
        let mut evict = Vec::new();
        if let Some(p) = self.peers.get_mut(&key.0) {
            p.done.push_back((key.1, generation));
            while p.done.len() > per_peer {
                if let Some((mid, g)) = p.done.pop_front() {
                    evict.push(((key.0, mid), g));
                }
            }
        }
        for (k, g) in evict {
            self.forget(k, g);
        }
        // the oldest go first when the table is full (the order list is bounded too)
        while self.remembered > self.config.max_exchanges
            || self.order.len() > 2 * self.config.max_exchanges
        {
            let Some((k, g, _)) = self.order.pop_front() else { break };
            self.forget(k, g);
        }
    }

    fn generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// ACK_TIMEOUT × a random factor in [1, 1.5) (RFC 7252 §4.8, ACK_RANDOM_FACTOR).
    fn initial_timeout(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 1.0 + (self.rng % 1000) as f64 / 2000.0;
        self.config.ack_timeout.mul_f64(factor)
    }

    fn update_gauges(&self) {
        let c = &self.counters;
        Counters::set(&c.exchanges, self.exchanges.len());
        Counters::set(&c.in_flight, self.in_flight);
        Counters::set(&c.peers, self.peers.len());
        Counters::set(&c.block_bytes, self.blocks.bytes());
    }
}

fn send(out: &mut Vec<Output>, peer: SocketAddr, datagram: Vec<u8>) {
    out.push(Output::Send { peer, datagram });
}

/// An error answer: diagnostic payload, Max-Age and Size1 as the refusal says.
fn refusal(mut reply: Reply, r: &Refusal) -> Reply {
    reply.code = MessageClass::Response(r.code);
    reply.payload = r.text.as_bytes().to_vec();
    if let Some(age) = r.max_age {
        reply.options.push((MAX_AGE, wire::encode_uint(age)));
    }
    if let Some(size) = r.size1 {
        reply.options.push((SIZE1, wire::encode_uint(size)));
    }
    reply
}

/// Block `num` (of size `2^(szx+4)`) of a kept body; `None` past its end.
fn block2_reply(mut reply: Reply, body: &Body, num: u32, szx: u8) -> Option<Reply> {
    let block = Block { num, more: false, szx };
    let start = block.offset()?;
    let len = body.payload.len();
    if start >= len && !(start == 0 && len == 0) {
        return None;
    }
    let end = (start + block.size()).min(len);
    reply.code = MessageClass::Response(body.code);
    reply.options.extend(body.options.iter().cloned());
    reply.options.push((BLOCK2, Block { more: end < len, ..block }.encode()));
    if num == 0 {
        reply.options.push((SIZE2, wire::encode_uint(u32::try_from(len).unwrap_or(u32::MAX))));
    }
    reply.payload = body.payload[start..end].to_vec();
    Some(reply)
}
