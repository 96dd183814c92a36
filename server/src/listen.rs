//! Accepting connections: how many, from whom, and how long one may take to say something.
//!
//! Anyone who can reach the port can open connections, credential or not, so every connection
//! is bounded before it reaches the router:
//!
//! - **A cap, and a cap per client address** (`--max-connections`, `--max-connections-per-ip`):
//!   a connection beyond either is closed at once, before TLS.
//! - **TLS handshake:** at most `--header-read-timeout`.
//! - **The first bytes** (enough to tell HTTP/1 from HTTP/2): within `--header-read-timeout`;
//!   hyper would otherwise wait for them forever.
//! - **HTTP/1 request heads:** within `--header-read-timeout` (hyper's timer). Hyper starts that
//!   timer whenever it waits for the next request, so it is also how long a kept-alive
//!   connection may sit idle.
//! - **HTTP/2:** pings every 20 s, a peer that does not answer within 20 s is dropped; at most
//!   64 streams per connection and 64 KiB of headers.
//!
//! Request bodies are bounded by the router (`--body-read-timeout`) and by ingest itself
//! ([`crate::ingest::body`]); whole requests by [`crate::http::REQUEST_TIMEOUT`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::lock_counts as lock;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::{Accept, DefaultAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bytes that must arrive before the version is known: the length of the HTTP/2 preface.
const VERSION_BYTES: usize = 24;
/// HTTP/2 keep-alive pings: how often, and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 streams at once on one connection, and its largest header list.
const H2_MAX_STREAMS: u32 = 64;
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// The bounds on connections. Defaults: see [`ConnectionLimits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_ip: usize,
    /// Longest a client may take for a TLS handshake, for its first bytes, and for each request
    /// head; and longest a kept-alive HTTP/1 connection may sit idle.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listen` (HTTPS with `tls`) within `limits` until `handle` shuts it down.
pub async fn serve(
    app: axum::Router,
    listen: SocketAddr,
    tls: Option<RustlsConfig>,
    limits: ConnectionLimits,
    handle: axum_server::Handle,
) -> io::Result<()> {
    let service = app.into_make_service();
    let slots = Slots::new(limits);
    match tls {
        Some(tls) => {
            let tls = RustlsAcceptor::new(tls).handshake_timeout(limits.header_read_timeout);
            let mut server = axum_server::bind(listen).acceptor(Limited::new(tls, slots));
            configure(server.http_builder(), &limits);
            server.handle(handle).serve(service).await
        }
        None => {
            let mut server =
                axum_server::bind(listen).acceptor(Limited::new(DefaultAcceptor, slots));
            configure(server.http_builder(), &limits);
            server.handle(handle).serve(service).await
        }
    }
}

fn configure(
    builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>,
    limits: &ConnectionLimits,
) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
}

/// The connections open, in total and per client address.
#[derive(Clone)]
struct Slots {
    limits: ConnectionLimits,
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection's place; dropping it frees the place.
struct Slot {
    _total: OwnedSemaphorePermit,
    ip: Option<IpAddr>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Slots {
    fn new(limits: ConnectionLimits) -> Slots {
        Slots {
            limits,
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: Arc::default(),
        }
    }

    fn take(&self, ip: Option<IpAddr>) -> Result<Slot, &'static str> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "the server's connection limit")?;
        if let Some(ip) = ip {
            let mut per_ip = lock(&self.per_ip);
            let open = per_ip.entry(ip).or_insert(0);
            if *open >= self.limits.max_per_ip.max(1) {
                return Err("the connection limit per client address");
            }
            *open += 1;
        }
        metrics::gauge!("backlight_connections_open").increment(1.0);
        Ok(Slot {
            _total: total,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("backlight_connections_open").decrement(1.0);
        if let Some(ip) = self.ip {
            let mut per_ip = lock(&self.per_ip);
            if let Some(open) = per_ip.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// An acceptor that takes a [`Slot`] before handing the connection to `inner` (TLS or none).
#[derive(Clone)]
struct Limited<A> {
    inner: A,
    slots: Slots,
}

impl<A> Limited<A> {
    fn new(inner: A, slots: Slots) -> Limited<A> {
        Limited { inner, slots }
    }
}

type Accepted<T, S> = Pin<Box<dyn Future<Output = io::Result<(T, S)>> + Send>>;

impl<A, S> Accept<TcpStream, S> for Limited<A>
where
    A: Accept<TcpStream, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = A::Service;
    type Future = Accepted<Self::Stream, Self::Service>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        let slot = match self.slots.take(peer.map(|p| p.ip())) {
            Ok(slot) => slot,
            Err(limit) => {
                metrics::counter!("backlight_connections_refused_total", "limit" => limit)
                    .increment(1);
                tracing::debug!(?peer, limit, "connection refused");
                // Dropping the stream closes it.
                return Box::pin(std::future::ready(Err(io::Error::other(limit))));
            }
        };
        let first_bytes = self.slots.limits.header_read_timeout;
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((Guarded::new(stream, slot, first_bytes), service))
        })
    }
}

/// A connection holding its [`Slot`], which must deliver its first [`VERSION_BYTES`] bytes
/// within the given time.
pub struct Guarded<T> {
    inner: T,
    _slot: Slot,
    first_bytes: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl<T> Guarded<T> {
    fn new(inner: T, slot: Slot, first_bytes: Duration) -> Guarded<T> {
        Guarded {
            inner,
            _slot: slot,
            first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
            read: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.read += buf.filled().len() - before;
                if self.read >= VERSION_BYTES {
                    self.first_bytes = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .first_bytes
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent too little within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_address() {
        let slots = Slots::new(ConnectionLimits {
            max_connections: 3,
            max_per_ip: 2,
            ..ConnectionLimits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let a1 = slots.take(Some(a)).unwrap();
        let _a2 = slots.take(Some(a)).unwrap();
        assert!(
            slots.take(Some(a)).is_err(),
            "a third from the same address"
        );
        let _b1 = slots.take(Some(b)).unwrap();
        assert!(slots.take(Some(b)).is_err(), "a fourth in total");
        drop(a1);
        let _b2 = slots
            .take(Some(b))
            .expect("a closed connection frees its place");
        assert_eq!(lock(&slots.per_ip).get(&a), Some(&1));
    }
}
