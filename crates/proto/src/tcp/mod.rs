//! gRPC over TCP between nodes, with mutual TLS: watchdog peers
//! (`watchdog.listen`) and the remote admin API (`admin.listen`).
//!
//! Server side: [`incoming`] accepts on a bound listener and, with TLS,
//! does each handshake (bounded in time and in number at once) before
//! tonic sees the connection; a client refused by TLS (no certificate, one
//! the CA did not sign, plain text) is logged with its address and why.
//! Client side: [`dial`] a lazily connecting channel, [`dial_now`] one that
//! reports an unreachable server at once. [`gateway`] is the admin API: the
//! daemons' unix-socket services, reached over one TCP port.

/// Implements tokio's `AsyncRead` or `AsyncWrite` for `$stream` by passing
/// every call on to its field `$inner`; `AsyncWrite + vectored` passes
/// vectored writes on too (otherwise they are tokio's default: one buffer
/// at a time).
macro_rules! pass_on {
    (AsyncRead for $stream:ty => $inner:tt) => {
        impl ::tokio::io::AsyncRead for $stream {
            pass_on!(@poll $inner, AsyncRead::poll_read(buf: &mut ::tokio::io::ReadBuf<'_>) -> ());
        }
    };
    (AsyncWrite for $stream:ty => $inner:tt) => {
        impl ::tokio::io::AsyncWrite for $stream {
            pass_on!(@write $inner);
        }
    };
    (AsyncWrite + vectored for $stream:ty => $inner:tt) => {
        impl ::tokio::io::AsyncWrite for $stream {
            pass_on!(@write $inner);
            pass_on!(
                @poll $inner,
                AsyncWrite::poll_write_vectored(bufs: &[::std::io::IoSlice<'_>]) -> usize
            );

            fn is_write_vectored(&self) -> bool {
                ::tokio::io::AsyncWrite::is_write_vectored(&self.$inner)
            }
        }
    };
    (@write $inner:tt) => {
        pass_on!(@poll $inner, AsyncWrite::poll_write(buf: &[u8]) -> usize);
        pass_on!(@poll $inner, AsyncWrite::poll_flush() -> ());
        pass_on!(@poll $inner, AsyncWrite::poll_shutdown() -> ());
    };
    // One `poll_*` method: `$inner`'s, with the same arguments.
    (@poll $inner:tt, $trait:ident::$method:ident($($arg:ident: $type:ty),*) -> $out:ty) => {
        fn $method(
            self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            $($arg: $type),*
        ) -> ::std::task::Poll<::std::io::Result<$out>> {
            let inner = ::std::pin::Pin::new(&mut self.get_mut().$inner);
            ::tokio::io::$trait::$method(inner, cx $(, $arg)*)
        }
    };
}

mod conn;
mod dial;
pub mod gateway;

pub use conn::{Conn, Peer, incoming};
pub use dial::{Confirmed, DialError, Dialled, dial, dial_now, host_of};
