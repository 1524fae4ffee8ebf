//! `exec`: a command run beside a task, its output streamed back as frames. The agent writes
//! them, the server passes them on untouched, the CLI reads them: one byte for the stream
//! (`1` stdout, `2` stderr, `3` the end), four for the length (big-endian), then the bytes. The
//! end's payload is the [`ExecEnd`] as JSON, always the last frame.

use serde::{Deserialize, Serialize};

/// What to run beside a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecRequest {
    /// The program and its arguments, run without a shell.
    pub argv: Vec<String>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    End(ExecEnd),
}

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const END: u8 = 3;
/// The most a frame carries: a reader never buffers more for one.
pub const MAX_FRAME: usize = 1 << 20;

impl ExecFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            ExecFrame::Stdout(b) => (STDOUT, b.clone()),
            ExecFrame::Stderr(b) => (STDERR, b.clone()),
            ExecFrame::End(end) => (END, serde_json::to_vec(end).unwrap_or_default()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// Frames out of a byte stream cut anywhere.
#[derive(Debug, Default)]
pub struct ExecDecoder {
    buffer: Vec<u8>,
}

impl ExecDecoder {
    /// Takes `bytes` in and gives every frame now complete; an error for bytes that are not
    /// frames.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<ExecFrame>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            let Some(head) = self.buffer.get(..5) else {
                return Ok(frames);
            };
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_FRAME {
                return Err(format!(
                    "a frame of {len} bytes, over the {MAX_FRAME} allowed"
                ));
            }
            if self.buffer.len() < 5 + len {
                return Ok(frames);
            }
            let kind = head[0];
            let payload = self.buffer[5..5 + len].to_vec();
            self.buffer.drain(..5 + len);
            frames.push(match kind {
                STDOUT => ExecFrame::Stdout(payload),
                STDERR => ExecFrame::Stderr(payload),
                END => ExecFrame::End(
                    serde_json::from_slice(&payload)
                        .map_err(|e| format!("a bad end frame: {e}"))?,
                ),
                other => return Err(format!("a frame of unknown kind {other}")),
            });
        }
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
    fn garbage_is_an_error() {
        let mut decoder = ExecDecoder::default();
        assert!(decoder.push(&[9, 0, 0, 0, 0]).is_err());
        let mut decoder = ExecDecoder::default();
        assert!(decoder.push(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
