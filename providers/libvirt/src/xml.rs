//! libvirt's XML, read and rewritten without a libvirt connection: a domain's NICs (MAC,
//! `source/@network`, port group, bridge, `filterref` and its parameters), an nwfilter's
//! references, and the complete `<interface>` element with new filter parameters, built
//! from the **inactive** XML (the live XML sent back with CONFIG would rewrite a
//! `type='network'` NIC as `type='bridge'`).

use std::ops::Range;

use quick_xml::events::{BytesEnd, BytesStart, Event};
use quick_xml::{Reader, Writer};
use vipvisor_provider::{Filter, Mac, Nic};

/// A NIC as it appears in a domain's XML, and where its `<interface>` element is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub nic: Nic,
    /// `target/@dev` (live XML only).
    pub dev: Option<String>,
    /// Byte range of the `<interface>` element in the XML it was read from.
    pub span: Range<usize>,
}

/// What a domain's XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub interfaces: Vec<Interface>,
}

/// A malformed document or one without what libvirt always writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(pub String);

fn attr(e: &BytesStart, name: &str) -> Result<Option<String>, XmlError> {
    match e.try_get_attribute(name) {
        Ok(Some(a)) => Ok(Some(a.unescape_value().map_err(|e| XmlError(e.to_string()))?.into_owned())),
        Ok(None) => Ok(None),
        Err(e) => Err(XmlError(e.to_string())),
    }
}

