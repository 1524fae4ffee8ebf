//! The DNS wire format, as much of it as a stub resolver's queries and this server's answers
//! need: the header, question and resource records of RFC 1035 §4 (with name compression on
//! read), EDNS0's OPT record (RFC 6891) and SRV data (RFC 2782).
//!
//! [`parse_query`] reads a query and says whether a malformed one can still be answered
//! (FORMERR, once its question is read) or must be dropped; [`encode`] writes an answer within a
//! size limit, setting TC when records had to be left out; [`check_answer`] tells whether an
//! upstream's answer answers the question that was forwarded. Pure: bytes in, bytes out, and no
//! input makes it panic or loop (every read is bounds-checked, compression pointers must go
//! strictly backwards).

#[cfg(test)]
use std::net::{Ipv4Addr, Ipv6Addr};

use super::zone::Record;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 12;
/// The longest name in wire form, length octets and the root's 0 included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// The longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// The most a UDP answer may hold without EDNS0 (RFC 1035 §4.2.1).
pub const UDP_MIN: usize = 512;
/// The most a UDP answer holds whatever size a client advertises: 1232 bytes fit a 1280-byte
/// IPv6 minimum MTU with its headers, so answers are never fragmented (DNS Flag Day 2020).
pub const UDP_MAX: usize = 1232;
/// The most a message over TCP can hold: its 2-byte length prefix.
pub const TCP_MAX: usize = 65_535;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const OPCODE_QUERY: u8 = 0;

/// Response codes; those above 15 need an OPT record for their upper 8 bits (RFC 6891 §6.1.3).
pub const NOERROR: u16 = 0;
pub const FORMERR: u16 = 1;
pub const SERVFAIL: u16 = 2;
pub const NXDOMAIN: u16 = 3;
pub const NOTIMP: u16 = 4;
pub const REFUSED: u16 = 5;
pub const BADVERS: u16 = 16;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const CD: u16 = 0x0010;
/// The DNSSEC OK bit of an OPT record's TTL field (RFC 3225).
const DO: u32 = 0x8000;

/// Why bytes are not a message this server can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than its header and sections say")]
    Truncated,
    #[error("a response, not a query")]
    NotAQuery,
    #[error("no question")]
    NoQuestion,
    #[error("more than one question")]
    ManyQuestions,
    #[error("a compression pointer that does not point backwards")]
    BadPointer,
    #[error("a label type other than a plain label or a pointer")]
    BadLabel,
    #[error("a name longer than 255 bytes")]
    NameTooLong,
    #[error("a malformed OPT record")]
    BadOpt,
    #[error("the answer's id or question is not the query's")]
    Mismatch,
}

/// A name as it came, case kept: its uncompressed wire form (length-prefixed labels, then 0).
/// Label lengths are at most 63, below every ASCII letter, so comparing the wire forms
/// ASCII-case-insensitively compares the names label by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(Vec<u8>);

impl Name {
    /// The name's labels, in order, without the root.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let label = tail.get(..usize::from(len)).filter(|l| !l.is_empty())?;
            rest = &tail[label.len()..];
            Some(label)
        })
    }

    /// The name lowercased with its labels joined by dots and no trailing dot, as zones are
    /// keyed; `None` when a label holds a dot or a byte outside visible ASCII, which no zone
    /// name can.
    pub fn key(&self) -> Option<String> {
        let mut key = String::with_capacity(self.0.len());
        for label in self.labels() {
            if !label.iter().all(|&b| is_name_byte(b)) {
                return None;
            }
            if !key.is_empty() {
                key.push('.');
            }
            key.extend(label.iter().map(|&b| char::from(b.to_ascii_lowercase())));
        }
        Some(key)
    }

    /// Whether the name is `domain` or below it; `domain` is dotted, lowercase, without the
    /// trailing dot, and "" is the root.
    pub fn is_within(&self, domain: &str) -> bool {
        if domain.is_empty() {
            return true;
        }
        let ours: Vec<&[u8]> = self.labels().collect();
        let theirs: Vec<&[u8]> = domain.split('.').map(str::as_bytes).collect();
        ours.len() >= theirs.len()
            && ours
                .iter()
                .rev()
                .zip(theirs.iter().rev())
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    pub fn eq_ignore_case(&self, other: &Name) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }

    /// The wire form of a dotted name (a trailing dot allowed, "" or "." the root); `None` when
    /// a label is empty or too long, the whole too long, or a byte is not one of [`Name::key`]'s.
    pub fn from_dotted(dotted: &str) -> Option<Name> {
        let dotted = dotted.strip_suffix('.').unwrap_or(dotted);
        let mut wire = Vec::with_capacity(dotted.len() + 2);
        if !dotted.is_empty() {
            for label in dotted.split('.') {
                let bytes = label.as_bytes();
                if bytes.is_empty()
                    || bytes.len() > MAX_LABEL_LEN
                    || !bytes.iter().all(|&b| is_name_byte(b))
                {
                    return None;
                }
                wire.push(bytes.len() as u8);
                wire.extend_from_slice(bytes);
            }
        }
        wire.push(0);
        (wire.len() <= MAX_NAME_LEN).then_some(Name(wire))
    }

    pub fn wire(&self) -> &[u8] {
        &self.0
    }
}

