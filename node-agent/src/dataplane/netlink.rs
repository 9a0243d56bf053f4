//! A route socket that dumps and changes routes in large batches.
//!
//! Why not `rtnetlink`'s request API for routes: it sends one request per `sendmsg`, waits
//! for one acknowledgement per route and parses every message into a channel, which costs
//! as much per route as `ip -batch`. Here many requests share one `sendmsg` (the kernel
//! handles them one after another inside that call), only the last one asks for an
//! acknowledgement (the kernel reports every failure anyway), and a dump filtered by the
//! kernel to Tortie's protocol and table is parsed straight from the receive buffer.
//! Requests are built with `netlink-packet-route`; dumps and answers are read by the small
//! parser further down, for the reason given there.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use super::routes::{KernelRoute, RouteChange, RoutePlan, RouteTarget};

/// Bytes of requests sent in one `sendmsg`. Well under the default socket send buffer
/// (the kernel refuses a message larger than it).
const BATCH_BYTES: usize = 48 * 1024;

/// Requests sent in one `sendmsg`. Bounds how many failure reports can queue up at once,
/// so they fit the receive buffer even if every request in a batch fails and the host
/// caps receive buffers at the usual 208 KiB (about 768 bytes of buffer per report).
const BATCH_REQUESTS: usize = 256;

/// Receive buffer asked for: room for the failure reports of a whole batch.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// How long to wait for the kernel before giving up on the socket. The kernel answers
/// route requests synchronously, so this only trips if an answer was lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a dump is retried when the kernel says routes changed while it was dumping.
const DUMP_ATTEMPTS: usize = 3;

const ENOBUFS: i32 = 105;
const EPROTO: i32 = 71;

/// Where `nlmsg_flags` sits in a netlink header (after the 32-bit length and 16-bit type).
const FLAGS_OFFSET: usize = 6;

/// A netlink route socket bound to the network namespace it was opened in.
pub(crate) struct RouteSocket {
    socket: TokioSocket,
    next_sequence: u32,
    receive: Vec<u8>,
}

