//! Free TCP ports on the loopback interface.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;

/// Ports this process has already handed out. The kernel may give the same
/// ephemeral port to two `bind(0)` calls once the first listener is dropped,
/// and two fixtures started back to back (or a cluster node's client and bus
/// ports) would then collide. Remembering them makes ports unique within a
/// process; collisions with other processes are handled by the callers
/// retrying when the server fails to bind.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// How many `bind(0)` attempts before giving up on finding a port this
/// process has not handed out yet; only reachable if the ephemeral range is
/// nearly exhausted.
const MAX_ATTEMPTS: usize = 64;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this
/// process has not returned before.
///
/// The port is found by binding port 0 and dropping the listener, so another
/// process can still grab it before the caller binds it: servers started on
/// it must be ready to retry with a new port (the fixtures in this crate do).
///
/// # Errors
///
/// When the loopback interface cannot be bound at all, or every attempt
/// returned a port already handed out.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..MAX_ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the port of a listener on 127.0.0.1:0")?
            .port();
        drop(listener);

        // A poisoned lock only means another test panicked while holding it;
        // the set itself is still valid.
        let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 after {MAX_ATTEMPTS} attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_within_the_process() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| p != 0));
    }
}
