//! Client addresses behind proxies and load balancers, for the per-source
//! rate limits (docs/DEPLOYMENT.md, "Client addresses and rate limits").
//! Both mechanisms are off by default and apply only to peers the operator
//! lists; a client that is not such a peer cannot claim another address.
//!
//! - **PROXY protocol** (v1 text or v2 binary, as HAProxy, NGINX `stream`,
//!   Envoy and cloud network balancers send it) from the peers in
//!   `--proxy-protocol-from`: such a connection must start with a PROXY
//!   header, which names the client; a connection from a listed peer without
//!   a valid header within [`HEADER_TIMEOUT`] is closed. Parsing is the `ppp`
//!   crate's.
//! - **`x-forwarded-for`** from the peers in `--trusted-proxy` (HTTP/2-aware
//!   balancers, which re-encrypt to the node): the client is the rightmost
//!   address in the header that is not itself a trusted proxy.
//!
//! The address is used in memory for rate limiting only, never stored or
//! logged.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a listed peer may take to send its PROXY header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest PROXY header accepted (v1 is at most 107 bytes; v2 addresses
/// plus the TLVs balancers add stay far below this).
pub const MAX_HEADER_BYTES: usize = 1024;
/// Connections whose PROXY header is still being read, at most.
pub const MAX_PENDING_HEADERS: usize = 1024;

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not an IP address or network such as 10.0.0.0/8 or 2001:db8::/32")
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(address.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

/// A list of trusted peers (empty: trust none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and networks.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `ip` is a listed peer.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client of a call from `peer`: `peer` itself unless it is listed
    /// and the call carries `x-forwarded-for`, then the rightmost address
    /// there that is not listed (malformed entries end the walk).
    pub fn client(&self, peer: IpAddr, metadata: &MetadataMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for value in metadata.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return client;
            };
            // Later values and later entries were appended by closer hops.
            for entry in text.rsplit(',') {
                let Ok(hop) = entry.trim().parse::<IpAddr>() else {
                    return client;
                };
                client = hop;
                if !self.contains(hop) {
                    return hop;
                }
            }
        }
        client
    }
}

/// A connection whose client address came from a PROXY header.
#[derive(Debug)]
pub struct ProxiedStream {
    inner: TcpStream,
    local: Option<SocketAddr>,
    client: SocketAddr,
}

impl Connected for ProxiedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.client),
        }
    }
}

impl AsyncRead for ProxiedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxiedStream {
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

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Reading failed or the peer closed.
    #[error("the connection failed while reading its PROXY header: {0}")]
    Io(#[from] io::Error),
    /// Not a valid v1 or v2 header.
    #[error("the connection did not start with a valid PROXY protocol header")]
    Invalid,
}

/// Reads exactly one PROXY header (nothing after it) and returns the client
/// address it names; `None` for a header without one (v1 `UNKNOWN`, v2
/// `LOCAL`, e.g. the balancer's own health checks), which are then served as
/// the peer.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut header = Vec::with_capacity(232);
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    header.push(first[0]);
    if first[0] == b'P' {
        // v1: text up to CRLF, at most 107 bytes.
        while !header.ends_with(b"\r\n") {
            if header.len() >= 107 {
                return Err(HeaderError::Invalid);
            }
            stream.read_exact(&mut first).await?;
            header.push(first[0]);
        }
    } else {
        // v2: a 16-byte preamble whose last two bytes give the length.
        let mut preamble = [0u8; 15];
        stream.read_exact(&mut preamble).await?;
        header.extend_from_slice(&preamble);
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + length > MAX_HEADER_BYTES {
            return Err(HeaderError::Invalid);
        }
        let start = header.len();
        header.resize(start + length, 0);
        stream.read_exact(&mut header[start..]).await?;
    }
    client_of(&header)
}

fn client_of(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::HeaderResult;
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(parsed)) => Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(parsed)) => {
            if parsed.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match parsed.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            })
        }
        _ => Err(HeaderError::Invalid),
    }
}

/// Accepted connections, as tonic's `serve_with_incoming` takes them.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<io::Result<ProxiedStream>>;

/// Accepts connections on `listener`: those from `proxies` must start with a
/// PROXY header (read concurrently, each within [`HEADER_TIMEOUT`]); the
/// others are served as they are. The accept loop ends when the returned
/// stream is dropped.
pub fn incoming(listener: TcpListener, proxies: TrustedProxies) -> Incoming {
    let (ready, accepted) = mpsc::channel(64);
    let pending = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HEADERS));
    tokio::spawn(async move {
        loop {
            let (mut stream, peer) = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            if !proxies.contains(peer.ip()) {
                let direct = ProxiedStream {
                    inner: stream,
                    local,
                    client: peer,
                };
                if ready.send(Ok(direct)).await.is_err() {
                    return;
                }
                continue;
            }
            let Ok(permit) = std::sync::Arc::clone(&pending).try_acquire_owned() else {
                tracing::warn!(
                    "too many connections are still sending their PROXY header; one was closed"
                );
                continue;
            };
            let ready = ready.clone();
            tokio::spawn(async move {
                let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)).await;
                drop(permit);
                let client = match header {
                    Ok(Ok(client)) => client.unwrap_or(peer),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "closed a connection from a PROXY-protocol peer");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(
                            "closed a connection from a PROXY-protocol peer that sent no header in time"
                        );
                        return;
                    }
                };
                let _ = ready
                    .send(Ok(ProxiedStream {
                        inner: stream,
                        local,
                        client,
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(accepted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let list = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1,2001:db8::/32").unwrap();
        assert!(list.contains(ip("10.1.2.3")));
        assert!(list.contains(ip("::ffff:10.9.9.9")));
        assert!(list.contains(ip("192.0.2.1")));
        assert!(!list.contains(ip("192.0.2.2")));
        assert!(list.contains(ip("2001:db8:ffff::1")));
        assert!(!list.contains(ip("2001:db9::1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "example.org", "::/129", "1.2.3.4/x"] {
            let error = TrustedProxies::parse(bad).unwrap_err();
            assert!(error.contains("is not an IP address"), "{error}");
        }
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_peers() {
        let list = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        // The rightmost hop that is not a proxy of ours; the leftmost entry
        // is whatever the client claimed and is not believed.
        assert_eq!(list.client(ip("10.0.0.1"), &metadata), ip("203.0.113.7"));
        assert_eq!(list.client(ip("192.0.2.9"), &metadata), ip("192.0.2.9"));
        assert_eq!(
            list.client(ip("10.0.0.1"), &MetadataMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn headers_name_the_client() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 443\r\n";
        assert_eq!(
            client_of(v1).unwrap(),
            Some("203.0.113.7:5555".parse().unwrap())
        );
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n";
        assert_eq!(
            client_of(v1).unwrap(),
            Some("[2001:db8::7]:5555".parse().unwrap())
        );
        assert_eq!(client_of(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(client_of(b"PROXY TCP4 nonsense\r\n").is_err());
        assert!(client_of(b"GET / HTTP/1.1\r\n").is_err());
    }
}
