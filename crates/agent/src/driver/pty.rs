//! A pseudo-terminal for `exec -t` of a process task: the agent holds its master end, the
//! command gets its slave end as stdin, stdout, stderr and controlling terminal. Through
//! `rustix`, and tokio's pipe halves over the master end (a pty is polled like a pipe), so
//! without unsafe code.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pty::OpenptFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// What the command writes to its terminal.
pub struct PtyOutput(pipe::Receiver);

/// The keyboard and the size of the command's terminal.
pub struct PtyInput {
    keys: pipe::Sender,
    control: OwnedFd,
}

/// Opens a pty of `size`: its master end, as output and input, and its slave end for the
/// command (close-on-exec, so only the command's stdio keeps it open).
pub fn open(size: api::WindowSize) -> io::Result<(PtyOutput, PtyInput, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // Through the master, not by its name in /dev/pts: no other pty can be opened by mistake.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    rustix::termios::tcsetwinsize(&master, winsize(size))?;
    // Shared by every copy of the master: the pipe halves need it non-blocking.
    rustix::io::ioctl_fionbio(&master, true)?;
    let keys = pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?;
    let control = master.try_clone()?;
    let output = pipe::Receiver::from_owned_fd_unchecked(master)?;
    Ok((PtyOutput(output), PtyInput { keys, control }, slave))
}

fn winsize(size: api::WindowSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtyOutput {
    /// What the command wrote, as it comes; `Ok(0)` once no process holds the slave end (Linux
    /// answers EIO then).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf).await {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => Ok(0),
            read => read,
        }
    }
}

impl PtyInput {
    /// Types `bytes` into the terminal.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.keys.write_all(bytes).await
    }

    /// Gives the terminal a new size; the kernel tells its foreground processes (SIGWINCH).
    pub fn resize(&self, size: api::WindowSize) -> io::Result<()> {
        rustix::termios::tcsetwinsize(&self.control, winsize(size)).map_err(io::Error::from)
    }
}
