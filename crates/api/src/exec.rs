//! `exec`: a command run beside a task, its output streamed back as frames. The agent writes
//! them, the server passes them on untouched, the CLI reads them: one byte for the stream
//! (`1` stdout, `2` stderr, `3` the end), four for the length (big-endian), then the bytes. The
//! end's payload is the [`ExecEnd`] as JSON, always the last frame.
//!
//! The request goes the same way, as frames of the same shape ([`ExecInput`]), so that one
//! HTTP/1.1 request per hop carries a whole interactive session both ways: first the
//! [`ExecRequest`] as JSON (`16`), then, for as long as the session lasts, the caller's stdin
//! (`17`), its end (`18`) and each new window size (`19`, a [`WindowSize`] as JSON). A request
//! body of `application/json` is a lone [`ExecRequest`], with no stdin (older clients).

use serde::{Deserialize, Serialize};

/// What to run beside a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecRequest {
    /// The program and its arguments, run without a shell.
    pub argv: Vec<String>,
    /// The caller's stdin follows as frames and is the command's stdin; without it the
    /// command reads nothing (end of file at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interactive: bool,
    /// A terminal for the command, of this size: a pty for a process task, the Engine's tty
    /// for a container. Its stdout and stderr are then one stream (stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnd {
    /// The command's exit status (128 + the signal for a signal); `None` when it could not run.
    pub code: Option<i32>,
    /// Why it could not run (or was cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A frame of an exec's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    End(ExecEnd),
}

/// A frame of an exec's request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    /// What to run: always the first frame, and only there.
    Start(ExecRequest),
    Stdin(Vec<u8>),
    /// The caller's stdin ended: the command's gets its end of file.
    StdinClosed,
    /// The caller's terminal changed size.
    Resize(WindowSize),
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const END: u8 = 3;
const START: u8 = 16;
const STDIN: u8 = 17;
const STDIN_CLOSED: u8 = 18;
const RESIZE: u8 = 19;
/// The most a frame carries: a reader never buffers more for one.
pub const MAX_FRAME: usize = 1 << 20;

/// The content type of a request body of [`ExecInput`] frames (and of the answer's frames).
pub const EXEC_FRAMES: &str = "application/octet-stream";

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl ExecFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ExecFrame::Stdout(b) => frame(STDOUT, b),
            ExecFrame::Stderr(b) => frame(STDERR, b),
            ExecFrame::End(end) => frame(END, &serde_json::to_vec(end).unwrap_or_default()),
        }
    }
}

impl ExecInput {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ExecInput::Start(req) => frame(START, &serde_json::to_vec(req).unwrap_or_default()),
            ExecInput::Stdin(b) => frame(STDIN, b),
            ExecInput::StdinClosed => frame(STDIN_CLOSED, &[]),
            ExecInput::Resize(size) => frame(RESIZE, &serde_json::to_vec(size).unwrap_or_default()),
        }
    }
}

/// Frames out of a byte stream cut anywhere: [`ExecFrame`]s by default, [`ExecInput`]s as
/// `FrameDecoder<ExecInput>`.
#[derive(Debug)]
pub struct FrameDecoder<F> {
    buffer: Vec<u8>,
    frames: std::marker::PhantomData<F>,
}

/// The decoder of an exec's output.
pub type ExecDecoder = FrameDecoder<ExecFrame>;
/// The decoder of an exec's request body.
pub type InputDecoder = FrameDecoder<ExecInput>;

impl<F> Default for FrameDecoder<F> {
    fn default() -> Self {
        FrameDecoder {
            buffer: Vec::new(),
            frames: std::marker::PhantomData,
        }
    }
}

/// A kind of frame: what its kind byte and payload mean.
pub trait Frame: Sized {
    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, String>;
}

impl Frame for ExecFrame {
    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, String> {
        Ok(match kind {
            STDOUT => ExecFrame::Stdout(payload),
            STDERR => ExecFrame::Stderr(payload),
            END => ExecFrame::End(
                serde_json::from_slice(&payload).map_err(|e| format!("a bad end frame: {e}"))?,
            ),
            other => return Err(format!("a frame of unknown kind {other}")),
        })
    }
}

impl Frame for ExecInput {
    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, String> {
        Ok(match kind {
            START => ExecInput::Start(
                serde_json::from_slice(&payload)
                    .map_err(|e| format!("a bad start frame (an ExecRequest as JSON): {e}"))?,
            ),
            STDIN => ExecInput::Stdin(payload),
            STDIN_CLOSED => ExecInput::StdinClosed,
            RESIZE => ExecInput::Resize(
                serde_json::from_slice(&payload)
                    .map_err(|e| format!("a bad resize frame (rows and cols as JSON): {e}"))?,
            ),
            other => return Err(format!("a frame of unknown kind {other}")),
        })
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// Takes `bytes` in and gives every frame now complete; an error for bytes that are not
    /// frames.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<F>, String> {
        self.extend(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// The first complete frame of what was pushed, if there is one yet; what follows it stays
    /// buffered (see [`FrameDecoder::take_rest`]).
    pub fn next_frame(&mut self) -> Result<Option<F>, String> {
        let Some(head) = self.buffer.get(..5) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "a frame of {len} bytes, over the {MAX_FRAME} allowed"
            ));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        let kind = head[0];
        let payload = self.buffer[5..5 + len].to_vec();
        self.buffer.drain(..5 + len);
        F::decode(kind, payload).map(Some)
    }

    /// Takes `bytes` in without decoding them yet (see [`FrameDecoder::next_frame`]).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The bytes pushed but not yet decoded, to pass on untouched.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }

    /// Whether bytes of an unfinished frame are left.
    pub fn is_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_anywhere_come_out_whole_and_in_order() {
        let frames = vec![
            ExecFrame::Stdout(b"hello\n".to_vec()),
            ExecFrame::Stderr(Vec::new()),
            ExecFrame::End(ExecEnd {
                code: Some(7),
                error: None,
            }),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(ExecFrame::encode).collect();
        for cut in 0..bytes.len() {
            let mut decoder = ExecDecoder::default();
            let mut got = decoder.push(&bytes[..cut]).unwrap();
            got.extend(decoder.push(&bytes[cut..]).unwrap());
            assert_eq!(got, frames, "cut at {cut}");
            assert!(!decoder.is_partial());
        }
    }

    #[test]
    fn input_frames_cut_anywhere_come_out_whole_and_in_order() {
        let frames = vec![
            ExecInput::Start(ExecRequest {
                argv: vec!["sh".into()],
                interactive: true,
                tty: Some(WindowSize { rows: 24, cols: 80 }),
            }),
            ExecInput::Stdin(b"exit 7\r".to_vec()),
            ExecInput::Resize(WindowSize {
                rows: 50,
                cols: 132,
            }),
            ExecInput::StdinClosed,
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(ExecInput::encode).collect();
        for cut in 0..bytes.len() {
            let mut decoder = InputDecoder::default();
            let mut got = decoder.push(&bytes[..cut]).unwrap();
            got.extend(decoder.push(&bytes[cut..]).unwrap());
            assert_eq!(got, frames, "cut at {cut}");
        }
    }

    #[test]
    fn a_request_of_an_older_client_still_reads() {
        let req: ExecRequest = serde_json::from_str(r#"{"argv":["ls"]}"#).unwrap();
        assert_eq!((req.interactive, req.tty), (false, None));
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"argv":["ls"]}"#);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut decoder = ExecDecoder::default();
        assert!(decoder.push(&[9, 0, 0, 0, 0]).is_err());
        let mut decoder = ExecDecoder::default();
        assert!(decoder.push(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
