//! DNS messages as the resolver handles them (pure: parsing, the answers that count, replies
//! agentd writes itself). Input comes from agent processes and from the upstream, so nothing
//! here trusts it: malformed messages are errors, never panics (the tests below throw random
//! and mutated messages at every function).

use std::{collections::BTreeSet, net::IpAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, RecordType},
};

/// Why a query is not handled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// Not a DNS message at all.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// A response, or an opcode other than QUERY.
    #[error("not a standard query")]
    NotAQuery,
    /// Zero or several questions (every resolver in use sends exactly one).
    #[error("{0} questions (exactly one is supported)")]
    Questions(usize),
}

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The message id.
    pub id: u16,
    /// The name, lower case, without the trailing dot.
    pub name: String,
    /// The record type (`A`, `AAAA`, `TXT`, ...).
    pub qtype: RecordType,
}

/// The id of a message that may not parse (its first two bytes), to answer it with FORMERR.
pub fn raw_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Parses a query from a client.
pub fn parse_query(bytes: &[u8]) -> Result<(Message, Question), QueryError> {
    let message = Message::from_vec(bytes).map_err(|err| QueryError::Malformed(err.to_string()))?;
    if message.metadata.message_type != MessageType::Query
        || message.metadata.op_code != OpCode::Query
    {
        return Err(QueryError::NotAQuery);
    }
    if message.queries.len() != 1 {
        return Err(QueryError::Questions(message.queries.len()));
    }
    let query = &message.queries[0];
    let question = Question {
        id: message.metadata.id,
        name: normalize(&query.name().to_ascii()),
        qtype: query.query_type(),
    };
    Ok((message, question))
}

/// Lower case, no trailing dot (the form host rules are written in).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A reply carrying only `code` (REFUSED, SERVFAIL, FORMERR), echoing the question when there
/// is one.
pub fn error_reply(id: u16, query: Option<&Message>, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::error_msg(id, OpCode::Query, code);
    if let Some(query) = query {
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.queries = query.queries.clone();
    }
    reply.metadata.recursion_available = true;
    // An error reply with at most one question always encodes; the fallback is a bare header.
    reply.to_vec().unwrap_or_else(|_| {
        let mut bare = Message::error_msg(id, OpCode::Query, code);
        bare.metadata.recursion_available = true;
        bare.to_vec().unwrap_or_default()
    })
}

/// Checks that `response` answers `question` (same id, same question) and parses it.
pub fn parse_response(bytes: &[u8], id: u16, question: &Question) -> Result<Message, QueryError> {
    let message = Message::from_vec(bytes).map_err(|err| QueryError::Malformed(err.to_string()))?;
    if message.metadata.message_type != MessageType::Response || message.metadata.id != id {
        return Err(QueryError::Malformed(
            "the reply does not answer the query".into(),
        ));
    }
    match message.queries.as_slice() {
        [q] if normalize(&q.name().to_ascii()) == question.name
            && q.query_type() == question.qtype =>
        {
            Ok(message)
        }
        _ => Err(QueryError::Malformed(
            "the reply's question differs from the query's".into(),
        )),
    }
}

/// One address of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The address.
    pub ip: IpAddr,
    /// Its TTL in seconds.
    pub ttl: u32,
}

/// The addresses that answer `name`: A and AAAA records owned by the name or by a name it is
/// an alias of (following CNAME records in the answer section). Records for other names are
/// not answers to the question and are ignored.
pub fn answers(response: &Message, name: &str) -> Vec<Answer> {
    let chain = alias_chain(response, name);
    response
        .answers
        .iter()
        .filter(|r| chain.contains(&normalize(&r.name.to_ascii())))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(Answer {
                ip: IpAddr::V4(a.0),
                ttl: r.ttl,
            }),
            RData::AAAA(aaaa) => Some(Answer {
                ip: IpAddr::V6(aaaa.0),
                ttl: r.ttl,
            }),
            _ => None,
        })
        .collect()
}

/// `name` and every name the answer section makes it an alias of.
fn alias_chain(response: &Message, name: &str) -> BTreeSet<String> {
    let mut chain = BTreeSet::from([name.to_owned()]);
    // Each pass follows at least one more link or stops; a chain longer than the answer
    // section cannot exist.
    for _ in 0..=response.answers.len() {
        let mut grew = false;
        for record in &response.answers {
            if let RData::CNAME(target) = &record.data
                && chain.contains(&normalize(&record.name.to_ascii()))
            {
                grew |= chain.insert(normalize(&target.0.to_ascii()));
            }
        }
        if !grew {
            break;
        }
    }
    chain
}

