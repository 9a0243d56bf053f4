//! A route socket that dumps and changes routes in large batches.
//!
//! Why not `rtnetlink`'s request API for routes: it sends one request per `sendmsg`, waits
//! for one acknowledgement per route and parses every message into a channel, which costs
//! as much per route as `ip -batch`. Here many requests share one `sendmsg` (the kernel
//! handles them one after another inside that call), only the last one asks for an
//! acknowledgement (the kernel reports every failure anyway), and a dump filtered by the
//! kernel to Tortie's protocol and table is parsed straight from the receive buffer. The
//! messages themselves are still built and parsed with `netlink-packet-route`.

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
/// so they fit the receive buffer even if every request in a batch fails.
const BATCH_REQUESTS: usize = 1024;

/// Receive buffer asked for: room for the failure reports of a whole batch.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// How long to wait for the kernel before giving up on the socket. The kernel answers
/// route requests synchronously, so this only trips if an answer was lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a dump is retried when the kernel says routes changed while it was dumping.
const DUMP_ATTEMPTS: usize = 3;

const ENOBUFS: i32 = 105;

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
            let mut offset = 0;
            while offset < self.receive.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.receive[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                offset += aligned(message.header.length as usize);
                if message.header.sequence_number != sequence {
                    continue;
                }
                if message.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => {
                        return Ok(if interrupted { None } else { Some(routes) });
                    }
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io());
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                        // Older kernels ignore the filter; check it here too.
                        if u8::from(route.header.protocol) == protocol
                            && route_table(&route) == table
                            && let Some(route) = kernel_route(&route)
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
            let mut offset = 0;
            while offset < self.receive.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.receive[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                offset += aligned(message.header.length as usize);
                let sequence = message.header.sequence_number;
                if sequence.wrapping_sub(first_sequence)
                    > closing_sequence.wrapping_sub(first_sequence)
                {
                    continue;
                }
                if let NetlinkPayload::Error(error) = message.payload {
                    if error.code.is_some() {
                        refused.push((sequence, error.to_io()));
                    }
                    if sequence == closing_sequence {
                        return Ok(refused);
                    }
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

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Reads a dumped route into the reconciler's terms; `None` for non-IPv4 oddities.
fn kernel_route(route: &RouteMessage) -> Option<KernelRoute> {
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut interface_index = None;
    let mut priority = 0;
    let mut multipath = false;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => destination = *address,
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => gateway = Some(*address),
            RouteAttribute::Oif(index) => interface_index = Some(*index),
            RouteAttribute::Priority(value) => priority = *value,
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    let destination = Ipv4Net::new(destination, route.header.destination_prefix_length).ok()?;
    let target = match (route.header.kind, gateway, interface_index) {
        _ if multipath => RouteTarget::Other,
        (RouteType::BlackHole, _, _) => RouteTarget::Blackhole,
        (RouteType::Unicast, Some(gateway), Some(interface_index)) => RouteTarget::Gateway {
            gateway,
            interface_index,
            onlink: route.header.flags.contains(RouteFlags::Onlink),
        },
        (RouteType::Unicast, None, Some(interface_index)) => {
            RouteTarget::Device { interface_index }
        }
        _ => RouteTarget::Other,
    };
    Some(KernelRoute {
        destination,
        tos: route.header.tos,
        priority,
        target,
    })
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
