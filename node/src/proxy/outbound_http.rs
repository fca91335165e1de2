//! The calling end of a tunnelled HTTP request: on a tunnel stream whose
//! header is written, the request goes out at once as parts — its head, its
//! body (whole, or streamed by a task of its own while the answer is awaited),
//! its trailers or end — and the first part back decides: a response head
//! (its body streams from the parts that follow, or the stream goes raw after
//! a protocol switch), or "not forwarded", in which case the body is given
//! back for a try elsewhere when it can be (see [`Reply::NotForwarded`]).

use bytes::{Bytes, BytesMut};
use hyper::Response;
use hyper::body::Frame;
use mesh_proto::codec::EncodeError;
use mesh_proto::exchange::{Part, RequestHeadRef, encode_data, encode_part, encode_request_head};
use mesh_proto::tunnel::StreamStatus;
use quinn::{SendStream, VarInt};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::body::{Body, REPLAY_LIMIT, full, prepend};
use super::exchange::{self, PartReader, PartsBody, WriteError};
use super::upgrade::{Upgrade, switched};
use super::upstream::Tunnel;

/// The request body to send.
#[allow(missing_debug_implementations)]
pub enum Outgoing {
    /// All of it, known now (kept for replays, or empty).
    Whole(Bytes),
    /// A body still arriving from the client: streamed as it comes.
    Streamed(Body),
}

/// The serving node's answer.
#[allow(missing_debug_implementations)]
pub enum Reply {
    /// The backend's response (its body streams on), and the tunnel's raw
    /// side if it agreed to a protocol switch.
    Response(Response<Body>, Option<Upgrade>),
    /// The serving node did not hand the request to a backend: sending it
    /// elsewhere is safe. The body is given back when all of it that was sent
    /// is still known (up to [`REPLAY_LIMIT`] bytes of a streamed body);
    /// `None` for a streamed body past that, which then cannot be sent again.
    NotForwarded(StreamStatus, Option<Body>),
}

