//! The agent's side of the IPAM socket: where it listens, who may connect, and how each
//! request is read, checked and answered.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tortie_crds::validation::ValidationErrors;

use super::allocator::{Allocator, IpamError};
use super::protocol::{
    AllocateRequest, CODE_DECODE, CODE_INVALID, CheckRequest, CheckResponse, ErrorBody,
    MAX_REQUEST_BYTES, PATH_ALLOCATE, PATH_CHECK, PATH_RELEASE, PATH_STATUS, ReleaseRequest,
    ReleaseResponse,
};

/// How long a client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Mode of the socket's directory: only root may enter it.
pub const DIRECTORY_MODE: u32 = 0o700;

/// Mode of the socket: only root may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Why the socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A filesystem step failed.
    #[error("IPAM socket {path}: could not {step}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// Another process answers on the socket already.
    #[error(
        "IPAM socket {path} is already served by another process; stop the other agent or \
         choose another --ipam-socket"
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error(
        "IPAM socket {path} exists and is not a socket; remove it or choose another --ipam-socket"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// In-flight requests did not finish in time after shutdown was asked for.
    #[error("requests were still in flight {0:?} after shutdown was asked for")]
    ShutdownTimedOut(Duration),
}

/// Makes the socket's directory (mode 0700), removes a stale socket left by an agent
/// that died, and listens on a new socket with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |step: &'static str| {
        move |source| ServeError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIRECTORY_MODE))
            .map_err(io("restrict its directory to root"))?;
    }

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_owned(),
                });
            }
            tracing::info!(socket = %path.display(), "removing a stale IPAM socket");
            std::fs::remove_file(path).map_err(io("remove a stale socket"))?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io("inspect the path")(error)),
    }

    let listener = UnixListener::bind(path).map_err(io("listen"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("restrict the socket to root"))?;
    Ok(listener)
}

/// Removes the socket file (on shutdown); a missing file is fine.
pub fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "IPAM socket removed"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(socket = %path.display(), %error, "could not remove the IPAM socket")
        }
    }
}

/// The HTTP routes of the protocol.
pub fn router(allocator: Arc<Allocator>) -> Router {
    Router::new()
        .route(PATH_ALLOCATE, post(allocate))
        .route(PATH_RELEASE, post(release))
        .route(PATH_CHECK, post(check))
        .route(PATH_STATUS, get(status))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(allocator)
}

/// Serves requests until `shutdown` completes, then lets the requests in flight finish
/// for at most `grace`.
pub async fn serve(
    listener: UnixListener,
    allocator: Arc<Allocator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let signalled = async move {
        shutdown.await;
        notify.notify_one();
    };
    let server = axum::serve(listener, router(allocator)).with_graceful_shutdown(signalled);
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served.map_err(|source| ServeError::Io {
            path: PathBuf::new(),
            step: "accept connections",
            source,
        }),
        () = deadline => Err(ServeError::ShutdownTimedOut(grace)),
    }
}

async fn allocate(
    State(allocator): State<Arc<Allocator>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request: AllocateRequest = match read_request(&headers, body, "allocate").await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match allocator.allocate(&request).await {
        Ok(response) => Json(response).into_response(),
        Err(error) => ipam_error(&request.handle_id, "allocate", &error),
    }
}

async fn release(
    State(allocator): State<Arc<Allocator>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request: ReleaseRequest = match read_request(&headers, body, "release").await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match allocator.release(&request.handle_id).await {
        Ok(released) => Json(ReleaseResponse { released }).into_response(),
        Err(error) => ipam_error(&request.handle_id, "release", &error),
    }
}

async fn check(
    State(allocator): State<Arc<Allocator>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request: CheckRequest = match read_request(&headers, body, "check").await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match allocator.check(&request.handle_id).await {
        Ok(addresses) => Json(CheckResponse { addresses }).into_response(),
        Err(error) => ipam_error(&request.handle_id, "check", &error),
    }
}

