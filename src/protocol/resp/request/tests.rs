use super::*;
use proptest::prelude::*;

fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut p = RequestParser::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(r) = p.parse(&mut buf, &Limits::default(), true)? {
        out.push(r.args().map(<[u8]>::to_vec).collect());
    }
    Ok(out)
}

fn words(ws: &[&str]) -> Vec<Vec<u8>> {
    ws.iter().map(|w| w.as_bytes().to_vec()).collect()
}

#[test]
fn multibulk_and_inline() {
    let got =
        parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\n*0\r\nSET a \"b c\"\r\n").unwrap();
    assert_eq!(
        got,
        vec![
            words(&["GET", "k"]),
            words(&["PING"]),
            words(&["SET", "a", "b c"])
        ]
    );
}

#[test]
fn frame_is_the_clients_bytes_and_inline_is_reencoded() {
    let mut p = RequestParser::default();
    let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nECHO hi\n"[..]);
    assert_eq!(
        &p.parse(&mut buf, &Limits::default(), true)
            .unwrap()
            .unwrap()
            .frame()[..],
        b"*1\r\n$4\r\nPING\r\n"
    );
    let inline = p
        .parse(&mut buf, &Limits::default(), true)
        .unwrap()
        .unwrap();
    assert_eq!(&inline.frame()[..], b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n");
    assert_eq!(inline.arg(1), b"hi");
    assert!(buf.is_empty());
}

#[test]
fn inline_quoting() {
    assert_eq!(
        parse_all(b"SET k \"a\\x41\\n\" 'it\\'s'\r\n").unwrap(),
        vec![vec![
            b"SET".to_vec(),
            b"k".to_vec(),
            b"aA\n".to_vec(),
            b"it's".to_vec()
        ]]
    );
    assert_eq!(
        parse_all(b"SET k \"open\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
    assert_eq!(
        parse_all(b"SET k \"a\"b\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
}

#[test]
fn an_unauthenticated_client_is_held_to_small_requests_and_everyone_to_the_request_bound() {
    let limits = Limits {
        max_request_bytes: 100,
        ..Limits::default()
    };
    let refused = |authenticated: bool, input: &[u8]| {
        RequestParser::default()
            .parse(&mut BytesMut::from(input), &limits, authenticated)
            .unwrap_err()
    };
    // As Redis: before AUTH, at most 10 arguments and 16 KB, refused on the header.
    assert_eq!(
        refused(false, b"*11\r\n"),
        ProtocolError::UnauthenticatedMultibulkLength
    );
    assert_eq!(
        refused(false, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16384\r\n"),
        ProtocolError::UnauthenticatedBulkLength
    );
    // Every argument counts toward the whole request.
    assert_eq!(
        refused(true, b"*3\r\n$4\r\nMSET\r\n$90\r\n"),
        ProtocolError::RequestTooBig(100)
    );
    let mut small = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"[..]);
    assert!(
        RequestParser::default()
            .parse(&mut small, &limits, false)
            .unwrap()
            .is_some()
    );
}

#[test]
fn bad_input_errors() {
    let cases: [(&[u8], ProtocolError); 7] = [
        (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
        (b"*2000000\r\n", ProtocolError::InvalidMultibulkLength),
        (b"*1\r\n$1073741824\r\n", ProtocolError::InvalidBulkLength),
        (b"*1\r\n$-3\r\n", ProtocolError::InvalidBulkLength),
        (b"*1\r\n*1\r\n", ProtocolError::ExpectedBulk(b'*')),
        (b"*1\r\n$1\r\nab\r\n", ProtocolError::MissingCrlf),
        (b"*1\n", ProtocolError::InvalidMultibulkLength),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse_all(input),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(
        parse_all(&vec![b'a'; 70_000]),
        Err(ProtocolError::InlineTooBig)
    );
    let mut long_header = b"*".to_vec();
    long_header.extend(vec![b'1'; 70_000]);
    assert_eq!(parse_all(&long_header), Err(ProtocolError::HeaderTooBig));
}

#[test]
fn nested_arrays_are_rejected_at_once() {
    let nested = b"*1\r\n".repeat(100_000);
    assert_eq!(parse_all(&nested), Err(ProtocolError::ExpectedBulk(b'*')));
}

#[test]
fn incomplete_input_waits_and_resumes() {
    let mut p = RequestParser::default();
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$5\r\nhel"[..]);
    assert_eq!(p.parse(&mut buf, &Limits::default(), true), Ok(None));
    assert!(p.is_mid_request(&buf));
    buf.extend_from_slice(b"lo\r\n");
    let r = p
        .parse(&mut buf, &Limits::default(), true)
        .unwrap()
        .unwrap();
    assert_eq!(r.arg(1), b"hello");
    assert!(!p.is_mid_request(&buf));
}

fn request_strategy() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let arg = prop::collection::vec(any::<u8>(), 0..40);
    let req = prop::collection::vec(arg, 1..6);
    prop::collection::vec(req, 1..4)
}

proptest! {
    /// Every byte split of a valid pipeline parses to the same requests.
    #[test]
    fn split_anywhere_parses_the_same(reqs in request_strategy()) {
        let mut wire = BytesMut::new();
        for r in &reqs {
            encode::command(&mut wire, r.iter().map(Vec::as_slice));
        }
        for cut in 0..=wire.len() {
            let mut p = RequestParser::default();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(r) = p.parse(&mut buf, &Limits::default(), true).unwrap() {
                got.push(r.args().map(<[u8]>::to_vec).collect::<Vec<_>>());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(r) = p.parse(&mut buf, &Limits::default(), true).unwrap() {
                got.push(r.args().map(<[u8]>::to_vec).collect::<Vec<_>>());
            }
            prop_assert_eq!(&got, &reqs);
            prop_assert!(buf.is_empty());
        }
    }

    /// Random bytes never panic, and every request they yield is well-formed.
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let limits = Limits { max_args: 8, max_bulk_bytes: 64, max_inline_bytes: 64, ..Limits::default() };
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(r)) = p.parse(&mut buf, &limits, true) {
            prop_assert!(r.argc() >= 1 && r.argc() <= 8);
            prop_assert!(r.args().all(|a| a.len() <= 64));
        }
    }

    /// Whatever a client sends (commands, inline lines, noise), each request the parser
    /// yields is forwarded as exactly one command as Redis reads it: one complete array
    /// of bulk strings (redis-protocol as the oracle), with nothing before or after, so a
    /// server answers it with exactly one reply.
    #[test]
    fn every_request_is_one_command_as_redis_reads_it(
        pieces in prop::collection::vec(prop_oneof![
            request_strategy().prop_map(|reqs| {
                let mut wire = BytesMut::new();
                for r in &reqs {
                    encode::command(&mut wire, r.iter().map(Vec::as_slice));
                }
                wire.to_vec()
            }),
            prop::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..30)
                .prop_map(|mut line| { line.extend_from_slice(b"\r\n"); line }),
            prop::collection::vec(any::<u8>(), 0..30),
        ], 1..6),
    ) {
        use redis_protocol::resp2::decode::decode;
        use redis_protocol::resp2::types::OwnedFrame;
        let wire = pieces.concat();
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&wire[..]);
        while let Ok(Some(r)) = p.parse(&mut buf, &Limits::default(), true) {
            let (frame, used) = decode(r.frame()).unwrap().unwrap();
            prop_assert_eq!(used, r.frame().len());
            let OwnedFrame::Array(items) = frame else {
                return Err(TestCaseError::fail("not an array"));
            };
            prop_assert_eq!(items.len(), r.argc());
            prop_assert!(items.iter().all(|i| matches!(i, OwnedFrame::BulkString(_))));
        }
    }

    /// A request built from arguments reads back as those arguments.
    #[test]
    fn from_args_round_trips(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..6)) {
        let r = Request::from_args(args.iter().map(Vec::as_slice));
        prop_assert_eq!(r.args().map(<[u8]>::to_vec).collect::<Vec<_>>(), args.clone());
        let mut buf = BytesMut::from(&r.frame()[..]);
        let again = RequestParser::default().parse(&mut buf, &Limits::default(), true).unwrap().unwrap();
        prop_assert_eq!(again, r);
    }
}
