//! `outpost exec [-i] [-t] TASK -- COMMAND...`: a command beside a task, its output streamed
//! back and its exit status this process's. With `-i` this process's stdin is the command's;
//! with `-t` the command gets a terminal the size of this one (resized with it), and this
//! terminal is put in raw mode for the session, so every key (Ctrl-C too) reaches the command;
//! it is always restored, however the session ends.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::Connection;
use crate::commands::connect;

/// What `outpost exec` was asked.
pub struct ExecArgs<'a> {
    pub task: &'a str,
    pub argv: &'a [String],
    pub interactive: bool,
    pub tty: bool,
}

/// The size assumed for a terminal that cannot say its own.
const DEFAULT_SIZE: api::WindowSize = api::WindowSize { rows: 24, cols: 80 };

/// Runs the command, and ends as it did: its exit status is this process's.
pub async fn exec(conn: &Connection, args: ExecArgs<'_>) -> Result<()> {
    let ExecArgs {
        task,
        argv,
        interactive,
        tty,
    } = args;
    let stdin = std::io::stdin();
    if tty && !stdin.is_terminal() {
        bail!(
            "the input device is not a TTY: `-t` gives the command a terminal and needs one on \
             this side; drop `-t` (keep `-i`) to pipe input into the command"
        );
    }
    // Listened for before the first size is read, so no change in between is missed.
    let changes = match tty {
        true => Some(signal(SignalKind::window_change())?),
        false => None,
    };
    let req = api::ExecRequest {
        argv: argv.to_vec(),
        interactive,
        tty: tty.then(|| window_size(&stdin)),
    };
    let (input, frames) = mpsc::channel(16);
    let client = connect(conn).await?;
    let follows = (interactive || tty).then(|| futures_util::stream::unfold(frames, next));
    let answer = client.exec(task, &req, follows).await?;
    // Raw only once the session is there: an error before it leaves the terminal as it was.
    let _raw = match tty && interactive {
        true => Some(RawMode::enter()?),
        false => None,
    };
    let resizes = changes.map(|changes| tokio::spawn(send_resizes(changes, input.clone())));
    if interactive {
        read_stdin(input);
    } else {
        drop(input);
    }
    let ended = relay(task, answer).await;
    if let Some(resizes) = resizes {
        resizes.abort();
    }
    ended
}

/// The next frame to send, for `stream::unfold`: the stream ends once every sender is gone.
async fn next(
    mut frames: mpsc::Receiver<api::ExecInput>,
) -> Option<(api::ExecInput, mpsc::Receiver<api::ExecInput>)> {
    let frame = frames.recv().await?;
    Some((frame, frames))
}

/// Writes the command's output as it comes, until how it ended; a termination signal to this
/// process ends the session (and with it the command) as an error, so the terminal is restored.
async fn relay(
    task: &str,
    answer: impl futures_util::Stream<Item = Result<Vec<u8>, client::ClientError>>,
) -> Result<()> {
    let mut answer = Box::pin(answer);
    let mut decoder = api::ExecDecoder::default();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let (mut term, mut hangup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
    loop {
        let chunk = tokio::select! {
            chunk = answer.next() => chunk,
            _ = term.recv() => bail!("ended by SIGTERM; the command beside {task} is stopped"),
            _ = hangup.recv() => bail!("ended by SIGHUP; the command beside {task} is stopped"),
        };
        let Some(chunk) = chunk else { break };
        let frames = (decoder.push(&chunk?))
            .map_err(|e| anyhow::anyhow!("the output of {task}'s command came garbled: {e}"))?;
        for frame in frames {
            match frame {
                api::ExecFrame::Stdout(bytes) => {
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                api::ExecFrame::Stderr(bytes) => err.write_all(&bytes)?,
                api::ExecFrame::End(end) => return exec_status(task, end),
            }
        }
    }
    bail!("the connection to {task}'s node ended before its command did; it may still run there")
}

/// Success for a command that exited 0; its status for any other.
fn exec_status(task: &str, end: api::ExecEnd) -> Result<()> {
    match (end.code, end.error) {
        (_, Some(why)) => bail!("cannot run it beside {task}: {why}"),
        (Some(0), None) => Ok(()),
        (Some(code), None) => Err(crate::rollouts::Ended {
            code: u8::try_from(code).unwrap_or(1).max(1),
            message: String::new(),
        }
        .into()),
        (None, None) => bail!("the command ended with no exit status (its node could not tell it)"),
    }
}

/// The size of the terminal on `fd`, or [`DEFAULT_SIZE`] where it says none (0 × 0).
fn window_size(fd: impl std::os::fd::AsFd) -> api::WindowSize {
    match rustix::termios::tcgetwinsize(fd) {
        Ok(w) if w.ws_row > 0 && w.ws_col > 0 => api::WindowSize {
            rows: w.ws_row,
            cols: w.ws_col,
        },
        _ => DEFAULT_SIZE,
    }
}

/// Sends this terminal's size each time it changes (SIGWINCH).
async fn send_resizes(mut changes: Signal, input: mpsc::Sender<api::ExecInput>) {
    while changes.recv().await.is_some() {
        let size = window_size(std::io::stdin());
        if input.send(api::ExecInput::Resize(size)).await.is_err() {
            return;
        }
    }
}

/// Reads this process's stdin on a thread of its own (a blocking read cannot be cancelled,
/// and the process must be free to exit while it waits), sending it on until its end.
fn read_stdin(input: mpsc::Sender<api::ExecInput>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let frame = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => api::ExecInput::StdinClosed,
                Ok(n) => api::ExecInput::Stdin(buf[..n].to_vec()),
            };
            let closed = frame == api::ExecInput::StdinClosed;
            if input.blocking_send(frame).is_err() || closed {
                return;
            }
        }
    });
}

/// This terminal in raw mode (no echo, no line editing, no signals from keys) until dropped,
/// which restores it as it was: on success, on an error, on a panic's unwinding.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's modes on stdin: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("cannot put the terminal on stdin in raw mode: {e}"))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
