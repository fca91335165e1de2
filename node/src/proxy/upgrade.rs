//! Protocol switches (WebSocket's `Upgrade`, `CONNECT`): whether a response
//! agrees to the switch asked for ([`switched`]), the two sides of a switched
//! exchange — a hyper connection's upgrade, or a tunnel stream going on as raw
//! bytes ([`Upgrade`]) — and the splice that copies between them until both
//! end or nothing moves for the idle timeout ([`splice_upgraded`]).

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::RawTunnel;
use super::observed;

/// One side of a switched exchange.
#[allow(missing_debug_implementations)]
pub enum Upgrade {
    /// A hyper connection (the client's, or a backend's), once it has switched.
    Hyper(OnUpgrade),
    /// A tunnel stream, raw from the switch on.
    Tunnel(RawTunnel),
}

/// A byte stream either side of a splice can be.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Upgrade {
    async fn resolve(self) -> Result<Box<dyn Io>, hyper::Error> {
        Ok(match self {
            Upgrade::Hyper(on) => Box::new(TokioIo::new(on.await?)),
            Upgrade::Tunnel(raw) => Box::new(raw),
        })
    }
}

/// Whether a response agrees to the upgrade asked for (`upgrade`: `None` for a
/// plain request, `Some(true)` for `CONNECT`, `Some(false)` for an `Upgrade`
/// such as WebSocket): `101`, or `2xx` to `CONNECT`.
pub fn switched<B>(response: &Response<B>, upgrade: Option<bool>) -> bool {
    match upgrade {
        None => false,
        Some(connect) => {
            response.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && response.status().is_success())
        }
    }
}

/// Once both sides of an exchange have switched protocols, copies bytes
/// between them until both ends close or nothing has moved for `idle`. `keep`
/// (connection slots, in-flight counts) is held as long. `whose` names the
/// listener (or the inbound side) in the log line of an upgrade that did not
/// complete.
pub fn splice_upgraded(
    client: Upgrade,
    upstream: Upgrade,
    whose: &str,
    idle: Duration,
    keep: impl Send + 'static,
) {
    let whose = whose.to_string();
    tokio::spawn(async move {
        let _keep = keep;
        match (client.resolve().await, upstream.resolve().await) {
            (Ok(client), Ok(upstream)) => observed::splice_idle(client, upstream, idle).await,
            (c, u) => tracing::debug!(
                %whose,
                client = ?c.err(),
                upstream = ?u.err(),
                "an upgraded connection did not complete"
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_101_or_a_2xx_to_connect_switches() {
        let answer = |status: u16| Response::builder().status(status).body(()).unwrap();
        assert!(!switched(&answer(101), None), "nothing was asked");
        assert!(switched(&answer(101), Some(false)));
        assert!(
            !switched(&answer(200), Some(false)),
            "a WebSocket needs 101"
        );
        assert!(switched(&answer(200), Some(true)), "CONNECT takes a 2xx");
        assert!(!switched(&answer(407), Some(true)));
    }
}