/// Why no answer came.
#[derive(Debug, Error)]
pub enum ExchangeError {
    /// The request head cannot be put on the wire (a limit of the format):
    /// no endpoint would take it.
    #[error("the request cannot be tunnelled: {0}")]
    Head(#[from] EncodeError),
    /// The stream ended, or carried something else, before a response head:
    /// whether the backend saw the request is unknown. `client` when it was
    /// the client's own request body that failed (it went away mid-upload).
    #[error("{text}")]
    Failed {
        /// The client's body failed first.
        client: bool,
        /// What happened.
        text: String,
    },
}

/// The reset code of a request stream whose client's body failed.
const CLIENT_GONE: u32 = 2;

/// Sends the request on `tunnel` and reads the answer. `upgrade` as in
/// [`switched`].
pub async fn exchange(
    tunnel: Tunnel,
    head: RequestHeadRef<'_>,
    body: Outgoing,
    upgrade: Option<bool>,
) -> Result<Reply, ExchangeError> {
    let Tunnel { send, recv } = tunnel;
    let (send, pump) = send_request(send, head, body, upgrade).await?;
    read_answer(recv, send, pump, upgrade).await
}

/// The parts [`exchange()`] writes for a request whose body is known whole, to
/// be sent with the stream's header in one write; [`answer`] then reads the
/// reply.
pub fn encode_whole(head: RequestHeadRef<'_>, body: &Bytes) -> Result<Bytes, ExchangeError> {
    let head = RequestHeadRef {
        has_body: !body.is_empty(),
        ..head
    };
    let mut out = BytesMut::with_capacity(512 + body.len());
    encode_request_head(&head, &mut out)?;
    append_whole(&mut out, body.clone())?;
    Ok(out.freeze())
}

/// Reads the answer to a request [`encode_whole`] wrote on `tunnel` with its
/// header.
pub async fn answer(tunnel: Tunnel) -> Result<Reply, ExchangeError> {
    // The request was whole: `open_stream` finished the send side with it.
    read_answer(tunnel.recv, None, None, None).await
}

/// Reads the serving node's first part, and the response it begins.
async fn read_answer(
    recv: quinn::RecvStream,
    send: Option<SendStream>,
    pump: Option<Pump>,
    upgrade: Option<bool>,
) -> Result<Reply, ExchangeError> {
    let mut reader = PartReader::new(recv);
    match reader.next().await {
        Ok(Some(Part::NotForwarded(status))) => {
            let body = match pump {
                Some((stop, task)) => {
                    let _ = stop.send(());
                    task.await.ok().and_then(Pumped::recovered)
                }
                None => None,
            };
            Ok(Reply::NotForwarded(status, body))
        }
        Ok(Some(Part::ResponseHead(h))) => response(h, reader, send, upgrade),
        Ok(Some(other)) => Err(ExchangeError::Failed {
            client: false,
            text: format!("the serving node answered with a {} part", other.name()),
        }),
        Ok(None) => {
            Err(ended_early(pump, "the serving node ended the stream without a response").await)
        }
        Err(e) => Err(ended_early(pump, &format!("the tunnel stream failed: {e}")).await),
    }
}

/// A streamed body's pump: the signal that stops it, and its task.
type Pump = (oneshot::Sender<()>, JoinHandle<Pumped>);

/// Writes the request: its head and a whole body at once, or its head and a
/// pump streaming the body. The send stream is kept only for a protocol
/// switch (it writes its body first and keeps the stream for the raw bytes);
/// a whole request finishes it, a pump takes it.
async fn send_request(
    mut send: SendStream,
    head: RequestHeadRef<'_>,
    body: Outgoing,
    upgrade: Option<bool>,
) -> Result<(Option<SendStream>, Option<Pump>), ExchangeError> {
    let head = RequestHeadRef {
        has_body: match &body {
            Outgoing::Whole(bytes) => !bytes.is_empty(),
            Outgoing::Streamed(_) => true,
        },
        ..head
    };
    let mut out = BytesMut::with_capacity(512);
    encode_request_head(&head, &mut out)?;
    // A write that fails is not the answer: a serving node that refuses the
    // request stops the stream after saying so. The first part read decides.
    match body {
        Outgoing::Whole(bytes) => {
            append_whole(&mut out, bytes)?;
            let _ = send.write_all(&out).await;
            if upgrade.is_some() {
                return Ok((Some(send), None));
            }
            // Nothing follows a whole request that cannot switch protocols:
            // its end leaves with it (see `upstream::open_stream`).
            let _ = send.finish();
            Ok((None, None))
        }
        Outgoing::Streamed(body) if upgrade.is_some() => {
            let _ = send.write_all(&out).await;
            let _ = exchange::write_body(&mut send, body, None, |_| {}).await;
            Ok((Some(send), None))
        }
        Outgoing::Streamed(body) => {
            let _ = send.write_all(&out).await;
            let (stop, stopped) = oneshot::channel();
            Ok((None, Some((stop, tokio::spawn(pump(send, body, stopped))))))
        }
    }
}

/// The response a head begins: its body streams from the parts that follow,
/// or, after a protocol switch, the stream goes on raw.
fn response(
    h: mesh_proto::exchange::ResponseHead,
    reader: PartReader,
    send: Option<SendStream>,
    upgrade: Option<bool>,
) -> Result<Reply, ExchangeError> {
    let has_body = h.has_body;
    let probe = exchange::response_from_head(h, ()).map_err(failed(false))?;
    if let (true, Some(send)) = (switched(&probe, upgrade), send) {
        let raw = tokio::io::join(reader.into_raw(), send);
        let response = probe.map(|()| exchange::empty());
        return Ok(Reply::Response(response, Some(Upgrade::Tunnel(raw))));
    }
    let body = if has_body {
        let length = exchange::content_length(probe.headers());
        http_body_util::BodyExt::boxed_unsync(PartsBody::new(reader).with_length(length))
    } else {
        exchange::empty()
    };
    Ok(Reply::Response(probe.map(|()| body), None))
}

fn failed(client: bool) -> impl Fn(super::body::BoxError) -> ExchangeError {
    move |e| ExchangeError::Failed {
        client,
        text: e.to_string(),
    }
}

/// The failure of an exchange that ended before a response head: the
/// client's if its body had failed by then.
async fn ended_early(pump: Option<Pump>, text: &str) -> ExchangeError {
    let client = match pump {
        Some((_, task)) if task.is_finished() => task.await.is_ok_and(|p| p.body_failed),
        _ => false,
    };
    ExchangeError::Failed {
        client,
        text: text.to_string(),
    }
}

/// Appends `bytes` as data parts and the end part (nothing for no bytes: the
/// head said there is no body).
fn append_whole(out: &mut BytesMut, bytes: Bytes) -> Result<(), EncodeError> {
    if bytes.is_empty() {
        return Ok(());
    }
    for (header, data) in encode_data(bytes) {
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
    }
    encode_part(&Part::End, out)
}

/// What became of a streamed body.
struct Pumped {
    /// Every data byte taken from the body so far, while within
    /// [`REPLAY_LIMIT`] and no trailers were taken; `None` past that.
    sent: Option<BytesMut>,
    /// What is left of the body, if the pump stopped before its end.
    rest: Option<Body>,
    /// The body was sent to its end.
    finished: bool,
    /// The body itself failed (the client went away).
    body_failed: bool,
}

impl Pumped {
    /// The whole body again, for a try elsewhere, if it can be had.
    fn recovered(self) -> Option<Body> {
        if self.body_failed {
            return None;
        }
        let sent = self.sent?.freeze();
        match (self.finished, self.rest) {
            (true, _) => Some(full(sent)),
            (false, Some(rest)) => Some(prepend(sent, rest)),
            (false, None) => None,
        }
    }
}

/// Streams `body` as parts until it ends, the stream fails, or `stop` fires
/// (the request was not forwarded: the rest of the body is kept). A response
/// may come while the body still streams (a gRPC stream, a backend that
/// answers early): then `stop` is dropped, and the body goes on.
async fn pump(mut send: SendStream, mut body: Body, mut stop: oneshot::Receiver<()>) -> Pumped {
    let mut p = Pumped {
        sent: Some(BytesMut::new()),
        rest: None,
        finished: false,
        body_failed: false,
    };
    // `stop` fires when the request was not forwarded; once its sender is
    // gone (the answer was a response) the body streams on to its end.
    let mut stop = Some(&mut stop);
    loop {
        let frame = match stop.as_mut() {
            Some(signal) => tokio::select! {
                biased;
                stopped = &mut **signal => {
                    if stopped.is_ok() {
                        p.rest = Some(body);
                        return p;
                    }
                    stop = None;
                    continue;
                }
                frame = http_body_util::BodyExt::frame(&mut body) => frame,
            },
            None => http_body_util::BodyExt::frame(&mut body).await,
        };
        let written = match frame {
            None => {
                p.finished = true;
                exchange::write_part(&mut send, &Part::End).await
            }
            Some(Err(e)) => {
                p.body_failed = true;
                tracing::debug!(error = %e, "a streamed request body failed; resetting its tunnel stream");
                let _ = send.reset(VarInt::from_u32(CLIENT_GONE));
                return p;
            }
            Some(Ok(frame)) => {
                p.record(&frame);
                write_frame(&mut send, frame).await.map(|ended| {
                    p.finished = ended;
                })
            }
        };
        match written {
            // The serving node stopped the stream (it did not forward the
            // request, or failed): what is left of the body stays with it.
            Err(_) => {
                p.rest = Some(body);
                return p;
            }
            Ok(()) if p.finished => {
                let _ = send.finish();
                return p;
            }
            Ok(()) => {}
        }
    }
}

impl Pumped {
    fn record(&mut self, frame: &Frame<Bytes>) {
        let keep = match (frame.data_ref(), &self.sent) {
            (Some(data), Some(sent)) => sent.len() + data.len() <= REPLAY_LIMIT,
            _ => false,
        };
        match (keep, frame.data_ref(), &mut self.sent) {
            (true, Some(data), Some(sent)) => sent.extend_from_slice(data),
            _ => self.sent = None,
        }
    }
}

/// Writes one body frame: data parts, or trailers. `true` when it ended the
/// body (trailers).
async fn write_frame(send: &mut SendStream, frame: Frame<Bytes>) -> Result<bool, WriteError> {
    match frame.into_data() {
        Ok(data) => exchange::write_data(send, data, None).await.map(|()| false),
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) => {
                let fields = mesh_proto::exchange::Fields(trailers);
                let part = Part::Trailers(mesh_proto::exchange::Trailers { fields });
                exchange::write_part(send, &part).await.map(|()| true)
            }
            Err(_) => Ok(false),
        },
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn pumped(frames: &[Frame<Bytes>]) -> Pumped {
        let mut p = Pumped {
            sent: Some(BytesMut::new()),
            rest: None,
            finished: false,
            body_failed: false,
        };
        for f in frames {
            let copy = match f.data_ref() {
                Some(d) => Frame::data(d.clone()),
                None => Frame::trailers(hyper::HeaderMap::new()),
            };
            p.record(&copy);
        }
        p
    }