/// Removes the A and AAAA records whose address `keep` refuses, from every section.
pub fn strip(response: &mut Message, keep: impl Fn(IpAddr) -> bool) -> usize {
    let allowed = |r: &hickory_proto::rr::Record| match &r.data {
        RData::A(a) => keep(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => keep(IpAddr::V6(aaaa.0)),
        _ => true,
    };
    let before = response.answers.len() + response.additionals.len();
    response.answers.retain(allowed);
    response.additionals.retain(allowed);
    before - response.answers.len() - response.additionals.len()
}

/// The response code's name (`NOERROR`, `NXDOMAIN`, ...).
pub fn rcode_name(code: ResponseCode) -> String {
    let number = u16::from(code);
    let name = match number {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => return format!("RCODE{number}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::{
        op::Query,
        rr::{Name, Record, rdata},
    };

    use super::*;

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(rdata::A(Ipv4Addr::from(ip))),
        )
    }

    #[test]
    fn parses_one_question() {
        let bytes = query("API.Example.com.", RecordType::A).to_vec().unwrap();
        let (_, q) = parse_query(&bytes).unwrap();
        assert_eq!(
            q,
            Question {
                id: 0x1234,
                name: "api.example.com".into(),
                qtype: RecordType::A
            }
        );
        assert!(matches!(
            parse_query(&bytes[..5]),
            Err(QueryError::Malformed(_))
        ));
        let mut two = query("a.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.test.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            parse_query(&two.to_vec().unwrap()).unwrap_err(),
            QueryError::Questions(2)
        );
        let mut response = query("a.test.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(
            parse_query(&response.to_vec().unwrap()).unwrap_err(),
            QueryError::NotAQuery
        );
    }

    #[test]
    fn error_replies_echo_the_question() {
        let q = query("x.test.", RecordType::TXT);
        let reply = Message::from_vec(&error_reply(7, Some(&q), ResponseCode::Refused)).unwrap();
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries, q.queries);
        assert_eq!(raw_id(&[0xab, 0xcd, 1]), Some(0xabcd));
        assert_eq!(raw_id(&[1]), None);
    }

    #[test]
    fn answers_follow_cnames_and_ignore_strays() {
        let mut r = query("api.example.com.", RecordType::A);
        r.metadata.message_type = MessageType::Response;
        r.add_answer(Record::from_rdata(
            Name::from_ascii("api.example.com.").unwrap(),
            60,
            RData::CNAME(rdata::CNAME(Name::from_ascii("Edge.CDN.net.").unwrap())),
        ));
        r.add_answer(a("edge.cdn.net.", [93, 184, 216, 34], 30));
        r.add_answer(a("unrelated.test.", [6, 6, 6, 6], 30));
        r.add_answer(Record::from_rdata(
            Name::from_ascii("edge.cdn.net.").unwrap(),
            20,
            RData::AAAA(rdata::AAAA(Ipv6Addr::LOCALHOST)),
        ));
        let got = answers(&r, "api.example.com");
        assert_eq!(
            got,
            vec![
                Answer {
                    ip: "93.184.216.34".parse().unwrap(),
                    ttl: 30
                },
                Answer {
                    ip: "::1".parse().unwrap(),
                    ttl: 20
                }
            ]
        );
        let removed = strip(&mut r, |ip| ip != IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(removed, 1);
        assert_eq!(answers(&r, "api.example.com").len(), 1);
    }

    #[test]
    fn responses_must_match_the_query() {
        let q = query("a.test.", RecordType::A);
        let question = parse_query(&q.to_vec().unwrap()).unwrap().1;
        let mut r = q.clone();
        r.metadata.message_type = MessageType::Response;
        assert!(parse_response(&r.to_vec().unwrap(), 0x1234, &question).is_ok());
        assert!(parse_response(&r.to_vec().unwrap(), 0x9999, &question).is_err());
        let mut other = query("b.test.", RecordType::A);
        other.metadata.message_type = MessageType::Response;
        assert!(parse_response(&other.to_vec().unwrap(), 0x1234, &question).is_err());
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
    }

    /// Random bytes and mutations of valid messages: every function returns, none panics.
    #[test]
    fn survives_random_and_mutated_input() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = query("api.example.com.", RecordType::A);
        valid.metadata.message_type = MessageType::Response;
        valid.add_answer(Record::from_rdata(
            Name::from_ascii("api.example.com.").unwrap(),
            60,
            RData::CNAME(rdata::CNAME(Name::from_ascii("b.example.com.").unwrap())),
        ));
        valid.add_answer(a("b.example.com.", [1, 2, 3, 4], 5));
        let valid = valid.to_vec().unwrap();
        let question = Question {
            id: 0x1234,
            name: "api.example.com".into(),
            qtype: RecordType::A,
        };
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                b.truncate(b.len() - (next() % 3) as usize);
                b
            };
            let _ = parse_query(&bytes);
            let _ = raw_id(&bytes);
            if let Ok(mut m) = parse_response(&bytes, 0x1234, &question) {
                let _ = answers(&m, "api.example.com");
                strip(&mut m, |_| false);
                let _ = m.to_vec();
            }
        }
    }
}
