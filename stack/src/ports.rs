//! Free loopback ports for the components. The kernel picks a port (bind to 127.0.0.1:0) and we
//! release it for the component to bind; the gap is a small race that `Stack::start` covers by
//! retrying with fresh ports when a component reports "address already in use". Ports handed
//! out are remembered for the life of the process, so parallel stacks in one test binary never
//! get the same port twice. Must not bind anything that outlives `free_port`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use crate::error::{Result, StackError};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A 127.0.0.1 port that nothing listened on a moment ago and that this process never handed out.
pub fn free_port() -> Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // The kernel cycles through the ephemeral range, so a repeat is rare; a few tries suffice.
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(StackError::Port)?;
        let port = listener.local_addr().map_err(StackError::Port)?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(StackError::Port(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "the kernel kept returning ports this process already uses",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("port")).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn a_handed_out_port_is_bindable() {
        let port = free_port().expect("port");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port must be free");
    }
}
