//! A blocking face over rtnetlink, one connection per network namespace.
//!
//! A netlink socket talks to the namespace it was opened in, so work inside a pod's
//! namespace runs on a dedicated thread that first joins that namespace and then
//! opens its own connection. The host connection belongs to the caller's thread.

use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use nix::sched::CloneFlags;
use rtnetlink::Handle;

use super::error::{CniError, ErrorCode, kernel};

/// Linux errno values the plugin tells apart.
pub mod errno {
    /// No such process: the route to delete is not there.
    pub const ESRCH: i32 = 3;
    /// The object exists already.
    pub const EEXIST: i32 = 17;
    /// No such device: the link is not there.
    pub const ENODEV: i32 = 19;
    /// Address not available: the address to delete is not there.
    pub const EADDRNOTAVAIL: i32 = 99;
}

/// An open rtnetlink connection with the small runtime that drives it.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn connect() -> Result<Self, CniError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|error| {
                CniError::new(ErrorCode::Io, "could not start the netlink event loop")
                    .with_details(error.to_string())
            })?;
        let _entered = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .map_err(|error| kernel("could not open a netlink socket", error))?;
        runtime.spawn(connection);
        Ok(Self { runtime, handle })
    }

    /// The rtnetlink handle, for requests this module has no helper for.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs one request to completion.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, CniError> {
        let mut request = std::pin::pin!(
            self.handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
        );
        match self.block_on(request.try_next()) {
            Ok(link) => Ok(link),
            Err(error) if errno_of(&error) == Some(errno::ENODEV) => Ok(None),
            Err(error) => Err(kernel(format!("could not look up link {name}"), error)),
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<LinkMessage>, CniError> {
        let request = self.handle.link().get().execute();
        self.block_on(request.try_collect())
            .map_err(|error| kernel("could not list links", error))
    }

    /// Deletes the link with `index`; `Ok(false)` when it was already gone.
    pub fn delete_link(&self, index: u32, name: &str) -> Result<bool, CniError> {
        match self.block_on(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(true),
            Err(error) if errno_of(&error) == Some(errno::ENODEV) => Ok(false),
            Err(error) => Err(kernel(format!("could not delete link {name}"), error)),
        }
    }

    /// Every address on the link with `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<AddressMessage>, CniError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        self.block_on(request.try_collect())
            .map_err(|error| kernel("could not list addresses", error))
    }

    /// Adds `address/prefix_len` to the link, without duplicate address detection.
    pub fn add_address(
        &self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
        link_name: &str,
    ) -> Result<(), CniError> {
        let mut request = self.handle.address().add(index, address, prefix_len);
        if address.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.block_on(request.execute()).map_err(|error| {
            kernel(
                format!("could not add address {address}/{prefix_len} to {link_name}"),
                error,
            )
        })
    }

    /// Every route of `family` in the main table.
    pub fn routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, CniError> {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        let request = self.handle.route().get(message).execute();
        self.block_on(request.try_collect())
            .map_err(|error| kernel("could not list routes", error))
    }

    /// Adds a route; the message says everything.
    pub fn add_route(&self, route: RouteMessage, what: &str) -> Result<(), CniError> {
        self.block_on(self.handle.route().add(route).execute())
            .map_err(|error| kernel(format!("could not add {what}"), error))
    }

    /// Deletes a route; `Ok(false)` when it was not there.
    pub fn delete_route(&self, route: RouteMessage, what: &str) -> Result<bool, CniError> {
        match self.block_on(self.handle.route().del(route).execute()) {
            Ok(()) => Ok(true),
            Err(error) if errno_of(&error) == Some(errno::ESRCH) => Ok(false),
            Err(error) => Err(kernel(format!("could not delete {what}"), error)),
        }
    }
}

/// Runs `work` with a connection inside the network namespace at `netns`.
///
/// The work runs on a scoped thread that joins the namespace with `setns` and is then
/// discarded, so no other thread ever runs in the pod's namespace.
pub fn in_netns<T, W>(netns: &Path, work: W) -> Result<T, CniError>
where
    T: Send,
    W: FnOnce(&Netlink) -> Result<T, CniError> + Send,
{
    let namespace = open_netns(netns)?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            join_netns(&namespace, netns)?;
            let netlink = Netlink::connect()?;
            work(&netlink)
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace `namespace` (opened from `path`).
/// Only for threads that are discarded afterwards.
pub fn join_netns(namespace: &File, path: &Path) -> Result<(), CniError> {
    nix::sched::setns(namespace, CloneFlags::CLONE_NEWNET).map_err(|error| {
        CniError::new(
            ErrorCode::Namespace,
            format!("could not enter network namespace {}", path.display()),
        )
        .with_details(error.to_string())
    })
}

/// Opens a network namespace file; code 101 naming the path when it cannot.
pub fn open_netns(netns: &Path) -> Result<File, CniError> {
    File::open(netns).map_err(|error| {
        CniError::new(
            ErrorCode::Namespace,
            format!("could not open network namespace {}", netns.display()),
        )
        .with_details(error.to_string())
    })
}

/// The positive errno of a kernel refusal, if it was one.
pub fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().raw_os_error(),
        _ => None,
    }
}

/// The link's name attribute.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The link's alias, where Tortie keeps its ownership marker.
pub fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// The link's MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
        _ => None,
    })
}

/// The link's MTU.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// True when the link is administratively up.
pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The address an address message carries (`IFA_LOCAL` for IPv4, else `IFA_ADDRESS`).
pub fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(addr) => Some(*addr),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(addr) => Some(*addr),
            _ => None,
        })
    })
}

/// A route's destination address, if it has one (the default route has none).
pub fn route_destination(route: &RouteMessage) -> Option<IpAddr> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(address) => route_address(address),
        _ => None,
    })
}

/// A route's gateway, if it has one.
pub fn route_gateway(route: &RouteMessage) -> Option<IpAddr> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Gateway(address) => route_address(address),
        _ => None,
    })
}

/// A route's output interface index.
pub fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Formats MAC bytes the way results and `ip link` show them.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_mac_addresses() {
        assert_eq!(format_mac(&[0xee; 6]), "ee:ee:ee:ee:ee:ee");
        assert_eq!(format_mac(&[0x02, 0, 0, 0, 0, 0x1a]), "02:00:00:00:00:1a");
    }
}