impl RouteSocket {
    /// Opens the socket; must run inside a Tokio runtime.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let raw = socket.socket_mut();
        raw.bind_auto()?;
        raw.connect(&SocketAddr::new(0, 0))?;
        // The kernel then filters dumps by protocol and table instead of sending them all.
        raw.set_netlink_get_strict_chk(true)?;
        // Failure reports carry only the request's header, not the whole request.
        raw.set_cap_ack(true)?;
        raw.set_rx_buf_sz(RECEIVE_BUFFER)?;
        Ok(Self {
            socket,
            next_sequence: 1,
            receive: Vec::with_capacity(256 * 1024),
        })
    }

    /// All IPv4 routes of `protocol` in `table`.
    pub(crate) async fn dump(&mut self, table: u32, protocol: u8) -> io::Result<Vec<KernelRoute>> {
        for _ in 0..DUMP_ATTEMPTS {
            match tokio::time::timeout(ANSWER_TIMEOUT, self.dump_once(table, protocol)).await {
                Ok(Ok(Some(routes))) => return Ok(routes),
                Ok(Ok(None)) => continue,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(timed_out("route dump")),
            }
        }
        Err(io::Error::other(format!(
            "routes kept changing during {DUMP_ATTEMPTS} dumps in a row"
        )))
    }

    /// One dump; `None` when the kernel flagged it as interrupted by a change.
    async fn dump_once(
        &mut self,
        table: u32,
        protocol: u8,
    ) -> io::Result<Option<Vec<KernelRoute>>> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        request.header.protocol = RouteProtocol::from(protocol);
        set_table(&mut request, table);
        let sequence = self.sequence();
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetRoute(request)),
        );
        message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        message.header.sequence_number = sequence;
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out).await?;

        let mut routes = Vec::new();
        let mut interrupted = false;
        loop {
            self.receive.clear();
            self.socket.recv(&mut self.receive).await?;
            for message in RawMessages::new(&self.receive) {
                let message = message?;
                if message.sequence != sequence {
                    continue;
                }
                if message.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match message.kind {
                    NLMSG_DONE => return Ok(if interrupted { None } else { Some(routes) }),
                    NLMSG_ERROR => {
                        let code = message.error_code();
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    RTM_NEWROUTE => {
                        if let Some((route, route_protocol, route_table)) =
                            parse_route(message.payload)
                            // Older kernels ignore the filter; check it here too.
                            && route_protocol == protocol
                            && route_table == table
                        {
                            routes.push(route);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Applies the plan's changes in batches. Returns the changes the kernel refused, by
    /// index into `plan.changes`, with its error.
    pub(crate) async fn apply(
        &mut self,
        plan: &RoutePlan,
        table: u32,
        protocol: u8,
    ) -> io::Result<Vec<(usize, io::Error)>> {
        let mut failures = Vec::new();
        let mut out = Vec::with_capacity(BATCH_BYTES + 512);
        let mut start = 0;
        while start < plan.changes.len() {
            out.clear();
            let first_sequence = self.next_sequence;
            let mut end = start;
            let mut last_offset = 0;
            while end < plan.changes.len()
                && end - start < BATCH_REQUESTS
                && out.len() < BATCH_BYTES
            {
                last_offset = out.len();
                let sequence = self.sequence();
                encode_change(&plan.changes[end], table, protocol, sequence, &mut out);
                end += 1;
            }
            // Only the batch's last request asks for an acknowledgement: the kernel answers
            // in order, so once it arrives every failure report of the batch has too.
            let flags_at = last_offset + FLAGS_OFFSET;
            let flags = u16::from_ne_bytes([out[flags_at], out[flags_at + 1]]) | NLM_F_ACK;
            out[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
            let closing_sequence = self.next_sequence.wrapping_sub(1);

            self.socket.send(&out).await?;
            let refused = tokio::time::timeout(
                ANSWER_TIMEOUT,
                self.collect_answers(first_sequence, closing_sequence),
            )
            .await
            .map_err(|_| timed_out("route change acknowledgement"))??;
            for (sequence, error) in refused {
                let index = start + sequence.wrapping_sub(first_sequence) as usize;
                if index < end {
                    failures.push((index, error));
                }
            }
            start = end;
        }
        Ok(failures)
    }

    /// Reads answers until the closing request's acknowledgement; returns the refusals.
    async fn collect_answers(
        &mut self,
        first_sequence: u32,
        closing_sequence: u32,
    ) -> io::Result<Vec<(u32, io::Error)>> {
        let mut refused = Vec::new();
        loop {
            self.receive.clear();
            if let Err(error) = self.socket.recv(&mut self.receive).await {
                if error.raw_os_error() == Some(ENOBUFS) {
                    return Err(io::Error::other(
                        "the kernel dropped route change answers (receive buffer full); \
                         the next reconcile will find and retry what is missing",
                    ));
                }
                return Err(error);
            }
            for message in RawMessages::new(&self.receive) {
                let message = message?;
                let sequence = message.sequence;
                let in_batch = sequence.wrapping_sub(first_sequence)
                    <= closing_sequence.wrapping_sub(first_sequence);
                if !in_batch || message.kind != NLMSG_ERROR {
                    continue;
                }
                let code = message.error_code();
                if code != 0 {
                    refused.push((sequence, io::Error::from_raw_os_error(-code)));
                }
                if sequence == closing_sequence {
                    return Ok(refused);
                }
            }
        }
    }

    fn sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the kernel to the {what}"),
    )
}

fn aligned(length: usize) -> usize {
    (length + 3) & !3
}

fn set_table(message: &mut RouteMessage, table: u32) {
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.attributes.push(RouteAttribute::Table(table));
}

// Dumps are parsed straight from the bytes rather than through `netlink-packet-route`'s
// message types: those build a vector of every attribute of every route, which for a dump
// of tens of thousands of routes costs as much as the kernel's own work. Only the fields
// the reconciler compares are read; the layouts are the kernel's stable UAPI
// (`struct nlmsghdr`, `struct rtmsg`, `struct rtattr`).

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_HEADER_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
const RTN_BLACKHOLE: u8 = 6;
const RTNH_F_ONLINK: u32 = 4;

/// One netlink message in a receive buffer.
struct RawMessage<'a> {
    kind: u16,
    flags: u16,
    sequence: u32,
    payload: &'a [u8],
}

impl RawMessage<'_> {
    /// The (negative errno or 0) code of an `NLMSG_ERROR`.
    fn error_code(&self) -> i32 {
        self.payload
            .get(..4)
            .map(|bytes| i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .unwrap_or(-EPROTO)
    }
}

/// Iterates over the netlink messages of one receive buffer.
struct RawMessages<'a> {
    buffer: &'a [u8],
}

impl<'a> RawMessages<'a> {
    fn new(buffer: &'a [u8]) -> Self {
        Self { buffer }
    }
}

impl<'a> Iterator for RawMessages<'a> {
    type Item = io::Result<RawMessage<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.len() < NLMSG_HEADER_LEN {
            return None;
        }
        let length = read_u32(self.buffer, 0) as usize;
        if length < NLMSG_HEADER_LEN || length > self.buffer.len() {
            self.buffer = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink message claims {length} bytes"),
            )));
        }
        let message = RawMessage {
            kind: read_u16(self.buffer, 4),
            flags: read_u16(self.buffer, 6),
            sequence: read_u32(self.buffer, 8),
            payload: &self.buffer[NLMSG_HEADER_LEN..length],
        };
        self.buffer = &self.buffer[aligned(length).min(self.buffer.len())..];
        Some(Ok(message))
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads an `RTM_NEWROUTE` payload: the route in the reconciler's terms, its protocol and
/// its table. `None` for routes that are not IPv4 or are malformed.
fn parse_route(payload: &[u8]) -> Option<(KernelRoute, u8, u32)> {
    const AF_INET: u8 = 2;
    if payload.len() < RTMSG_LEN || payload[0] != AF_INET {
        return None;
    }
    let prefix_len = payload[1];
    let tos = payload[3];
    let mut table = u32::from(payload[4]);
    let protocol = payload[5];
    let kind = payload[7];
    let flags = read_u32(payload, 8);

    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut interface_index = None;
    let mut priority = 0;
    let mut multipath = false;
    let mut attributes = &payload[RTMSG_LEN..];
    while attributes.len() >= 4 {
        let length = usize::from(read_u16(attributes, 0));
        if length < 4 || length > attributes.len() {
            return None;
        }
        let value = &attributes[4..length];
        match (read_u16(attributes, 2), value.len()) {
            (RTA_DST, 4) => destination = Ipv4Addr::new(value[0], value[1], value[2], value[3]),
            (RTA_GATEWAY, 4) => {
                gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]))
            }
            (RTA_OIF, 4) => interface_index = Some(read_u32(value, 0)),
            (RTA_PRIORITY, 4) => priority = read_u32(value, 0),
            (RTA_TABLE, 4) => table = read_u32(value, 0),
            (RTA_MULTIPATH, _) => multipath = true,
            _ => {}
        }
        attributes = &attributes[aligned(length).min(attributes.len())..];
    }

    let destination = Ipv4Net::new(destination, prefix_len).ok()?;
    let target = match (kind, gateway, interface_index) {
        _ if multipath => RouteTarget::Other,
        (RTN_BLACKHOLE, _, _) => RouteTarget::Blackhole,
        (RTN_UNICAST, Some(gateway), Some(interface_index)) => RouteTarget::Gateway {
            gateway,
            interface_index,
            onlink: flags & RTNH_F_ONLINK != 0,
        },
        (RTN_UNICAST, None, Some(interface_index)) => RouteTarget::Device { interface_index },
        _ => RouteTarget::Other,
    };
    let route = KernelRoute {
        destination,
        tos,
        priority,
        target,
    };
    Some((route, protocol, table))
}