    async fn text(body: Option<Body>) -> Option<String> {
        let bytes = body?.collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn a_small_body_not_forwarded_is_given_back_whole() {
        // Stopped mid-body: what was sent, then the rest.
        let mut p = pumped(&[data("abc"), data("def")]);
        p.rest = Some(full(Bytes::from_static(b"ghi")));
        assert_eq!(text(p.recovered()).await.as_deref(), Some("abcdefghi"));
        // Sent to its end before the answer came.
        let mut p = pumped(&[data("abc")]);
        p.finished = true;
        assert_eq!(text(p.recovered()).await.as_deref(), Some("abc"));
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_had_again_is_not_given_back() {
        // Past the replay limit: its start is gone.
        let big = Frame::data(Bytes::from(vec![0u8; REPLAY_LIMIT + 1]));
        let mut p = pumped(&[big]);
        p.rest = Some(full(Bytes::new()));
        assert!(p.recovered().is_none());
        // Trailers were sent: they are not kept.
        let mut p = pumped(&[data("abc"), Frame::trailers(hyper::HeaderMap::new())]);
        p.finished = true;
        assert!(p.recovered().is_none());
        // The client's body failed.
        let mut p = pumped(&[data("abc")]);
        p.body_failed = true;
        p.rest = Some(full(Bytes::new()));
        assert!(p.recovered().is_none());
        // Stopped, but the rest was lost with a failed write.
        let p = pumped(&[data("abc")]);
        assert!(p.recovered().is_none());
    }
}
