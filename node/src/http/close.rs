//! Closes a WebSocket's TCP connection as soon as the socket is done. The HTTP server keeps a
//! finished upgrade open until the client closes it (up to a second), while the client waits,
//! as RFC 6455 7.1.1 asks, for the server to close first: without this every socket lingered.

use std::any::Any;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use actix_web::HttpRequest;

/// A duplicate of a connection's descriptor, kept in its extensions (dropped with them). A
/// duplicate, not the number: it can never name another socket once this one is closed.
#[derive(Clone)]
struct ConnFd(Rc<OwnedFd>);

/// `HttpServer::on_connect` hook: remembers the connection's descriptor.
pub fn remember_socket(conn: &dyn Any, ext: &mut Extensions) {
    let fd = if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
        tcp.as_fd()
    } else if let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() {
        tls.get_ref().0.as_fd()
    } else {
        return;
    };
    if let Ok(dup) = fd.try_clone_to_owned() {
        ext.insert(ConnFd(Rc::new(dup)));
    }
}

/// A handle on a request's TCP connection that ends its reading side when dropped.
pub struct CloseOnDrop(Rc<OwnedFd>);

impl CloseOnDrop {
    /// For the connection `req` came on, if the server recorded it.
    pub fn of(req: &HttpRequest) -> Option<CloseOnDrop> {
        req.conn_data::<ConnFd>().map(|c| CloseOnDrop(c.0.clone()))
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // Reads now end at once: the server writes what is queued (the close frame), sees the
        // end of the stream and closes the connection instead of waiting for the client.
        let _ = socket2::SockRef::from(&*self.0).shutdown(Shutdown::Read);
    }
}