/// A byte a zone name may hold: visible ASCII but the dot that separates labels.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'.'
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// A query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the client takes, as it says (RFC 6891 §6.2.3).
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// Where the size sits in the query, so a forwarded copy can lower it.
    size_at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub cd: bool,
    pub question: Question,
    pub edns: Option<Edns>,
}

impl Query {
    /// The largest answer this query may get over UDP: 512 bytes, or what its OPT record
    /// advertises within 512 (RFC 6891 §6.2.5: smaller is taken as 512) and [`UDP_MAX`].
    pub fn udp_limit(&self) -> usize {
        self.edns
            .map_or(UDP_MIN, |e| usize::from(e.udp_size).clamp(UDP_MIN, UDP_MAX))
    }
}

/// A query that cannot be used, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Nothing to answer (too short, a response, no readable question): drop it.
    Drop(WireError),
    /// The question was read but the rest is malformed: answer FORMERR.
    FormErr {
        id: u16,
        opcode: u8,
        rd: bool,
        question: Question,
        error: WireError,
    },
}

/// Reads a query: its header, its one question and its OPT record; other records of the
/// answer and authority sections are read past.
pub fn parse_query(packet: &[u8]) -> Result<Query, Bad> {
    let mut r = Reader::new(packet);
    let header = r.header().map_err(Bad::Drop)?;
    if header.flags & QR != 0 {
        return Err(Bad::Drop(WireError::NotAQuery));
    }
    if header.qdcount == 0 {
        return Err(Bad::Drop(WireError::NoQuestion));
    }
    let question = r.question().map_err(Bad::Drop)?;
    let id = header.id;
    let opcode = ((header.flags >> 11) & 0xf) as u8;
    let rd = header.flags & RD != 0;
    let form_err = |question: Question, error| Bad::FormErr {
        id,
        opcode,
        rd,
        question,
        error,
    };
    if header.qdcount > 1 {
        return Err(form_err(question, WireError::ManyQuestions));
    }
    let edns = match r.records(&header) {
        Ok(edns) => edns,
        Err(error) => return Err(form_err(question, error)),
    };
    Ok(Query {
        id,
        opcode,
        rd,
        cd: header.flags & CD != 0,
        question,
        edns,
    })
}

/// A copy of `packet` (the bytes `query` was read from) to send upstream: under `id`, and
/// advertising at most [`UDP_MAX`] so the upstream's answer fits what is relayed.
pub fn forwarded(packet: &[u8], query: &Query, id: u16) -> Vec<u8> {
    let mut copy = packet.to_vec();
    copy[..2].copy_from_slice(&id.to_be_bytes());
    if let Some(edns) = query.edns
        && usize::from(edns.udp_size) > UDP_MAX
    {
        copy[edns.size_at..edns.size_at + 2].copy_from_slice(&(UDP_MAX as u16).to_be_bytes());
    }
    copy
}

/// Checks that `answer` is a response with `id` to `question`, names compared
/// case-insensitively.
pub fn check_answer(answer: &[u8], id: u16, question: &Question) -> Result<(), WireError> {
    let mut r = Reader::new(answer);
    let header = r.header()?;
    if header.flags & QR == 0 || header.id != id || header.qdcount != 1 {
        return Err(WireError::Mismatch);
    }
    let asked = r.question()?;
    let same = asked.name.eq_ignore_case(&question.name)
        && asked.qtype == question.qtype
        && asked.qclass == question.qclass;
    if same {
        Ok(())
    } else {
        Err(WireError::Mismatch)
    }
}

/// Puts `id` in a message's header (the client's, on an answer forwarded under another).
pub fn set_id(message: &mut [u8], id: u16) {
    if let Some(head) = message.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
}

/// The response code in a message's header (its lower 4 bits only), if it has one.
pub fn rcode(message: &[u8]) -> Option<u16> {
    message.get(3).map(|b| u16::from(b & 0xf))
}

