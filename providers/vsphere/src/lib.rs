//! vipvisor-vsphere: the vSphere provider (issue #14), over a small vim25 SOAP client of
//! its own (docs/design.md says why not vim_rs). So far its document layer:
//!
//! - [`xml`]: SOAP envelopes out, a small namespace-resolved tree in (vcsim writes
//!   `XMLSchema-instance:type` where vCenter writes `xsi:type`: attributes are matched by
//!   namespace URI, never by prefix), with bounds on what a server may send;
//! - [`fault`]: SOAP faults as typed errors (`InvalidLogin`, `NoPermission` with the
//!   privilege, `ManagedObjectNotFound` with the object, `NotAuthenticated`, …).

pub mod fault;
pub mod xml;
