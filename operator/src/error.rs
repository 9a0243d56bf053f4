//! What can go wrong in the operator, split into permanent errors (the object must change
//! before trying again helps) and transient ones (trying again later may succeed).

/// An error of one reconcile or one start-up step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a request or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// An object could not be turned into JSON for a write.
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being written.
        what: String,
        /// What serde said.
        source: serde_json::Error,
    },

    /// An object could not be read as its kind; retrying cannot help until it changes.
    #[error("{kind} {name} is malformed: {message}")]
    Malformed {
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// What was wrong.
        message: String,
    },

    /// Leader election failed.
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What the lease manager said.
        source: kube_lease_manager::LeaseManagerError,
    },

    /// The lease timings contradict each other.
    #[error(
        "--lease-renew-grace ({grace}s) must be less than --lease-duration ({duration}s); \
         raise the duration or lower the grace"
    )]
    LeaseTimes {
        /// The renew grace, in seconds.
        grace: u64,
        /// The lease duration, in seconds.
        duration: u64,
    },

    /// The leader-election task ended before this replica was elected.
    #[error("leader election on Lease {namespace}/{name} stopped before this replica was elected")]
    LeaseEnded {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
    },

    /// The metrics and health server could not start.
    #[error("serving metrics and health on {addr}: {source}")]
    Serve {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying cannot succeed until the object changes.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Malformed { .. } | Error::Serialize { .. } => true,
            // A request the API server rejects as invalid stays invalid until something
            // changes; conflicts, timeouts and unavailability pass.
            Error::Kube(kube::Error::Api(status)) => status.code == 422,
            _ => false,
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