/// Appends the request for one change to `out`.
fn encode_change(change: &RouteChange, table: u32, protocol: u8, sequence: u32, out: &mut Vec<u8>) {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.protocol = RouteProtocol::from(protocol);
    let (kind, flags) = match change {
        RouteChange::Create {
            destination,
            target,
        }
        | RouteChange::Replace {
            destination,
            target,
        } => {
            set_destination(&mut route, *destination);
            set_table(&mut route, table);
            set_target(&mut route, *target);
            let flags = if matches!(change, RouteChange::Create { .. }) {
                NLM_F_CREATE | NLM_F_EXCL
            } else {
                NLM_F_CREATE | NLM_F_REPLACE
            };
            (RouteNetlinkMessage::NewRoute(route), flags)
        }
        RouteChange::Delete(existing) => {
            set_destination(&mut route, existing.destination);
            set_table(&mut route, table);
            route.header.tos = existing.tos;
            // "Any scope" and "any type": the kernel then matches on destination, TOS,
            // priority, table and, decisively, protocol, so only Tortie's route can go.
            route.header.scope = RouteScope::NoWhere;
            route.header.kind = RouteType::Unspec;
            if existing.priority != 0 {
                route
                    .attributes
                    .push(RouteAttribute::Priority(existing.priority));
            }
            (RouteNetlinkMessage::DelRoute(route), 0)
        }
    };
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(kind));
    message.header.flags = NLM_F_REQUEST | flags;
    message.header.sequence_number = sequence;
    append(message, out);
}

