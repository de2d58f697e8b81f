//! Bearer-token authentication helpers.
//!
//! Admin services are wrapped in [`AdminAuth`]:
//! `PricingAdminServiceServer::with_interceptor(service, AdminAuth::new(config.admin_token.clone()))`.
//! Tenant keys use the same `authorization: Bearer <key>` header; [`bearer_token`] extracts
//! it for the gateway's own tenant lookup.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key carrying credentials.
pub const AUTHORIZATION: &str = "authorization";

/// The token of an `authorization: Bearer <token>` header, if the request has one. The
/// scheme is matched case-insensitively (RFC 7235); an empty token counts as none.
#[must_use]
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Interceptor that admits a request only if it carries the admin token.
///
/// Only a SHA-256 digest of the token is kept, and digests are compared in constant time:
/// comparing fixed-length digests means neither the token's content nor its length leaks
/// through timing.
#[derive(Clone)]
pub struct AdminAuth {
    /// `None` when no admin token is configured: the admin API is then disabled.
    expected: Option<[u8; 32]>,
}

impl AdminAuth {
    /// An interceptor for `token`. `None` (or an empty token, which would make
    /// `Bearer ` a valid credential) disables the admin API: every call is refused.
    #[must_use]
    pub fn new(token: Option<String>) -> Self {
        Self {
            expected: token.filter(|t| !t.is_empty()).map(|t| digest(&t)),
        }
    }

    /// Whether an admin token is configured.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.expected.is_some()
    }

    /// The check itself, usable outside an interceptor.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Err(Status::permission_denied(
                "admin API disabled: set admin_token",
            ));
        };
        let Some(presented) = bearer_token(metadata) else {
            return Err(Status::unauthenticated(
                "missing authorization: Bearer <admin token>",
            ));
        };
        if bool::from(digest(presented).ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid admin token"))
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

impl fmt::Debug for AdminAuth {
    // Never print the digest: it would let a log reader brute-force a weak token offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(value) = authorization {
            metadata.insert(AUTHORIZATION, value.parse().unwrap());
        }
        metadata
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(bearer_token(&metadata(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_token(&metadata(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(&metadata(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&metadata(Some("Bearer "))), None);
        assert_eq!(bearer_token(&metadata(Some("Bearer"))), None);
        assert_eq!(bearer_token(&metadata(None)), None);
    }

    #[test]
    fn admin_auth_outcomes() {
        let auth = AdminAuth::new(Some("admin-token".to_owned()));
        let missing = auth.check(&metadata(None)).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert_eq!(
            missing.message(),
            "missing authorization: Bearer <admin token>"
        );
        // A non-bearer credential is as good as none.
        let basic = auth
            .check(&metadata(Some("Basic admin-token")))
            .unwrap_err();
        assert_eq!(
            basic.message(),
            "missing authorization: Bearer <admin token>"
        );
        let wrong = auth
            .check(&metadata(Some("Bearer admin-tokeN")))
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid admin token");
        let prefix = auth.check(&metadata(Some("Bearer admin"))).unwrap_err();
        assert_eq!(prefix.message(), "invalid admin token");
        auth.check(&metadata(Some("Bearer admin-token"))).unwrap();

        for disabled in [AdminAuth::new(None), AdminAuth::new(Some(String::new()))] {
            assert!(!disabled.is_enabled());
            let denied = disabled.check(&metadata(Some("Bearer "))).unwrap_err();
            assert_eq!(denied.code(), Code::PermissionDenied);
            assert_eq!(denied.message(), "admin API disabled: set admin_token");
        }
    }

    #[test]
    fn interceptor_passes_the_request_through() {
        let mut auth = AdminAuth::new(Some("t".to_owned()));
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(auth.call(request).is_ok());
        assert!(auth.call(Request::new(())).is_err());
    }

    #[test]
    fn debug_does_not_reveal_the_token() {
        let shown = format!("{:?}", AdminAuth::new(Some("hunter2".to_owned())));
        assert_eq!(shown, "AdminAuth { enabled: true }");
    }
}
