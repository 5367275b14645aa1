//! SOAP documents: the envelope vipvisor sends ([`envelope`], with [`esc`] for every value
//! put into it) and a small tree of what the server answers ([`parse`]), each element and
//! attribute named by (namespace URI, local name).

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// SOAP 1.1's envelope namespace.
pub const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// vim25's namespace.
pub const VIM25: &str = "urn:vim25";
/// XML Schema instance (`xsi:type`, whatever the prefix).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The deepest nesting read (vim25 answers nest about 15 deep).
pub const MAX_DEPTH: usize = 128;
/// The most elements one answer may hold (an inventory of 500 VMs is ~200,000).
pub const MAX_ELEMENTS: usize = 4_000_000;

/// A document that is not well-formed, too deep or too big, or not SOAP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(pub String);

/// An element: its namespace URI (empty: none), local name, attributes, text and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub ns: String,
    pub name: String,
    /// `(namespace URI, local name, value)`.
    pub attrs: Vec<(String, String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name` (any namespace).
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
    /// Every child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
    /// The descendant at `path` (child names separated by `/`).
    pub fn at(&self, path: &str) -> Option<&Node> {
        path.split('/').try_fold(self, |n, p| n.child(p))
    }
    /// An attribute without a namespace (`type` of a managed object reference).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attr_ns("", name)
    }
    /// An attribute in namespace `ns`.
    pub fn attr_ns(&self, ns: &str, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, l, _)| n == ns && l == name).map(|(_, _, v)| v.as_str())
    }
    /// `xsi:type` (by namespace, so also vcsim's `XMLSchema-instance:type`), without any
    /// prefix of the type name (`xsd:string` → `string`).
    pub fn xsi_type(&self) -> Option<&str> {
        self.attr_ns(XSI, "type").map(|t| t.rsplit(':').next().unwrap_or(t))
    }
}

/// Escapes text for an element or a double-quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A request: `body` (vim25 elements, unprefixed) in a SOAP envelope.
pub fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"{SOAPENV}\" xmlns:xsi=\"{XSI}\"><soapenv:Body xmlns=\"{VIM25}\">{body}</soapenv:Body></soapenv:Envelope>"
    )
}

fn err(r: &NsReader<&[u8]>, what: impl std::fmt::Display) -> XmlError {
    XmlError(format!("{what} (at byte {})", r.buffer_position()))
}

/// Reads a document into a tree of its root element.
pub fn parse(text: &str) -> Result<Node, XmlError> {
    let mut r = NsReader::from_reader(text.as_bytes());
    r.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut elements = 0usize;
    let mut root: Option<Node> = None;
    loop {
        let (resolved, ev) = r.read_resolved_event().map_err(|e| XmlError(format!("malformed XML: {e}")))?;
        let ns_of = |res: ResolveResult| match res {
            ResolveResult::Bound(ns) => Ok(String::from_utf8_lossy(ns.as_ref()).into_owned()),
            ResolveResult::Unbound => Ok(String::new()),
            ResolveResult::Unknown(p) => Err(format!("unknown namespace prefix {:?}", String::from_utf8_lossy(&p))),
        };
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(err(&r, format!("more than {MAX_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(err(&r, format!("nested deeper than {MAX_DEPTH}")));
                }
                let ns = ns_of(resolved).map_err(|m| err(&r, m))?;
                let mut node =
                    Node { ns, name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(), ..Node::default() };
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&r, format!("malformed attribute: {e}")))?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (res, local) = r.resolve_attribute(a.key);
                    let ns = ns_of(res).map_err(|m| err(&r, m))?;
                    let value = a.unescape_value().map_err(|e| err(&r, format!("bad attribute value: {e}")))?;
                    node.attrs.push((ns, String::from_utf8_lossy(local.as_ref()).into_owned(), value.into_owned()));
                }
                if matches!(ev, Event::Empty(_)) {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| err(&r, "an end tag without a start"))?;
                attach(&mut stack, &mut root, node);
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.unescape().map_err(|e| err(&r, format!("bad text: {e}")))?);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError(format!("the document ends inside <{}>", stack.last().map_or("", |n| &n.name))));
    }
    root.ok_or_else(|| XmlError("an empty document; expected a SOAP envelope".into()))
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => {
            if root.is_none() {
                *root = Some(node);
            }
        }
    }
}

/// The body's first element of a SOAP envelope (the response, or a `Fault`).
pub fn body(envelope: &Node) -> Result<&Node, XmlError> {
    if envelope.ns != SOAPENV || envelope.name != "Envelope" {
        return Err(XmlError(format!("<{}> in {:?}; expected a SOAP Envelope", envelope.name, envelope.ns)));
    }
    envelope
        .child("Body")
        .and_then(|b| b.children.first())
        .ok_or_else(|| XmlError("a SOAP envelope without a body element".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Captured from vcsim (tests/testbed/vcsim.sh start DIR -username admin -password-file F,
    // then curl with the request shown in each test; see providers/vsphere/tests/golden/).
    const HOSTS: &str = include_str!("../tests/golden/retrieve_hosts.xml");
    const CONTENT: &str = include_str!("../tests/golden/retrieve_service_content.xml");

    #[test]
    fn attributes_are_resolved_by_namespace_whatever_the_prefix() {
        // vcsim: `XMLSchema-instance:type`; vCenter: `xsi:type`.
        let doc = parse(HOSTS).unwrap();
        let objects: Vec<&Node> = body(&doc).unwrap().child("returnval").unwrap().children_named("objects").collect();
        assert_eq!(objects.len(), 4, "four hosts in the default VPX model");
        let names: Vec<&str> = objects
            .iter()
            .flat_map(|o| o.children_named("propSet"))
            .filter(|p| p.child("name").is_some_and(|n| n.text == "name"))
            .map(|p| p.child("val").unwrap())
            .inspect(|v| assert_eq!(v.xsi_type(), Some("string")))
            .map(|v| v.text.as_str())
            .collect();
        assert_eq!(names, ["DC0_H0", "DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"]);
        let vcenter = parse(
            &HOSTS
                .replace("XMLSchema-instance:type", "xsi:type")
                .replace("xmlns:XMLSchema-instance=\"http://www.w3.org/2001/XMLSchema-instance\"", ""),
        )
        .unwrap();
        assert_eq!(vcenter, doc, "the same tree with vCenter's prefix");
        let obj = objects[0].child("obj").unwrap();
        assert_eq!((obj.attr("type"), obj.ns.as_str()), (Some("HostSystem"), VIM25));
    }

    #[test]
    fn service_content_names_the_managers() {
        let doc = parse(CONTENT).unwrap();
        let rv = body(&doc).unwrap().child("returnval").unwrap();
        assert_eq!(rv.at("sessionManager").map(|n| n.text.as_str()), Some("SessionManager"));
        assert_eq!(rv.at("propertyCollector").and_then(|n| n.attr("type")), Some("PropertyCollector"));
        assert_eq!(rv.at("about/apiType").map(|n| n.text.as_str()), Some("VirtualCenter"));
    }

    #[test]
    fn requests_escape_what_they_carry() {
        let e = envelope(&format!("<Login><userName>{}</userName></Login>", esc("a<b>&\"c'")));
        assert!(e.contains("<userName>a&lt;b&gt;&amp;&quot;c&apos;</userName>"), "{e}");
        let back = parse(&e).unwrap();
        let login = body(&back).unwrap();
        assert_eq!((login.ns.as_str(), login.name.as_str()), (VIM25, "Login"));
        assert_eq!(login.child("userName").unwrap().text, "a<b>&\"c'", "what was escaped reads back");
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for (doc, needle) in [
            ("", "empty document"),
            ("<a><b></a>", "malformed"),
            ("<a>", "ends inside <a>"),
            ("<x:a/>", "unknown namespace prefix"),
            ("<a/>", "expected a SOAP Envelope"),
        ] {
            let e = parse(doc).and_then(|d| body(&d).cloned()).unwrap_err();
            assert!(e.0.contains(needle), "{doc:?}: {e}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().0.contains("deeper"), "depth is bounded");
    }
}
