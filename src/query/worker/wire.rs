//! What the daemon and a query worker say over the worker's Unix socket,
//! one connection per query: frames of one kind byte, the payload's length
//! (u32, little endian) and the payload. The daemon sends one
//! [`Kind::Request`]; the worker answers [`Kind::Start`], any number of
//! [`Kind::Batch`], then [`Kind::End`] or [`Kind::Failed`]. Results travel
//! as one Arrow IPC stream cut into frames (the schema in Start, each
//! batch with its dictionaries in a Batch), so every type arrives as
//! DuckDB exported it. The daemon closing its side means "stop".

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::query::exec::Carrier;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Daemon to worker: a JSON [`Request`].
    Request = b'Q',
    /// A JSON [`StartHeader`]'s length (u32 LE), the header, then the
    /// Arrow IPC stream's schema message.
    Start = b'S',
    /// The IPC messages of one record batch (dictionaries first).
    Batch = b'B',
    /// A JSON [`crate::query::exec::QueryError`]; the last frame.
    Failed = b'F',
    /// The result is complete; the last frame.
    End = b'E',
}

impl Kind {
    fn of(b: u8) -> Option<Kind> {
        [Kind::Request, Kind::Start, Kind::Batch, Kind::Failed, Kind::End].into_iter().find(|k| *k as u8 == b)
    }
}

/// One query, as the daemon hands it to the worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The statement, already accepted by [`crate::query::guard`].
    pub sql: String,
    /// At most this many rows.
    pub max_rows: Option<u64>,
    /// How the result will be encoded (decides DuckDB's casts).
    pub carrier: Carrier,
    /// Time travel: read this snapshot rather than the latest.
    pub snapshot: Option<i64>,
}

/// What the worker knows about a result beyond its Arrow schema.
#[derive(Debug, Serialize, Deserialize)]
pub struct StartHeader {
    /// The snapshot the query read.
    pub snapshot_id: Option<i64>,
    /// Per column, DuckDB's type name where it arrives as text.
    pub as_text: Vec<Option<String>>,
}

/// Writes one frame (blocking).
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame of 4 GiB or more"))?;
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Reads one frame (blocking); None at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    r.read_exact(&mut head[1..])?;
    let (kind, len) = parse_head(&head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Reads one frame; None at a clean end of stream. Not cancellation safe.
pub async fn read_frame_async(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[1..]).await?;
    let (kind, len) = parse_head(&head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

fn parse_head(head: &[u8; 5]) -> io::Result<(Kind, usize)> {
    let kind = Kind::of(head[0])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame kind {}", head[0])))?;
    Ok((kind, u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize))
}

/// A Start frame's payload: header length, header, schema message.
pub fn start_payload(header: &StartHeader, schema_ipc: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a start header serializes");
    let mut out = Vec::with_capacity(4 + json.len() + schema_ipc.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(schema_ipc);
    out
}

/// Splits a Start frame's payload into its header and schema message.
pub fn split_start(payload: &[u8]) -> io::Result<(StartHeader, &[u8])> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let len = payload.get(..4).ok_or_else(|| bad("a start frame without its header"))?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let json = payload.get(4..4 + len).ok_or_else(|| bad("a start frame shorter than its header"))?;
    let header = serde_json::from_slice(json).map_err(|e| bad(&format!("a start header: {e}")))?;
    Ok((header, &payload[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_frame_is_an_error_not_an_end() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Batch, b"abc").unwrap();
        write_frame(&mut buf, Kind::End, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some((Kind::Batch, b"abc".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), Some((Kind::End, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut cut = &buf[..6];
        assert!(read_frame(&mut cut).is_err());
        let mut unknown = &[b'Z', 0, 0, 0, 0][..];
        assert!(read_frame(&mut unknown).is_err());
    }

    #[tokio::test]
    async fn the_daemons_async_reads_agree_with_the_workers_writes() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Start, b"xyz").unwrap();
        write_frame(&mut buf, Kind::Failed, b"{}").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame_async(&mut r).await.unwrap(), Some((Kind::Start, b"xyz".to_vec())));
        assert_eq!(read_frame_async(&mut r).await.unwrap(), Some((Kind::Failed, b"{}".to_vec())));
        assert_eq!(read_frame_async(&mut r).await.unwrap(), None);
        // A worker that died mid-frame: an error, never a clean end.
        let mut cut = &buf[..7];
        assert!(read_frame_async(&mut cut).await.is_err());
    }

    #[test]
    fn start_payload_splits_back() {
        let h = StartHeader { snapshot_id: Some(7), as_text: vec![None, Some("TIMETZ".into())] };
        let p = start_payload(&h, b"schema");
        let (back, rest) = split_start(&p).unwrap();
        assert_eq!(
            (back.snapshot_id, back.as_text, rest),
            (Some(7), vec![None, Some("TIMETZ".into())], &b"schema"[..])
        );
        assert!(split_start(&p[..3]).is_err());
    }
}