/// An answer to write: the query's header bits echoed, its question, and records whose owner
/// is the question's name.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub cd: bool,
    /// Authoritative: an answer from the zone.
    pub aa: bool,
    /// Recursion available: names outside the zone are forwarded.
    pub ra: bool,
    /// Set TC even if everything fits (an upstream's answer that did not).
    pub tc: bool,
    /// A response code, up to 12 bits with an OPT record.
    pub rcode: u16,
    pub question: Option<&'a Question>,
    pub answers: &'a [&'a Record],
    /// Whether to add an OPT record, and the DO bit to echo in it (RFC 3225 §3).
    pub edns: Option<bool>,
}

impl<'a> Reply<'a> {
    /// A reply to `query` with `rcode` and no records.
    pub fn to(query: &'a Query, rcode: u16) -> Reply<'a> {
        Reply {
            id: query.id,
            opcode: query.opcode,
            rd: query.rd,
            cd: query.cd,
            aa: false,
            ra: true,
            tc: false,
            rcode,
            question: Some(&query.question),
            answers: &[],
            edns: query.edns.map(|e| e.dnssec_ok),
        }
    }
}

/// Bytes of the OPT record [`encode`] writes.
const OPT_LEN: usize = 11;

/// Writes `reply` in at most `limit` bytes (at least [`UDP_MIN`] is assumed): the answers that
/// fit whole, in order, with TC set when some did not. Records that fit are kept rather than
/// none, for stub resolvers that do not retry over TCP. Says whether TC was set.
pub fn encode(reply: &Reply<'_>, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(512);
    let mut flags = QR | (u16::from(reply.opcode & 0xf) << 11) | (reply.rcode & 0xf);
    for (set, bit) in [
        (reply.aa, AA),
        (reply.rd, RD),
        (reply.ra, RA),
        (reply.cd, CD),
    ] {
        if set {
            flags |= bit;
        }
    }
    put_u16(&mut out, reply.id);
    put_u16(&mut out, flags);
    put_u16(&mut out, u16::from(reply.question.is_some()));
    put_u16(&mut out, 0); // answers, counted below
    put_u16(&mut out, 0);
    put_u16(&mut out, u16::from(reply.edns.is_some()));
    if let Some(q) = reply.question {
        out.extend_from_slice(q.name.wire());
        put_u16(&mut out, q.qtype);
        put_u16(&mut out, q.qclass);
    }
    let room = limit.max(UDP_MIN) - if reply.edns.is_some() { OPT_LEN } else { 0 };
    let mut truncated = reply.tc;
    let mut count: u16 = 0;
    // Answers are owned by the question's name, so there are none without a question.
    if reply.question.is_some() {
        for record in reply.answers {
            let start = out.len();
            put_record(&mut out, record);
            if out.len() > room || count == u16::MAX {
                out.truncate(start);
                truncated = true;
                break;
            }
            count += 1;
        }
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    if truncated {
        out[2] |= (TC >> 8) as u8;
    }
    if let Some(dnssec_ok) = reply.edns {
        out.push(0); // the root
        put_u16(&mut out, TYPE_OPT);
        put_u16(&mut out, UDP_MAX as u16);
        let ttl = (u32::from(reply.rcode >> 4) << 24) | if dnssec_ok { DO } else { 0 };
        put_u32(&mut out, ttl);
        put_u16(&mut out, 0);
    }
    (out, truncated)
}

/// Time to live of every record: 1 s, since endpoints come and go by the second and a task
/// must not keep an address the node has moved on from; the server is on the task's own node,
/// so asking again costs a loopback round trip.
pub const TTL: u32 = 1;

/// One record owned by the question's name, which it points to (the question sits right after
/// the header, at offset 12). SRV targets are written whole, as RFC 2782 asks.
fn put_record(out: &mut Vec<u8>, record: &Record) {
    put_u16(out, 0xc000 | HEADER_LEN as u16);
    put_u16(out, record_type(record));
    put_u16(out, CLASS_IN);
    put_u32(out, TTL);
    let len_at = out.len();
    put_u16(out, 0);
    match record {
        Record::A(ip) => out.extend_from_slice(&ip.octets()),
        Record::Aaaa(ip) => out.extend_from_slice(&ip.octets()),
        Record::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            put_u16(out, *priority);
            put_u16(out, *weight);
            put_u16(out, *port);
            // Zones keep only valid targets; an invalid one would be written as the root,
            // which RFC 2782 reads as "no such service here".
            match Name::from_dotted(target) {
                Some(name) => out.extend_from_slice(name.wire()),
                None => out.push(0),
            }
        }
    }
    let len = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
}

pub fn record_type(record: &Record) -> u16 {
    match record {
        Record::A(_) => TYPE_A,
        Record::Aaaa(_) => TYPE_AAAA,
        Record::Srv { .. } => TYPE_SRV,
    }
}

/// Whether a query of `qtype` asks for `record`.
pub fn wanted(qtype: u16, record: &Record) -> bool {
    qtype == TYPE_ANY || qtype == record_type(record)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

/// A cursor over a message; every read checks bounds.
struct Reader<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(packet: &'a [u8]) -> Reader<'a> {
        Reader { packet, pos: 0 }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.packet.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn header(&mut self) -> Result<Header, WireError> {
        Ok(Header {
            id: self.u16()?,
            flags: self.u16()?,
            qdcount: self.u16()?,
            ancount: self.u16()?,
            nscount: self.u16()?,
            arcount: self.u16()?,
        })
    }

    fn question(&mut self) -> Result<Question, WireError> {
        Ok(Question {
            name: self.name()?,
            qtype: self.u16()?,
            qclass: self.u16()?,
        })
    }

    /// A name, following compression pointers (RFC 1035 §4.1.4). Each pointer must point
    /// before the last one followed (the first: before itself), so the offsets followed
    /// strictly decrease and no packet can make the read loop; real encoders only ever point
    /// back to a name written earlier, which satisfies this.
    fn name(&mut self) -> Result<Name, WireError> {
        let mut wire = Vec::new();
        let mut pos = self.pos;
        let mut bound = usize::MAX;
        let mut resume = None;
        loop {
            let len = *self.packet.get(pos).ok_or(WireError::Truncated)?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    wire.push(0);
                    pos += 1;
                    break;
                }
                0x00 => {
                    let len = usize::from(len);
                    let label = self
                        .packet
                        .get(pos + 1..pos + 1 + len)
                        .ok_or(WireError::Truncated)?;
                    // This label and at least the root's 0 after it.
                    if wire.len() + 1 + len + 1 > MAX_NAME_LEN {
                        return Err(WireError::NameTooLong);
                    }
                    wire.push(len as u8);
                    wire.extend_from_slice(label);
                    pos += 1 + len;
                }
                0xc0 => {
                    let low = *self.packet.get(pos + 1).ok_or(WireError::Truncated)?;
                    let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                    if target >= pos.min(bound) {
                        return Err(WireError::BadPointer);
                    }
                    resume.get_or_insert(pos + 2);
                    bound = target;
                    pos = target;
                }
                _ => return Err(WireError::BadLabel),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(Name(wire))
    }

    /// Reads past the answer and authority sections and through the additional one, returning
    /// its OPT record if any. Each record takes at least 11 bytes, so a huge count only runs
    /// the reader into the end of the packet.
    fn records(&mut self, header: &Header) -> Result<Option<Edns>, WireError> {
        let skipped = u32::from(header.ancount) + u32::from(header.nscount);
        for _ in 0..skipped {
            self.name()?;
            self.bytes(8)?;
            let len = self.u16()?;
            self.bytes(usize::from(len))?;
        }
        let mut edns = None;
        for _ in 0..header.arcount {
            let name = self.name()?;
            let rtype = self.u16()?;
            let size_at = self.pos;
            let class = self.u16()?;
            let ttl = self.u32()?;
            let len = self.u16()?;
            self.bytes(usize::from(len))?;
            if rtype == TYPE_OPT {
                // One OPT, owned by the root (RFC 6891 §6.1.1).
                if edns.is_some() || name.wire() != [0] {
                    return Err(WireError::BadOpt);
                }
                edns = Some(Edns {
                    udp_size: class,
                    version: (ttl >> 16) as u8,
                    dnssec_ok: ttl & DO != 0,
                    size_at,
                });
            }
        }
        Ok(edns)
    }
}

/// A plain query, as a stub resolver sends it: for tests here and of the server.
#[cfg(test)]
pub fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    put_u16(&mut out, id);
    put_u16(&mut out, RD);
    put_u16(&mut out, 1);
    put_u16(&mut out, 0);
    put_u16(&mut out, 0);
    put_u16(&mut out, u16::from(edns.is_some()));
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    put_u16(&mut out, qtype);
    put_u16(&mut out, CLASS_IN);
    if let Some(size) = edns {
        out.push(0);
        put_u16(&mut out, TYPE_OPT);
        put_u16(&mut out, size);
        put_u32(&mut out, 0);
        put_u16(&mut out, 0);
    }
    out
}

/// What a test reads back from an answer.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub id: u16,
    pub flags: u16,
    pub rcode: u16,
    pub tc: bool,
    pub aa: bool,
    pub question: Option<Question>,
    /// Each answer's owner (lowercased, dotted), type and data.
    pub answers: Vec<(String, u16, Vec<u8>)>,
    pub opt: Option<(u16, u32)>,
}

#[cfg(test)]
pub fn parse_answer(message: &[u8]) -> Result<Parsed, WireError> {
    let mut r = Reader::new(message);
    let header = r.header()?;
    let question = if header.qdcount == 1 {
        Some(r.question()?)
    } else {
        None
    };
    let mut answers = Vec::new();
    for _ in 0..header.ancount {
        let owner = r.name()?.key().ok_or(WireError::BadLabel)?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let _ttl = r.u32()?;
        let len = r.u16()?;
        answers.push((owner, rtype, r.bytes(usize::from(len))?.to_vec()));
    }
    let mut opt = None;
    for _ in 0..header.arcount {
        r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        let ttl = r.u32()?;
        let len = r.u16()?;
        r.bytes(usize::from(len))?;
        if rtype == TYPE_OPT {
            opt = Some((class, ttl));
        }
    }
    let rcode = (header.flags & 0xf) | opt.map_or(0, |(_, ttl)| ((ttl >> 24) as u16) << 4);
    Ok(Parsed {
        id: header.id,
        flags: header.flags,
        rcode,
        tc: header.flags & TC != 0,
        aa: header.flags & AA != 0,
        question,
        answers,
        opt,
    })
}

#[cfg(test)]
pub fn a(data: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(data[0], data[1], data[2], data[3])
}

#[cfg(test)]
pub fn aaaa(data: &[u8]) -> Ipv6Addr {
    let mut octets = [0; 16];
    octets.copy_from_slice(data);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(dotted: &str) -> Name {
        Name::from_dotted(dotted).unwrap()
    }

    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        put_u16(&mut out, id);
        put_u16(&mut out, flags);
        for c in counts {
            put_u16(&mut out, c);
        }
        out
    }

