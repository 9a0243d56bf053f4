//! Event-driven resync: a subscription to the kernel's route, link and address changes,
//! and the loop that reconciles on those events, on spec changes and periodically.

use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::SocketAddr;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Dataplane, DataplaneError, DataplaneSpec, RouteSyncReport};

/// A subscription to kernel changes that can make Tortie's routes wrong: its routes being
/// changed or deleted by someone else, links coming and going (the kernel drops routes of a
/// link that goes down without announcing each one) and addresses changing (direct routes
/// pick their interface by address).
pub struct RouteWatch {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection_task: tokio::task::JoinHandle<()>,
}

impl RouteWatch {
    /// Subscribes in the calling thread's network namespace; needs a Tokio runtime.
    pub fn subscribe() -> Result<Self, DataplaneError> {
        let (connection, _, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Route,
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
        ])
        .map_err(|e| DataplaneError::netlink("subscribe to route changes", e))?;
        let connection_task = tokio::spawn(connection);
        Ok(Self {
            messages,
            connection_task,
        })
    }

    /// Waits for a change that calls for a route resync of `table`, then swallows the
    /// changes already queued behind it (one resync covers them all). `false` when the
    /// subscription has ended.
    pub async fn changed(&mut self, table: u32) -> bool {
        loop {
            let Some((message, _)) = self.messages.next().await else {
                return false;
            };
            if !needs_resync(&message, table) {
                continue;
            }
            while self.messages.try_recv().is_ok() {}
            return true;
        }
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.connection_task.abort();
    }
}

/// Whether a kernel notification can have made Tortie's routes in `table` wrong.
pub fn needs_resync(message: &NetlinkMessage<RouteNetlinkMessage>, table: u32) -> bool {
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return false;
    };
    match inner {
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            u8::from(route.header.protocol) == crate::ROUTE_PROTOCOL && table_of(route) == table
        }
        RouteNetlinkMessage::NewLink(_)
        | RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::NewAddress(_)
        | RouteNetlinkMessage::DelAddress(_) => true,
        _ => false,
    }
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Keeps the kernel matching the latest spec: a full reconcile when the spec changes and
/// every `period`, a route-only reconcile when the kernel reports a relevant change.
/// `on_result` sees every outcome (the agent turns it into status). Returns when the spec
/// sender is dropped.
pub async fn run(
    mut dataplane: Dataplane,
    mut specs: watch::Receiver<DataplaneSpec>,
    period: Duration,
    mut on_result: impl FnMut(&Result<RouteSyncReport, DataplaneError>),
) -> Result<(), DataplaneError> {
    let mut events = RouteWatch::subscribe()?;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let table = specs.borrow().route_table;
        let full = tokio::select! {
            changed = specs.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                true
            }
            _ = ticker.tick() => true,
            alive = events.changed(table) => {
                if !alive {
                    warn!("Route change subscription ended; subscribing again");
                    events = RouteWatch::subscribe()?;
                }
                false
            }
        };

        let spec = specs.borrow_and_update().clone();
        let result = if full {
            dataplane.reconcile(&spec).await
        } else {
            dataplane.reconcile_routes(&spec).await
        };
        match &result {
            Ok(report) => debug!(full, ?report, "Resync done"),
            Err(error) => warn!(full, %error, "Resync failed"),
        }
        on_result(&result);
    }
}