/// Reads a domain's XML (inactive or live).
pub fn parse_domain(xml: &str) -> Result<Domain, XmlError> {
    let mut r = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut name = String::new();
    let mut in_name = false;
    let mut interfaces = Vec::new();
    // The interface being read: start offset, MAC, source, filter, dev.
    struct Cur {
        start: usize,
        mac: Option<Mac>,
        network: Option<String>,
        portgroup: Option<String>,
        bridge: Option<String>,
        filter: Option<Filter>,
        dev: Option<String>,
    }
    let mut cur: Option<Cur> = None;
    loop {
        let before = r.buffer_position() as usize;
        let ev = r.read_event().map_err(|e| XmlError(format!("malformed domain XML at byte {before}: {e}")))?;
        let (start, empty) = match &ev {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            let tag = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
            let in_devices = path.len() == 2 && path[0] == "domain" && path[1] == "devices";
            if in_devices && tag == "interface" {
                cur = Some(Cur {
                    start: before,
                    mac: None,
                    network: None,
                    portgroup: None,
                    bridge: None,
                    filter: None,
                    dev: None,
                });
            } else if let Some(c) = cur.as_mut() {
                let depth_in = path.len().saturating_sub(3); // 0: a child of <interface>
                match (depth_in, tag.as_str()) {
                    (0, "mac") => {
                        let a = attr(&e, "address")?
                            .ok_or_else(|| XmlError("an interface <mac> without address".into()))?;
                        c.mac = Some(a.parse().map_err(|e: vipvisor_provider::ProviderError| XmlError(e.to_string()))?);
                    }
                    (0, "source") => {
                        c.network = attr(&e, "network")?;
                        c.portgroup = attr(&e, "portgroup")?;
                        c.bridge = attr(&e, "bridge")?;
                    }
                    (0, "target") => c.dev = attr(&e, "dev")?,
                    (0, "filterref") => {
                        let f = attr(&e, "filter")?.ok_or_else(|| XmlError("a <filterref> without filter".into()))?;
                        c.filter = Some(Filter { name: f, params: Vec::new() });
                    }
                    (1, "parameter") if path.last().map(String::as_str) == Some("filterref") => {
                        let (n, v) = (attr(&e, "name")?, attr(&e, "value")?);
                        if let (Some(f), Some(n), Some(v)) = (c.filter.as_mut(), n, v) {
                            f.params.push((n, v));
                        }
                    }
                    _ => {}
                }
            }
            if path.len() == 1 && path[0] == "domain" && tag == "name" && !empty {
                in_name = true;
            }
            if !empty {
                path.push(tag);
            } else if in_devices && cur.is_some() && path.len() == 2 {
                // <interface/> with no children: nothing to read.
                cur = None;
            }
            continue;
        }
        match ev {
            Event::Text(t) if in_name => {
                name.push_str(&t.unescape().map_err(|e| XmlError(e.to_string()))?);
            }
            Event::End(e) => {
                let tag = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if tag == "name" {
                    in_name = false;
                }
                if tag == "interface" && path.len() == 3 {
                    if let Some(c) = cur.take() {
                        let mac = c.mac.ok_or_else(|| XmlError("an <interface> without <mac>".into()))?;
                        interfaces.push(Interface {
                            nic: Nic {
                                mac,
                                network: c.network,
                                portgroup: c.portgroup,
                                bridge: c.bridge,
                                filter: c.filter,
                            },
                            dev: c.dev,
                            span: c.start..r.buffer_position() as usize,
                        });
                    }
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if name.is_empty() {
        return Err(XmlError("a domain without <name>".into()));
    }
    Ok(Domain { name: name.trim().to_owned(), interfaces })
}

/// The complete `<interface>` element of the NIC with `mac`, taken from the domain's
/// (inactive) XML, with its `filterref` parameters replaced by `params` (in order). The
/// rest of the element is kept as it was.
pub fn interface_with_params(domain_xml: &str, mac: Mac, params: &[(String, String)]) -> Result<String, XmlError> {
    interface_with(domain_xml, mac, None, params)
}

/// [`interface_with_params`], with the filter (its name and parameters) replaced.
pub fn interface_with_filter(domain_xml: &str, mac: Mac, filter: &Filter) -> Result<String, XmlError> {
    interface_with(domain_xml, mac, Some(&filter.name), &filter.params)
}

fn interface_with(
    domain_xml: &str,
    mac: Mac,
    name: Option<&str>,
    params: &[(String, String)],
) -> Result<String, XmlError> {
    let d = parse_domain(domain_xml)?;
    let i = d
        .interfaces
        .iter()
        .find(|i| i.nic.mac == mac)
        .ok_or_else(|| XmlError(format!("no interface with MAC {mac} in domain {}", d.name)))?;
    if i.nic.filter.is_none() {
        return Err(XmlError(format!("the interface with MAC {mac} of domain {} has no filterref", d.name)));
    }
    let element = &domain_xml[i.span.clone()];
    let mut r = Reader::from_str(element);
    let mut w = Writer::new(Vec::new());
    let mut depth = 0usize;
    let mut in_filter = false;
    let write_params = |w: &mut Writer<Vec<u8>>| -> Result<(), XmlError> {
        for (n, v) in params {
            let mut p = BytesStart::new("parameter");
            p.push_attribute(("name", n.as_str()));
            p.push_attribute(("value", v.as_str()));
            w.write_event(Event::Empty(p)).map_err(|e| XmlError(e.to_string()))?;
        }
        Ok(())
    };
    loop {
        let ev = r.read_event().map_err(|e| XmlError(e.to_string()))?;
        match &ev {
            Event::Eof => break,
            Event::Start(e) if depth == 1 && e.local_name().as_ref() == b"filterref" => {
                in_filter = true;
                w.write_event(Event::Start(renamed(e, name))).map_err(|e| XmlError(e.to_string()))?;
                depth += 1;
                continue;
            }
            Event::Empty(e) if depth == 1 && e.local_name().as_ref() == b"filterref" => {
                w.write_event(Event::Start(renamed(e, name))).map_err(|e| XmlError(e.to_string()))?;
                write_params(&mut w)?;
                w.write_event(Event::End(BytesEnd::new("filterref"))).map_err(|e| XmlError(e.to_string()))?;
                continue;
            }
            Event::End(e) if in_filter && depth == 2 && e.local_name().as_ref() == b"filterref" => {
                write_params(&mut w)?;
                in_filter = false;
                depth -= 1;
                w.write_event(ev.clone()).map_err(|e| XmlError(e.to_string()))?;
                continue;
            }
            // The old parameters (and the whitespace between them) are dropped.
            _ if in_filter => {
                match &ev {
                    Event::Start(_) => depth += 1,
                    Event::End(_) => depth -= 1,
                    _ => {}
                }
                continue;
            }
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            _ => {}
        }
        w.write_event(ev).map_err(|e| XmlError(e.to_string()))?;
    }
    String::from_utf8(w.into_inner()).map_err(|e| XmlError(e.to_string()))
}

/// `filterref` with its `filter` attribute set to `name` (when given), other attributes kept.
fn renamed(e: &BytesStart, name: Option<&str>) -> BytesStart<'static> {
    let Some(name) = name else { return e.clone().into_owned() };
    let mut out = BytesStart::new("filterref");
    for a in e.attributes().flatten() {
        if a.key.as_ref() != b"filter" {
            out.push_attribute(a);
        }
    }
    out.push_attribute(("filter", name));
    out.into_owned()
}

/// The filters an nwfilter definition references (`<filterref filter='…'/>` children).
pub fn nwfilter_refs(xml: &str) -> Result<(String, Vec<String>), XmlError> {
    let mut r = Reader::from_str(xml);
    let mut name = None;
    let mut refs = Vec::new();
    loop {
        match r.read_event().map_err(|e| XmlError(format!("malformed nwfilter XML: {e}")))? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"filter" if name.is_none() => name = attr(&e, "name")?,
                b"filterref" => refs.extend(attr(&e, "filter")?),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok((name.ok_or_else(|| XmlError("an nwfilter without name".into()))?, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'>
  <name>n1-domain</name>
  <devices>
    <interface type='network'>
      <mac address='52:54:00:00:00:21'/>
      <source network='lab' portgroup='vips'/>
      <model type='virtio'/>
      <filterref filter='clean-traffic'>
        <parameter name='IP' value='192.0.2.21'/>
      </filterref>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:00:00:22'/>
      <source bridge='br1'/>
      <target dev='vnet3'/>
      <filterref filter='no-ip-spoofing'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:00:00:23'/>
      <source network='other'/>
    </interface>
  </devices>
</domain>"#;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn nics_are_read_by_mac_with_their_network_and_filter() {
        let d = parse_domain(DOMAIN).unwrap();
        assert_eq!(d.name, "n1-domain");
        assert_eq!(d.interfaces.len(), 3);
        let a = &d.interfaces[0];
        assert_eq!(a.nic.mac, mac("52:54:00:00:00:21"));
        assert_eq!((a.nic.network.as_deref(), a.nic.portgroup.as_deref()), (Some("lab"), Some("vips")));
        assert_eq!(
            a.nic.filter,
            Some(Filter { name: "clean-traffic".into(), params: vec![("IP".into(), "192.0.2.21".into())] })
        );
        assert!(
            DOMAIN[a.span.clone()].starts_with("<interface type='network'>")
                && DOMAIN[a.span.clone()].ends_with("</interface>")
        );
        let b = &d.interfaces[1];
        assert_eq!((b.nic.bridge.as_deref(), b.dev.as_deref()), (Some("br1"), Some("vnet3")));
        assert_eq!(b.nic.filter.as_ref().map(|f| f.params.len()), Some(0));
        assert_eq!(d.interfaces[2].nic.filter, None);
    }

    #[test]
    fn the_interface_is_rewritten_with_new_parameters_and_nothing_else() {
        let params = vec![("IP".to_string(), "192.0.2.21".to_string()), ("IP".to_string(), "192.0.2.100".to_string())];
        let x = interface_with_params(DOMAIN, mac("52:54:00:00:00:21"), &params).unwrap();
        assert!(x.starts_with("<interface type='network'>"), "{x}");
        assert!(x.contains("<source network='lab' portgroup='vips'/>") && x.contains("<model type='virtio'/>"), "{x}");
        assert!(x.contains(r#"<filterref filter='clean-traffic'><parameter name="IP" value="192.0.2.21"/><parameter name="IP" value="192.0.2.100"/></filterref>"#), "{x}");
        // Read back, it is the same NIC with the new list.
        let back = parse_domain(&format!("<domain><name>x</name><devices>{x}</devices></domain>")).unwrap();
        assert_eq!(back.interfaces[0].nic.filter.as_ref().unwrap().params, params);
        // A self-closing filterref gets its parameters too.
        let y = interface_with_params(DOMAIN, mac("52:54:00:00:00:22"), &params[1..]).unwrap();
        assert!(
            y.contains(r#"<filterref filter='no-ip-spoofing'><parameter name="IP" value="192.0.2.100"/></filterref>"#),
            "{y}"
        );
        // Errors name the MAC.
        let e = interface_with_params(DOMAIN, mac("52:54:00:00:00:99"), &params).unwrap_err();
        assert!(e.0.contains("52:54:00:00:00:99") && e.0.contains("n1-domain"), "{e}");
        let e = interface_with_params(DOMAIN, mac("52:54:00:00:00:23"), &params).unwrap_err();
        assert!(e.0.contains("no filterref"), "{e}");
    }

    /// Captured from libvirt 9.0 (tests/golden/README.md): the inactive XML, the live XML
    /// of the same running domain, and the inactive XML after `update-device --config`.
    #[test]
    fn golden_libvirt_xml_reads_and_transforms() {
        let inactive = include_str!("../tests/golden/domain-inactive.xml");
        let live = include_str!("../tests/golden/domain-live.xml");
        let granted = include_str!("../tests/golden/domain-inactive-granted.xml");
        let d = parse_domain(inactive).unwrap();
        assert_eq!(d.name, "vv-golden");
        let macs: Vec<String> = d.interfaces.iter().map(|i| i.nic.mac.to_string()).collect();
        assert_eq!(macs, ["52:54:00:00:00:21", "52:54:00:00:00:22", "52:54:00:00:00:23"]);
        assert!(d.interfaces.iter().all(|i| i.nic.network.as_deref() == Some("vv-net")), "keyed by source/@network");
        let l = parse_domain(live).unwrap();
        assert_eq!(l.interfaces.len(), 3, "the live shape (type='bridge', portid) reads too");
        assert!(l.interfaces.iter().all(|i| i.nic.bridge.as_deref() == Some("vvbr0") && i.dev.is_some()));
        assert_eq!(l.interfaces[0].nic.filter, d.interfaces[0].nic.filter);
        // Our transform of the inactive XML gives what libvirt then stores.
        let want = parse_domain(granted).unwrap().interfaces[0].nic.filter.clone().unwrap();
        let x = interface_with_params(inactive, mac("52:54:00:00:00:21"), &want.params).unwrap();
        assert!(
            x.starts_with("<interface type='network'>") && x.contains("<source network='vv-net'/>"),
            "built from the inactive XML: {x}"
        );
        let back = parse_domain(&format!("<domain><name>x</name><devices>{x}</devices></domain>")).unwrap();
        assert_eq!(back.interfaces[0].nic.filter.as_ref(), Some(&want));
        let (name, refs) = nwfilter_refs(include_str!("../tests/golden/nwfilter-clean-traffic.xml")).unwrap();
        assert_eq!(name, "clean-traffic");
        assert!(
            refs.contains(&"no-ip-spoofing".to_string()) && refs.contains(&"no-mac-spoofing".to_string()),
            "{refs:?}"
        );
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_panic() {
        for bad in
            ["", "<domain>", "<domain><devices><interface><mac address='zz'/></interface></devices></domain>", "<x/>"]
        {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
        let (n, refs) = nwfilter_refs("<filter name='clean-traffic' chain='root'><filterref filter='no-mac-spoofing'/><filterref filter='no-ip-spoofing'/><rule action='accept' direction='out'/></filter>").unwrap();
        assert_eq!(
            (n.as_str(), refs),
            ("clean-traffic", vec!["no-mac-spoofing".to_string(), "no-ip-spoofing".to_string()])
        );
    }
}