fn append(mut message: NetlinkMessage<RouteNetlinkMessage>, out: &mut Vec<u8>) {
    message.finalize();
    let start = out.len();
    let length = message.buffer_len();
    out.resize(start + aligned(length), 0);
    message.serialize(&mut out[start..start + length]);
}

fn set_destination(route: &mut RouteMessage, destination: Ipv4Net) {
    route.header.destination_prefix_length = destination.prefix_len();
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            destination.network(),
        )));
}

fn set_target(route: &mut RouteMessage, target: RouteTarget) {
    match target {
        RouteTarget::Blackhole => {
            route.header.kind = RouteType::BlackHole;
            route.header.scope = RouteScope::Universe;
        }
        RouteTarget::Gateway {
            gateway,
            interface_index,
            onlink,
        } => {
            route.header.kind = RouteType::Unicast;
            route.header.scope = RouteScope::Universe;
            if onlink {
                route.header.flags |= RouteFlags::Onlink;
            }
            route
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
            route.attributes.push(RouteAttribute::Oif(interface_index));
        }
        RouteTarget::Device { interface_index } => {
            route.header.kind = RouteType::Unicast;
            route.header.scope = RouteScope::Link;
            route.attributes.push(RouteAttribute::Oif(interface_index));
        }
        RouteTarget::Other => {
            // Never desired (the plan only asks for the kinds above); encode as a blackhole
            // so an impossible request still cannot misroute.
            route.header.kind = RouteType::BlackHole;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(change: RouteChange, table: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode_change(&change, table, 84, 7, &mut out);
        out
    }

    /// What the encoder writes for a route, the dump parser reads back (the kernel's dump
    /// uses the same layout as a request).
    #[test]
    fn parser_reads_what_the_encoder_writes() {
        let destination: Ipv4Net = "10.244.3.0/26".parse().expect("test CIDR");
        let targets = [
            RouteTarget::Blackhole,
            RouteTarget::Gateway {
                gateway: Ipv4Addr::new(10, 244, 3, 0),
                interface_index: 9,
                onlink: true,
            },
            RouteTarget::Gateway {
                gateway: Ipv4Addr::new(198, 18, 0, 2),
                interface_index: 2,
                onlink: false,
            },
            RouteTarget::Device { interface_index: 4 },
        ];
        for table in [254, 1000] {
            for target in targets {
                let bytes = encoded(
                    RouteChange::Create {
                        destination,
                        target,
                    },
                    table,
                );
                let messages: Vec<_> = RawMessages::new(&bytes)
                    .collect::<io::Result<_>>()
                    .expect("well-formed messages");
                assert_eq!(messages.len(), 1);
                assert_eq!(messages[0].kind, RTM_NEWROUTE);
                assert_eq!(messages[0].sequence, 7);
                let (route, protocol, parsed_table) =
                    parse_route(messages[0].payload).expect("an IPv4 route");
                assert_eq!(route.destination, destination);
                assert_eq!(route.target, target);
                assert_eq!((protocol, parsed_table), (84, table));
            }
        }
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        let bytes = encoded(
            RouteChange::Create {
                destination: "10.0.0.0/8".parse().expect("test CIDR"),
                target: RouteTarget::Blackhole,
            },
            254,
        );
        for cut in 0..bytes.len() {
            let parsed: Vec<_> = RawMessages::new(&bytes[..cut]).collect();
            assert!(parsed.iter().all(Result::is_err), "cut at {cut}");
            let payload = &bytes[NLMSG_HEADER_LEN.min(cut)..cut];
            let _ = parse_route(payload);
        }
    }
}