    #[test]
    fn reads_a_plain_query() {
        let q = parse_query(&query(0x1234, "Web.Outpost", TYPE_A, None)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(q.opcode, OPCODE_QUERY);
        assert_eq!(q.question.qtype, TYPE_A);
        assert_eq!(q.question.qclass, CLASS_IN);
        assert_eq!(q.question.name.wire(), b"\x03Web\x07Outpost\x00");
        assert_eq!(q.question.name.key().as_deref(), Some("web.outpost"));
        assert_eq!(q.edns, None);
        assert_eq!(q.udp_limit(), UDP_MIN);
    }

    #[test]
    fn reads_the_opt_record_and_bounds_its_size() {
        let q = parse_query(&query(1, "web.outpost", TYPE_A, Some(4096))).unwrap();
        let edns = q.edns.unwrap();
        assert_eq!(
            (edns.udp_size, edns.version, edns.dnssec_ok),
            (4096, 0, false)
        );
        assert_eq!(q.udp_limit(), UDP_MAX);
        let small = parse_query(&query(1, "web.outpost", TYPE_A, Some(100))).unwrap();
        assert_eq!(small.udp_limit(), UDP_MIN);
        let middle = parse_query(&query(1, "web.outpost", TYPE_A, Some(1000))).unwrap();
        assert_eq!(middle.udp_limit(), 1000);
    }

    #[test]
    fn a_forwarded_copy_has_the_new_id_and_at_most_the_largest_udp_size() {
        let packet = query(7, "example.com", TYPE_A, Some(4096));
        let q = parse_query(&packet).unwrap();
        let copy = forwarded(&packet, &q, 0xbeef);
        let again = parse_query(&copy).unwrap();
        assert_eq!(again.id, 0xbeef);
        assert_eq!(again.edns.unwrap().udp_size, UDP_MAX as u16);
        assert_eq!(again.question, q.question);
        let packet = query(7, "example.com", TYPE_A, Some(1000));
        let q = parse_query(&packet).unwrap();
        assert_eq!(
            parse_query(&forwarded(&packet, &q, 1))
                .unwrap()
                .edns
                .unwrap()
                .udp_size,
            1000
        );
    }

    #[test]
    fn reads_compressed_names() {
        // A question whose name ends in a pointer to a name stored in an earlier (answer)
        // record is not what resolvers send, so build a response: question "outpost", then an
        // answer owned by "web" + pointer to the question's name.
        let mut m = header(9, QR, [1, 1, 0, 0]);
        m.extend_from_slice(b"\x07outpost\x00");
        put_u16(&mut m, TYPE_A);
        put_u16(&mut m, CLASS_IN);
        m.extend_from_slice(b"\x03web\xc0\x0c");
        put_u16(&mut m, TYPE_A);
        put_u16(&mut m, CLASS_IN);
        put_u32(&mut m, 5);
        put_u16(&mut m, 4);
        m.extend_from_slice(&[10, 0, 0, 1]);
        let parsed = parse_answer(&m).unwrap();
        assert_eq!(parsed.answers.len(), 1);
        assert_eq!(parsed.answers[0].0, "web.outpost");
        assert_eq!(a(&parsed.answers[0].2), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn truncated_packets_are_dropped_or_formerr() {
        let full = query(3, "web.outpost", TYPE_A, Some(1232));
        // Every prefix: those cut inside the header or question are dropped, those cut in the
        // OPT record are FORMERR; none panics.
        let question_end = HEADER_LEN + "web.outpost".len() + 2 + 4;
        for len in 0..full.len() {
            match parse_query(&full[..len]) {
                Err(Bad::Drop(WireError::Truncated)) => assert!(len < question_end, "{len}"),
                Err(Bad::FormErr { error, id, .. }) => {
                    assert!(len >= question_end, "{len}");
                    assert_eq!((error, id), (WireError::Truncated, 3));
                }
                other => panic!("{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_refused() {
        // The name is a pointer to itself.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xc0\x0c");
        put_u32(&mut m, 0x0001_0001);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::BadPointer)));
        // A label, then a pointer back to that label: a loop that only goes backwards.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x01a\xc0\x0c");
        put_u32(&mut m, 0x0001_0001);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::BadPointer)));
        // Two names pointing at each other: the first at the second (forwards).
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xc0\x0e\xc0\x0c");
        put_u32(&mut m, 0x0001_0001);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::BadPointer)));
        // A pointer cut in half.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.push(0xc0);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::Truncated)));
        // Extended label types (0x40, 0x80) are not names.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x41a\x00");
        put_u32(&mut m, 0x0001_0001);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::BadLabel)));
    }

    #[test]
    fn a_chain_of_backward_pointers_is_followed_once_each() {
        // Names "a", "b"+ptr(a), "c"+ptr(b) in the additional section's owners would be
        // unusual; test the reader directly.
        let mut m = vec![0; HEADER_LEN];
        m.extend_from_slice(b"\x01a\x00"); // 12
        m.extend_from_slice(b"\x01b\xc0\x0c"); // 15
        m.extend_from_slice(b"\x01c\xc0\x0f"); // 19
        let mut r = Reader::new(&m);
        r.pos = 19;
        let n = r.name().unwrap();
        assert_eq!(n.key().as_deref(), Some("c.b.a"));
        assert_eq!(r.pos, m.len());
    }

    #[test]
    fn overlong_names_are_refused() {
        // 5 labels of 63 bytes: 320 bytes.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.push(0);
        put_u32(&mut m, 0x0001_0001);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::NameTooLong)));
        // A name built of pointers to ever earlier labels that adds up to too much.
        let mut m = header(1, 0, [0, 0, 0, 0]);
        let mut at = Vec::new();
        for i in 0..5 {
            at.push(m.len());
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
            if i == 0 {
                m.push(0);
            } else {
                let p = 0xc000 | at[i - 1] as u16;
                put_u16(&mut m, p);
            }
        }
        let mut r = Reader::new(&m);
        r.pos = at[4];
        assert_eq!(r.name(), Err(WireError::NameTooLong));
        assert!(Name::from_dotted(&vec!["a".repeat(63); 4].join(".")).is_none());
        assert!(Name::from_dotted(&["a".repeat(63), "b".repeat(61)].join(".")).is_some());
        assert!(Name::from_dotted(&"a".repeat(64)).is_none());
        assert!(Name::from_dotted("a..b").is_none());
    }

    #[test]
    fn huge_counts_run_into_the_end_of_the_packet() {
        let mut m = query(5, "web.outpost", TYPE_A, None);
        m[6..12].copy_from_slice(&[0xff; 6]);
        match parse_query(&m) {
            Err(Bad::FormErr { error, .. }) => assert_eq!(error, WireError::Truncated),
            other => panic!("{other:?}"),
        }
        let mut m = query(5, "web.outpost", TYPE_A, None);
        m[4..6].copy_from_slice(&[0xff, 0xff]);
        match parse_query(&m) {
            Err(Bad::FormErr { error, .. }) => assert_eq!(error, WireError::ManyQuestions),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_empty_and_questionless_packets_are_dropped() {
        let mut m = query(5, "web.outpost", TYPE_A, None);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::NotAQuery)));
        let m = header(5, 0, [0, 0, 0, 0]);
        assert_eq!(parse_query(&m), Err(Bad::Drop(WireError::NoQuestion)));
        assert_eq!(parse_query(&[]), Err(Bad::Drop(WireError::Truncated)));
    }

    #[test]
    fn two_opt_records_or_one_not_at_the_root_are_formerr() {
        let mut m = query(5, "web.outpost", TYPE_A, Some(1232));
        let opt = m[m.len() - 11..].to_vec();
        m.extend_from_slice(&opt);
        m[11] = 2;
        assert!(matches!(
            parse_query(&m),
            Err(Bad::FormErr {
                error: WireError::BadOpt,
                ..
            })
        ));
        let mut m = query(5, "web.outpost", TYPE_A, None);
        m[11] = 1;
        m.extend_from_slice(b"\x01x\x00");
        put_u16(&mut m, TYPE_OPT);
        put_u16(&mut m, 1232);
        put_u32(&mut m, 0);
        put_u16(&mut m, 0);
        assert!(matches!(
            parse_query(&m),
            Err(Bad::FormErr {
                error: WireError::BadOpt,
                ..
            })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // SplitMix64 over a fixed seed: reproducible garbage, some of it starting like a query.
        let rng = crate::rng::Rng::new(42);
        let base = query(1, "_http._tcp.web.outpost", TYPE_SRV, Some(1232));
        for round in 0..20_000 {
            let mut m = if round % 2 == 0 {
                base.clone()
            } else {
                vec![0; rng.below(80)]
            };
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                if m.is_empty() {
                    break;
                }
                let at = rng.below(m.len());
                m[at] = rng.next_u64() as u8;
            }
            m.truncate(rng.below(m.len() + 1).max(m.len() / 2));
            let _ = parse_query(&m);
            let _ = check_answer(&m, 1, &parse_query(&base).unwrap().question);
        }
    }

    #[test]
    fn encodes_answers_with_pointers_to_the_question() {
        let q = parse_query(&query(77, "WEB.outpost", TYPE_ANY, Some(1232))).unwrap();
        let records = [
            Record::A(Ipv4Addr::new(10, 0, 0, 1)),
            Record::Aaaa("fd00::1".parse().unwrap()),
            Record::Srv {
                priority: 1,
                weight: 2,
                port: 8080,
                target: "web-1.outpost".to_owned(),
            },
        ];
        let answers: Vec<&Record> = records.iter().collect();
        let mut reply = Reply::to(&q, NOERROR);
        reply.aa = true;
        reply.answers = &answers;
        let (bytes, truncated) = encode(&reply, q.udp_limit());
        assert!(!truncated);
        let parsed = parse_answer(&bytes).unwrap();
        assert_eq!(parsed.id, 77);
        assert!(parsed.aa && !parsed.tc);
        assert_eq!(parsed.flags & (QR | RD | RA), QR | RD | RA);
        assert_eq!(parsed.rcode, NOERROR);
        // The question is echoed as asked.
        assert_eq!(
            parsed.question.unwrap().name.wire(),
            b"\x03WEB\x07outpost\x00"
        );
        assert_eq!(parsed.opt, Some((UDP_MAX as u16, 0)));
        let types: Vec<u16> = parsed.answers.iter().map(|a| a.1).collect();
        assert_eq!(types, [TYPE_A, TYPE_AAAA, TYPE_SRV]);
        assert!(parsed.answers.iter().all(|a| a.0 == "web.outpost"));
        assert_eq!(a(&parsed.answers[0].2), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            aaaa(&parsed.answers[1].2),
            "fd00::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            parsed.answers[2].2,
            b"\x00\x01\x00\x02\x1f\x90\x05web-1\x07outpost\x00"
        );
        // Owners are 2-byte pointers to offset 12.
        let question_end = HEADER_LEN + q.question.name.wire().len() + 4;
        assert_eq!(&bytes[question_end..question_end + 2], &[0xc0, 0x0c]);
    }

    #[test]
    fn answers_over_the_limit_keep_what_fits_and_set_tc() {
        let q = parse_query(&query(1, "many.outpost", TYPE_A, None)).unwrap();
        let records: Vec<Record> = (0..100)
            .map(|i| Record::A(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        let answers: Vec<&Record> = records.iter().collect();
        let mut reply = Reply::to(&q, NOERROR);
        reply.answers = &answers;
        let (bytes, truncated) = encode(&reply, q.udp_limit());
        assert!(truncated);
        assert!(bytes.len() <= UDP_MIN, "{}", bytes.len());
        let parsed = parse_answer(&bytes).unwrap();
        assert!(parsed.tc);
        // 12 header + 18 question + 16 per record.
        assert_eq!(parsed.answers.len(), (UDP_MIN - 30) / 16);
        let (bytes, truncated) = encode(&reply, TCP_MAX);
        assert!(!truncated);
        assert_eq!(parse_answer(&bytes).unwrap().answers.len(), 100);
        // With an OPT record its 11 bytes are kept free.
        let q = parse_query(&query(1, "many.outpost", TYPE_A, Some(600))).unwrap();
        let mut reply = Reply::to(&q, NOERROR);
        reply.answers = &answers;
        let (bytes, truncated) = encode(&reply, q.udp_limit());
        assert!(truncated && bytes.len() <= 600, "{}", bytes.len());
        let parsed = parse_answer(&bytes).unwrap();
        assert!(parsed.opt.is_some());
        assert_eq!(parsed.answers.len(), (600 - 30 - 11) / 16);
    }

    #[test]
    fn extended_rcodes_go_in_the_opt_record() {
        let mut packet = query(1, "web.outpost", TYPE_A, Some(1232));
        let at = packet.len() - 11 + 6; // the OPT TTL's version byte
        packet[at] = 1;
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.edns.unwrap().version, 1);
        let (bytes, _) = encode(&Reply::to(&q, BADVERS), q.udp_limit());
        let parsed = parse_answer(&bytes).unwrap();
        assert_eq!(parsed.rcode, BADVERS);
        assert_eq!(parsed.flags & 0xf, 0);
    }

    #[test]
    fn the_do_bit_is_echoed() {
        let mut packet = query(1, "web.outpost", TYPE_A, Some(1232));
        let at = packet.len() - 11 + 7; // the OPT TTL's flags
        packet[at] = 0x80;
        let q = parse_query(&packet).unwrap();
        assert!(q.edns.unwrap().dnssec_ok);
        let (bytes, _) = encode(&Reply::to(&q, NOERROR), q.udp_limit());
        assert_eq!(parse_answer(&bytes).unwrap().opt, Some((1232, DO)));
    }

    #[test]
    fn answers_are_checked_against_the_question() {
        let q = parse_query(&query(1, "Example.COM", TYPE_A, None)).unwrap();
        let (answer, _) = encode(&Reply::to(&q, NOERROR), UDP_MIN);
        assert_eq!(check_answer(&answer, 1, &q.question), Ok(()));
        assert_eq!(
            check_answer(&answer, 2, &q.question),
            Err(WireError::Mismatch)
        );
        let other = parse_query(&query(1, "example.org", TYPE_A, None)).unwrap();
        assert_eq!(
            check_answer(&answer, 1, &other.question),
            Err(WireError::Mismatch)
        );
        let lower = parse_query(&query(1, "example.com", TYPE_A, None)).unwrap();
        assert_eq!(check_answer(&answer, 1, &lower.question), Ok(()));
        let aaaa = parse_query(&query(1, "example.com", TYPE_AAAA, None)).unwrap();
        assert_eq!(
            check_answer(&answer, 1, &aaaa.question),
            Err(WireError::Mismatch)
        );
        // A query is not an answer.
        assert_eq!(
            check_answer(&query(1, "example.com", TYPE_A, None), 1, &q.question),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            check_answer(&answer[..5], 1, &q.question),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn names_compare_and_key_case_insensitively() {
        let n = name("_HTTP._tcp.Web.OUTPOST");
        assert_eq!(n.key().as_deref(), Some("_http._tcp.web.outpost"));
        assert!(n.is_within("outpost"));
        assert!(n.is_within("web.outpost"));
        assert!(n.is_within(""));
        assert!(!n.is_within("eb.outpost"));
        assert!(!name("outpost").is_within("web.outpost"));
        assert!(name("OUTPOST.").is_within("outpost"));
        assert!(!name("notoutpost").is_within("outpost"));
        assert!(n.eq_ignore_case(&name("_http._TCP.web.outpost")));
        assert_eq!(name("").key().as_deref(), Some(""));
        // A label holding a dot (possible on the wire) has no key.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x03a.b\x07outpost\x00");
        put_u32(&mut m, 0x0001_0001);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.question.name.key(), None);
        assert!(q.question.name.is_within("outpost"));
    }
}
