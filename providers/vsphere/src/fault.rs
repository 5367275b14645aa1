//! SOAP faults as typed errors. The fault's type is the `xsi:type` of the element in
//! `detail` (vim25 writes `<XxxFault xsi:type="Xxx">`), else that element's name without
//! `Fault`; `faultstring` is the server's message.

use crate::xml::Node;

/// A fault vCenter (or vcsim) answered with, as far as vipvisor tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapFault {
    /// Wrong user name or password (the caller names the URL and user, never the password).
    #[error("the server refused the login ({message})")]
    InvalidLogin { message: String },
    /// The session expired or was never made: log in again.
    #[error("not authenticated ({message})")]
    NotAuthenticated { message: String },
    /// The user lacks a privilege on an object.
    #[error("permission {privilege} is missing on {object} ({message})")]
    NoPermission { privilege: String, object: String, message: String },
    /// The object is gone (deleted, or a stale reference).
    #[error("{object} does not exist ({message})")]
    ManagedObjectNotFound { object: String, message: String },
    /// Another change came first (a stale `configVersion`, or a concurrent task).
    #[error("a concurrent change came first ({kind}: {message})")]
    Concurrent { kind: String, message: String },
    /// Any other fault, by its type.
    #[error("{kind}: {message}")]
    Other { kind: String, message: String },
}

/// `type:value` of a managed object reference element (`HostSystem:host-21`).
fn moref(n: Option<&Node>) -> String {
    n.map_or_else(|| "(unknown object)".into(), |n| format!("{}:{}", n.attr("type").unwrap_or("?"), n.text))
}

/// The fault of a SOAP body's first element, if it is a `Fault`.
pub fn of(body: &Node) -> Option<SoapFault> {
    if body.name != "Fault" {
        return None;
    }
    let message = body.child("faultstring").map(|n| n.text.trim().to_owned()).unwrap_or_default();
    let detail = body.child("detail").and_then(|d| d.children.first());
    let kind = detail
        .and_then(|d| d.xsi_type().map(str::to_owned).or_else(|| d.name.strip_suffix("Fault").map(str::to_owned)))
        .unwrap_or_else(|| "ServerFault".into());
    Some(match kind.as_str() {
        "InvalidLogin" => SoapFault::InvalidLogin { message },
        "NotAuthenticated" => SoapFault::NotAuthenticated { message },
        "NoPermission" => SoapFault::NoPermission {
            privilege: detail
                .and_then(|d| d.child("privilegeId"))
                .map_or_else(|| "(not named)".into(), |p| p.text.clone()),
            object: moref(detail.and_then(|d| d.child("object"))),
            message,
        },
        "ManagedObjectNotFound" => {
            SoapFault::ManagedObjectNotFound { object: moref(detail.and_then(|d| d.child("obj"))), message }
        }
        "ConcurrentAccess" | "InvalidState" | "TaskInProgress" => SoapFault::Concurrent { kind, message },
        _ => SoapFault::Other { kind, message },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xml::{body, parse};

    fn fault(doc: &str) -> SoapFault {
        of(body(&parse(doc).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn vcsims_faults_are_typed() {
        // Captured from vcsim (providers/vsphere/tests/golden/): a wrong password with
        // -username/-password set, and a RetrievePropertiesEx of `HostSystem:host-nope`.
        assert_eq!(
            fault(include_str!("../tests/golden/login_invalid.xml")),
            SoapFault::InvalidLogin { message: "Login failure".into() }
        );
        let e = fault(include_str!("../tests/golden/managed_object_not_found.xml"));
        assert!(
            matches!(&e, SoapFault::ManagedObjectNotFound { object, .. } if object == "HostSystem:host-nope"),
            "{e:?}"
        );
        let ok = parse(include_str!("../tests/golden/login.xml")).unwrap();
        assert_eq!(of(body(&ok).unwrap()), None, "an answer is not a fault");
    }

    #[test]
    fn vcenter_style_faults_name_the_privilege_and_object() {
        // vCenter's shape: `xsi:type` with its usual prefix.
        let doc = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Permission to perform this operation was denied.</faultstring><detail><NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><object type="DistributedVirtualPortgroup">dvportgroup-13</object><privilegeId>DVPortgroup.PolicyOp</privilegeId></NoPermissionFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let e = fault(doc);
        assert_eq!(
            e.to_string(),
            "permission DVPortgroup.PolicyOp is missing on DistributedVirtualPortgroup:dvportgroup-13 (Permission to perform this operation was denied.)"
        );
        let nodetail = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultstring>boom</faultstring></e:Fault></e:Body></e:Envelope>"#;
        assert_eq!(fault(nodetail), SoapFault::Other { kind: "ServerFault".into(), message: "boom".into() });
    }
}
