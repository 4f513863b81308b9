//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//! Frames are bounded so a peer cannot make the other side buffer without
//! limit.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts. Requests carry an OCI process spec at
/// most; stdio never travels in frames.
pub const MAX_FRAME_SIZE: usize = 1 << 20;

#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    TooLarge(usize),
    Io(std::io::Error),
    Json(serde_json::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::TooLarge(len) => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the {MAX_FRAME_SIZE}-byte limit"
                )
            }
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
            FrameError::Json(e) => write!(f, "malformed message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(message).map_err(FrameError::Json)?;
    if json.len() > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge(json.len()));
    }
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode(message)?;
    writer.write_all(&frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}

/// Reads one frame. A frame that is too large or not valid JSON for `T` is
/// an error; after `TooLarge` or `Io` the stream is out of step and should
/// be closed, after `Json` the next frame can still be read.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = read_frame_bytes(reader).await?;
    serde_json::from_slice(&body).map_err(FrameError::Json)
}

/// Reads one frame and returns its body undecoded, for a reader that wants
/// to look at a malformed message (say, to find its request id) before
/// answering it. Errors as for [`read_frame`], never `Json`.
pub async fn read_frame_bytes<R>(reader: &mut R) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.map_err(FrameError::Io)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Request, RequestBody};

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_survives_the_round_trip() {
        let request = Request {
            id: 7,
            body: RequestBody::Version,
        };
        let frame = encode(&request).unwrap();
        let decoded: Request = read_frame(&mut frame.as_slice()).await.unwrap();
        assert_eq!(decoded, request);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let frame = (MAX_FRAME_SIZE as u32 + 1).to_be_bytes();
        let result: Result<Request, _> = read_frame(&mut frame.as_slice()).await;
        assert!(matches!(result, Err(FrameError::TooLarge(_))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn garbage_is_a_json_error_and_the_next_frame_still_reads() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{oops");
        bytes.extend(
            encode(&Request {
                id: 1,
                body: RequestBody::Version,
            })
            .unwrap(),
        );
        let mut reader = bytes.as_slice();
        let first: Result<Request, _> = read_frame(&mut reader).await;
        assert!(matches!(first, Err(FrameError::Json(_))));
        let second: Request = read_frame(&mut reader).await.unwrap();
        assert_eq!(second.id, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn raw_frames_come_back_undecoded() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{oops");
        bytes.extend_from_slice(&0u32.to_be_bytes());
        let mut reader = bytes.as_slice();
        assert_eq!(read_frame_bytes(&mut reader).await.unwrap(), b"{oops");
        assert!(read_frame_bytes(&mut reader).await.unwrap().is_empty());
        assert!(matches!(
            read_frame_bytes(&mut reader).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn eof_between_frames_is_closed_and_inside_a_frame_is_io() {
        let empty: Result<Request, _> = read_frame(&mut [].as_slice()).await;
        assert!(matches!(empty, Err(FrameError::Closed)));
        let mut truncated = 10u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{}");
        let cut: Result<Request, _> = read_frame(&mut truncated.as_slice()).await;
        assert!(matches!(cut, Err(FrameError::Io(_))));
    }
}
