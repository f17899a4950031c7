//! The systemd notify protocol (sd_notify(3)), without libsystemd: datagrams to
//! `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).

use std::time::Duration;

/// Send `state` (e.g. `READY=1`); a no-op outside systemd.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = socket.to_string_lossy().to_string();
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let sent = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &socket)
    };
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state:?} to {socket}: {e}");
    }
}

/// Half the watchdog interval systemd asks for, if it asks (`WATCHDOG_USEC`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
