//! The one error of the application layer: a stable machine-readable [`ErrorCode`] (front
//! ends branch on it, never on the message), the HTTP status it maps to, and a message that
//! names the bad value and what was expected.

use serde::Serialize;
use vipvisor_ipam::IpamError;
use vipvisor_model::config::{ConfigError, ConfigFileError};
use vipvisor_model::InvalidValue;
use vipvisor_store::StoreError;

/// What went wrong, as front ends branch on it. The strings are stable.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A value failed validation (address, name, label, file syntax).
    InvalidValue,
    /// A configuration conflicts with itself (overlapping pools or reservations).
    ConfigConflict,
    UnknownPool,
    PoolExists,
    UnknownReservation,
    ReservationExists,
    /// The change would leave allocations without a valid address; `force` releases them.
    WouldStrand,
    PoolExhausted,
    NoEligiblePool,
    AddressNotInPool,
    PoolNotEligible,
    AddressReserved,
    AddressInUse,
    PortInUse,
    AddressQuarantined,
    UidMismatch,
    /// A file could not be read.
    Unreadable,
    UnknownToken,
    TokenExists,
    /// No token, or one that is not (or no longer) known.
    Unauthenticated,
    /// The token's role may not do this (a viewer writing).
    Forbidden,
    /// No such resource or route.
    NotFound,
    /// The store did not answer in time; retrying later may work.
    StoreUnavailable,
    /// The identity provider (Kubernetes TokenReview) did not answer; retrying may work.
    AuthUnavailable,
    /// Anything else: the store holds something it should not, or could not be opened.
    Internal,
}

impl ErrorCode {
    /// The HTTP status a front end answers with.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidValue | ConfigConflict | Unreadable => 400,
            Unauthenticated => 401,
            Forbidden => 403,
            UnknownPool | UnknownReservation | UnknownToken | NotFound => 404,
            PoolExists | ReservationExists | TokenExists | WouldStrand | AddressInUse | PortInUse
            | AddressQuarantined | UidMismatch => 409,
            PoolExhausted | NoEligiblePool | AddressNotInPool | PoolNotEligible | AddressReserved => 422,
            StoreUnavailable | AuthUnavailable => 503,
            Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidValue => "invalid_value",
            ConfigConflict => "config_conflict",
            UnknownPool => "unknown_pool",
            PoolExists => "pool_exists",
            UnknownReservation => "unknown_reservation",
            ReservationExists => "reservation_exists",
            WouldStrand => "would_strand",
            PoolExhausted => "pool_exhausted",
            NoEligiblePool => "no_eligible_pool",
            AddressNotInPool => "address_not_in_pool",
            PoolNotEligible => "pool_not_eligible",
            AddressReserved => "address_reserved",
            AddressInUse => "address_in_use",
            PortInUse => "port_in_use",
            AddressQuarantined => "address_quarantined",
            UidMismatch => "uid_mismatch",
            Unreadable => "unreadable",
            UnknownToken => "unknown_token",
            TokenExists => "token_exists",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            NotFound => "not_found",
            StoreUnavailable => "store_unavailable",
            AuthUnavailable => "auth_unavailable",
            Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{code, message}`, as every front end shows it.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field the error is about (`name`, `addresses`, `namespaces`, …), when
    /// it is about one: forms show the message on that field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None }
    }
    /// The same error, about request field `field`.
    pub fn on(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

/// The pool field an invalid value belongs to.
fn field_of(what: &str) -> Option<&'static str> {
    Some(match what {
        "pool name" | "pool" => "name",
        "address block" | "family" => "addresses",
        "namespace" => "namespaces",
        "label" | "labels" => "selectors",
        "requested addresses" => "addresses",
        "service" => "service",
        _ => return None,
    })
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        let field = field_of(e.what).map(str::to_owned);
        ApiError { field, ..ApiError::new(ErrorCode::InvalidValue, e.to_string()) }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        let (code, field) = match &e {
            ConfigError::Invalid(v) => return v.clone().into(),
            ConfigError::PoolOverlap { .. } => (ErrorCode::ConfigConflict, "addresses"),
            ConfigError::DuplicatePool(_) => (ErrorCode::ConfigConflict, "name"),
            ConfigError::ReservationOverlap { .. } => (ErrorCode::ConfigConflict, "block"),
        };
        ApiError::new(code, e.to_string()).on(field)
    }
}

impl From<ConfigFileError> for ApiError {
    fn from(e: ConfigFileError) -> Self {
        let code = match &e {
            ConfigFileError::Yaml { .. } => ErrorCode::InvalidValue,
            ConfigFileError::Config { source: ConfigError::Invalid(_), .. } => ErrorCode::InvalidValue,
            ConfigFileError::Config { .. } => ErrorCode::ConfigConflict,
            ConfigFileError::TooDeep { .. } => ErrorCode::InvalidValue,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<IpamError> for ApiError {
    fn from(e: IpamError) -> Self {
        use ErrorCode::*;
        let code = match &e {
            IpamError::Invalid(_) => InvalidValue,
            IpamError::UnknownPool(_) => UnknownPool,
            IpamError::NoEligiblePool { .. } => NoEligiblePool,
            IpamError::Exhausted { .. } => PoolExhausted,
            IpamError::NotInPool { .. } => AddressNotInPool,
            IpamError::PoolNotEligible { .. } | IpamError::SplitPools { .. } => PoolNotEligible,
            IpamError::Reserved { .. } | IpamError::Buggy { .. } | IpamError::SubnetRouterAnycast { .. } => {
                AddressReserved
            }
            IpamError::InUse { .. } => AddressInUse,
            IpamError::PortClash { .. } => PortInUse,
            IpamError::Quarantined { .. } => AddressQuarantined,
            IpamError::UidMismatch { .. } => UidMismatch,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use ErrorCode::*;
        let code = match e {
            StoreError::Ipam(e) => return e.into(),
            StoreError::Config(e) => return e.into(),
            StoreError::Invalid(e) => return e.into(),
            StoreError::PoolExists(_) => return ApiError::new(PoolExists, e.to_string()).on("name"),
            StoreError::UnknownPool(_) => UnknownPool,
            StoreError::ReservationExists(_) => ReservationExists,
            StoreError::UnknownReservation(_) => UnknownReservation,
            StoreError::InUse { .. } => WouldStrand,
            StoreError::BadUrl(_) => InvalidValue,
            StoreError::Unavailable(_) => StoreUnavailable,
            StoreError::CreateDir { .. }
            | StoreError::Open { .. }
            | StoreError::Foreign { .. }
            | StoreError::Corrupt(_)
            | StoreError::Db(_)
            | StoreError::Migrate(_) => Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_strings_and_statuses() {
        let cases = [
            (ErrorCode::InvalidValue, "invalid_value", 400),
            (ErrorCode::UnknownPool, "unknown_pool", 404),
            (ErrorCode::WouldStrand, "would_strand", 409),
            (ErrorCode::PoolExhausted, "pool_exhausted", 422),
            (ErrorCode::StoreUnavailable, "store_unavailable", 503),
            (ErrorCode::AuthUnavailable, "auth_unavailable", 503),
        ];
        for (code, s, status) in cases {
            assert_eq!(code.as_str(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), s, "serde and as_str agree on {s}");
            assert_eq!(code.http_status(), status, "{s} maps to {status}");
        }
        let e = ApiError::new(ErrorCode::UnknownPool, "unknown pool \"x\"");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"code": "unknown_pool", "message": "unknown pool \"x\""})
        );
    }
}
