//! The shared bearer token of fleet's gRPC services: [`BearerToken`] (the
//! secret, which never prints), [`AttachToken`] (the client interceptor that
//! sends `authorization: Bearer <token>`) and [`RequireToken`] (the server
//! interceptor that refuses calls without it, UNAUTHENTICATED). Both take
//! `Option<BearerToken>`: `None` is auth off, today's behaviour.
//!
//! Not here: where the token comes from (the `fleet` config reads it from a
//! file or the environment), which services are guarded (each server wraps
//! its own; `grpc.health.v1` stays open) and TLS ([`crate::tls`]), without
//! which the token crosses the network in clear text.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The metadata key the token travels under (HTTP's `Authorization` header).
pub const AUTHORIZATION: &str = "authorization";

/// Why a string cannot be a token. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token may hold only printable ASCII characters without spaces (it travels in an HTTP header)")]
    Characters,
}

/// A bearer token. Its `Debug` shows no part of it, and comparing two
/// takes the same time wherever they differ.
#[derive(Clone)]
pub struct BearerToken {
    /// The token alone, what a received header is compared with.
    token: Arc<[u8]>,
    /// `Bearer <token>`, built once and marked sensitive (HPACK never
    /// indexes it), for every request a client sends.
    header: MetadataValue<Ascii>,
}

impl BearerToken {
    /// A token from its text, which must be non-empty printable ASCII
    /// without spaces (what an HTTP header value and RFC 6750 allow).
    pub fn new(token: &str) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Characters);
        }
        let mut header: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| TokenError::Characters)?;
        header.set_sensitive(true);
        Ok(Self {
            token: token.as_bytes().into(),
            header,
        })
    }

    /// Whether `value`, an `authorization` header, carries this token:
    /// scheme `Bearer` (any case), one space, the token compared in
    /// constant time (only a length difference returns early).
    pub fn matches_header(&self, value: &[u8]) -> bool {
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, token) = (&value[..space], &value[space + 1..]);
        scheme.eq_ignore_ascii_case(b"bearer") && bool::from(token.ct_eq(&self.token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl PartialEq for BearerToken {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.token.ct_eq(&other.token))
    }
}

impl Eq for BearerToken {}

/// Client interceptor: adds `authorization: Bearer <token>` to every call
/// when it holds a token, and passes calls through unchanged when not.
#[derive(Debug, Clone, Default)]
pub struct AttachToken(Option<BearerToken>);

impl AttachToken {
    pub fn new(token: Option<BearerToken>) -> Self {
        Self(token)
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, token.header.clone());
        }
        Ok(request)
    }
}

/// A client channel that sends the token (if any) with every call: what
/// fleet's generated clients are built on, e.g.
/// `ReplayClient::with_interceptor(channel, AttachToken::new(token))`.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// Server interceptor: with a token, refuses every call that does not carry
/// it with UNAUTHENTICATED (the message says what was wrong, never what
/// was sent or expected); without one, lets every call through.
#[derive(Debug, Clone, Default)]
pub struct RequireToken(Option<BearerToken>);

impl RequireToken {
    pub fn new(token: Option<BearerToken>) -> Self {
        Self(token)
    }

    /// Whether calls need a token.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The check on one call's metadata; `Err` is the status to answer with.
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.0 else {
            return Ok(());
        };
        match metadata.get(AUTHORIZATION) {
            None => Err(Status::unauthenticated(
                "this server requires a bearer token (metadata `authorization: Bearer <token>`); none was sent",
            )),
            Some(value) if token.matches_header(value.as_encoded_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the bearer token sent is not the one this server accepts")),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(request.metadata()) {
            Ok(()) => Ok(request),
            Err(status) => {
                tracing::warn!(peer = ?request.remote_addr(), reason = status.message(), "refused a gRPC call");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> BearerToken {
        BearerToken::new(text).unwrap()
    }

    #[test]
    fn tokens_are_printable_ascii_without_spaces_and_never_print() {
        assert_eq!(BearerToken::new("").unwrap_err(), TokenError::Empty);
        assert_eq!(BearerToken::new("a b").unwrap_err(), TokenError::Characters);
        assert_eq!(BearerToken::new("tök").unwrap_err(), TokenError::Characters);
        assert_eq!(BearerToken::new("a\nb").unwrap_err(), TokenError::Characters);
        let secret = token("s3cr3t-Token_./+=~");
        assert!(!format!("{secret:?}").contains("s3cr3t"), "{secret:?}");
        assert!(!format!("{:?}", AttachToken::new(Some(secret.clone()))).contains("s3cr3t"));
        assert!(!format!("{:?}", RequireToken::new(Some(secret))).contains("s3cr3t"));
    }

    #[test]
    fn a_header_matches_only_with_the_scheme_and_the_whole_token() {
        let t = token("abc123");
        assert!(t.matches_header(b"Bearer abc123"));
        assert!(t.matches_header(b"bearer abc123"));
        for wrong in [
            &b"Bearer abc12"[..],
            b"Bearer abc1234",
            b"Bearer abc124",
            b"Bearer  abc123",
            b"Basic abc123",
            b"abc123",
            b"Bearer",
            b"",
        ] {
            assert!(!t.matches_header(wrong), "{}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn the_client_sends_what_the_server_requires() {
        let secret = token("right");
        let mut attach = AttachToken::new(Some(secret.clone()));
        let mut require = RequireToken::new(Some(secret));
        let sent = attach.call(Request::new(())).unwrap();
        assert!(sent.metadata().get(AUTHORIZATION).unwrap().is_sensitive());
        assert!(require.call(sent).is_ok());

        let status = require.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("none was sent"), "{}", status.message());

        let wrong = AttachToken::new(Some(token("wrong"))).call(Request::new(())).unwrap();
        let status = require.call(wrong).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(!status.message().contains("wrong") && !status.message().contains("right"));
    }

    #[test]
    fn without_a_token_nothing_is_sent_or_required() {
        let plain = AttachToken::default().call(Request::new(())).unwrap();
        assert!(plain.metadata().get(AUTHORIZATION).is_none());
        assert!(RequireToken::default().call(plain).is_ok());
        // A client with a token may talk to a server without one.
        let with = AttachToken::new(Some(token("x"))).call(Request::new(())).unwrap();
        assert!(RequireToken::default().call(with).is_ok());
    }
}
