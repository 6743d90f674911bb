use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A TCP listener on `addr` whose kernel queue holds up to `backlog` connections not yet
/// accepted (capped by `net.core.somaxconn`). A whole site reconnects at once after a gateway
/// restart: with the usual queue of 128, the SYNs beyond it are dropped and those sensors retry
/// only a second later. Must be called within a tokio runtime.
pub fn listen_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