async fn status(State(allocator): State<Arc<Allocator>>) -> Response {
    Json(allocator.status().await).into_response()
}

async fn unknown_path(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        CODE_INVALID,
        format!(
            "unknown IPAM path {}: this agent speaks {}: POST {PATH_ALLOCATE}, POST \
             {PATH_RELEASE}, POST {PATH_CHECK}, GET {PATH_STATUS}",
            uri.path(),
            super::protocol::VERSION
        ),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        CODE_INVALID,
        format!(
            "{method} is not allowed on {}: use GET for {PATH_STATUS} and POST otherwise",
            uri.path()
        ),
    )
}

/// Reads a bounded body and decodes it; any failure is answered without touching state.
/// A request body that names a handle and can check its own fields.
trait HandleRequest: DeserializeOwned {
    fn handle_id(&self) -> &str;
    fn validate(&self) -> Result<(), ValidationErrors>;
}

macro_rules! handle_request {
    ($($request:ty),*) => {$(
        impl HandleRequest for $request {
            fn handle_id(&self) -> &str {
                &self.handle_id
            }
            fn validate(&self) -> Result<(), ValidationErrors> {
                <$request>::validate(self)
            }
        }
    )*};
}
handle_request!(AllocateRequest, ReleaseRequest, CheckRequest);

/// Reads the body of an `operation` request and checks its fields; a broken rule is a
/// 422 naming the handle and the field.
async fn read_request<T: HandleRequest>(
    headers: &HeaderMap,
    body: Body,
    operation: &str,
) -> Result<T, Response> {
    let request: T = read_json(headers, body, operation).await?;
    if let Err(errors) = request.validate() {
        return Err(error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            CODE_INVALID,
            format!(
                "invalid {operation} request for handle {:?}: {errors}",
                request.handle_id()
            ),
        ));
    }
    Ok(request)
}

async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, Response> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared
        && length > MAX_REQUEST_BYTES as u64
    {
        return Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            CODE_DECODE,
            format!(
                "{what} request of {length} bytes is over the limit of {MAX_REQUEST_BYTES} bytes"
            ),
        ));
    }
    let bytes = match tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_REQUEST_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                CODE_DECODE,
                format!(
                    "{what} request body could not be read in full: it was cut short or is over \
                     {MAX_REQUEST_BYTES} bytes ({error})"
                ),
            ));
        }
        Err(_) => {
            return Err(error_response(
                StatusCode::REQUEST_TIMEOUT,
                CODE_DECODE,
                format!("{what} request body did not arrive within {BODY_TIMEOUT:?}"),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|error| {
        error_response(
            StatusCode::BAD_REQUEST,
            CODE_DECODE,
            format!(
                "{what} request is not a valid {} {what} request: {error}",
                super::protocol::VERSION
            ),
        )
    })
}

fn ipam_error(handle: &str, operation: &str, error: &IpamError) -> Response {
    let status = match error {
        IpamError::WrongNode { .. } | IpamError::Pools(_) => StatusCode::UNPROCESSABLE_ENTITY,
        IpamError::Exhausted { .. } => StatusCode::INSUFFICIENT_STORAGE,
        IpamError::Unavailable(_) | IpamError::Contention { .. } => StatusCode::SERVICE_UNAVAILABLE,
        IpamError::UnknownNode { .. } | IpamError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(handle = %handle, operation = operation, code = error.code(), error = %error, "IPAM request failed");
    body_response(status, error.code(), error.to_string())
}

/// A refused request: logged at debug, since the plugin reports it to the runtime.
fn error_response(status: StatusCode, code: u32, msg: String) -> Response {
    tracing::debug!(status = status.as_u16(), code, error = %msg, "refused an IPAM request");
    body_response(status, code, msg)
}

fn body_response(status: StatusCode, code: u32, msg: String) -> Response {
    let body = ErrorBody {
        code,
        msg,
        details: String::new(),
    };
    (status, Json(body)).into_response()
}
