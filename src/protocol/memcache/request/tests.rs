use super::*;
use proptest::prelude::*;

/// What a parser made of a stream, as comparable text.
fn outcomes(
    parser: &mut RequestParser,
    buf: &mut BytesMut,
    limits: &Limits,
    out: &mut Vec<String>,
) {
    while let Some(p) = parser.parse(buf, limits).unwrap() {
        out.push(match p {
            Parsed::Request(r) => format!("{}:{:?}:{}", r.verb, r.forwarded(), r.is_quiet()),
            Parsed::Reject { reply, silent } => format!("reject:{reply}:{silent}"),
            Parsed::Binary(refusal) => format!("binary:{refusal:?}"),
        });
    }
}

/// Commands of every shape, well-formed or not, with values of any bytes.
fn command_strategy() -> impl Strategy<Value = Vec<u8>> {
    let key = "[a-z0-9:]{1,12}";
    let value = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (key, value.clone(), any::<bool>()).prop_map(|(k, v, noreply)| {
            let nr = if noreply { " noreply" } else { "" };
            [
                format!("set {k} 5 0 {}{nr}\r\n", v.len()).as_bytes(),
                &v,
                b"\r\n",
            ]
            .concat()
        }),
        (key, value.clone(), any::<bool>()).prop_map(|(k, v, quiet)| {
            let q = if quiet { " q" } else { "" };
            [
                format!("ms {k} {} T0{q}\r\n", v.len()).as_bytes(),
                &v,
                b"\r\n",
            ]
            .concat()
        }),
        prop::collection::vec(key, 1..6)
            .prop_map(|ks| format!("get {}\r\n", ks.join(" ")).into_bytes()),
        (key, any::<bool>()).prop_map(|(k, q)| format!(
            "mg {k} v k{}\r\n",
            if q { " q" } else { "" }
        )
        .into_bytes()),
        key.prop_map(|k| format!("delete {k} noreply\r\n").into_bytes()),
        Just(b"mn\r\n".to_vec()),
        Just(b"bogus command\r\n".to_vec()),
        Just(b"set k 0 0 x\r\n".to_vec()),
        // Refused as too large, and swallowed.
        Just([&b"set big 0 0 70\r\n"[..], &[b'v'; 70], b"\r\n"].concat()),
        // A data block without its CRLF.
        Just(b"set k 0 0 1\r\nxy\r\n".to_vec()),
    ]
}

proptest! {
    /// Every byte split of a pipeline parses to the same outcomes.
    #[test]
    fn split_anywhere_parses_the_same(cmds in prop::collection::vec(command_strategy(), 1..8)) {
        let wire: Vec<u8> = cmds.concat();
        let limits = Limits { item_size_max: 64, ..Limits::default() };
        let mut whole = Vec::new();
        outcomes(&mut RequestParser::default(), &mut BytesMut::from(&wire[..]), &limits, &mut whole);
        for cut in 0..=wire.len() {
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            outcomes(&mut parser, &mut buf, &limits, &mut got);
            buf.extend_from_slice(&wire[cut..]);
            outcomes(&mut parser, &mut buf, &limits, &mut got);
            prop_assert_eq!(&got, &whole);
            prop_assert!(buf.is_empty() && !parser.is_mid_request(&buf));
        }
    }

    /// Keys of any bytes but space and newline: each command gets exactly one outcome, and
    /// every request forwarded is one memcached reads as the proxy does (no control byte,
    /// which memcached would read otherwise and answer with more or fewer replies).
    #[test]
    fn odd_keys_get_one_outcome_each(
        cmds in prop::collection::vec(
            (prop::collection::vec(any::<u8>().prop_filter("token", |b| *b != b' ' && *b != b'\n'), 1..8),
             0..5usize, prop::collection::vec(any::<u8>(), 0..8)),
            1..8),
    ) {
        let mut wire = Vec::new();
        for (key, verb, value) in &cmds {
            let head: &[u8] = [&b"set "[..], b"ms ", b"get ", b"delete ", b"mg "][*verb];
            wire.extend_from_slice(head);
            wire.extend_from_slice(key);
            match verb {
                0 => wire.extend_from_slice(format!(" 0 0 {} noreply\r\n", value.len()).as_bytes()),
                1 => wire.extend_from_slice(format!(" {} q\r\n", value.len()).as_bytes()),
                _ => wire.extend_from_slice(b" \r\n"),
            }
            if *verb < 2 {
                wire.extend_from_slice(value);
                wire.extend_from_slice(b"\r\n");
            }
        }
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&wire[..]);
        let mut n = 0;
        while let Some(p) = parser.parse(&mut buf, &Limits::default()).unwrap() {
            n += 1;
            if let Parsed::Request(r) = p {
                prop_assert!(!r.line().iter().any(|&b| b < b' ' || b == 0x7f), "{:?}", r.line());
                prop_assert!(r.token(1).is_some_and(|k| k.len() <= MAX_KEY_BYTES));
            }
        }
        prop_assert_eq!(n, cmds.len());
        prop_assert!(buf.is_empty());
    }

    /// Random bytes never panic, and every request they yield is framed whole.
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut parser = RequestParser::default();
        let limits = Limits { item_size_max: 64, max_get_line: 128 };
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(p)) = parser.parse(&mut buf, &limits) {
            if let Parsed::Request(r) = p {
                prop_assert!(r.frame().ends_with(b"\n"));
                prop_assert!(!r.verb.has_data() || r.frame().ends_with(b"\r\n"));
                prop_assert!(r.line().len() < r.frame().len());
            }
        }
    }
}

fn parse_all(input: &[u8], limits: Limits) -> Vec<String> {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(p) = parser.parse(&mut buf, &limits).unwrap() {
        out.push(match p {
            Parsed::Request(r) => format!(
                "{}:{}",
                r.verb,
                String::from_utf8_lossy(&r.forwarded()).escape_debug()
            ),
            Parsed::Reject { reply, silent } => format!("reject:{reply}:{silent}"),
            Parsed::Binary(refusal) => format!("binary:{refusal:?}"),
        });
    }
    out
}

fn parse(input: &[u8]) -> Vec<String> {
    parse_all(input, Limits::default())
}

#[test]
fn frames_text_commands() {
    assert_eq!(
        parse(b"set a 0 0 2\r\nhi\r\nget a b\r\n  gets  a\n"),
        [
            "set:set a 0 0 2\\r\\nhi\\r\\n",
            "get:get a b\\r\\n",
            "gets:  gets  a\\n"
        ]
    );
}

#[test]
fn noreply_and_quiet_tokens_are_removed_for_the_backend() {
    assert_eq!(
        parse(
            b"set a 0 0 2 noreply\r\nhi\r\ndelete a noreply\r\nmg a v q k\r\nms a 2 q T5\r\nhi\r\n"
        ),
        [
            "set:set a 0 0 2 \\r\\nhi\\r\\n",
            "delete:delete a \\r\\n",
            "mg:mg a v  k\\r\\n",
            "ms:ms a 2  T5\\r\\nhi\\r\\n"
        ]
    );
}

#[test]
fn malformed_commands_get_memcacheds_replies() {
    let key = "k".repeat(251);
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (b"foo\r\n".to_vec(), vec!["reject:ERROR:false"]),
        (b"\r\n".to_vec(), vec!["reject:ERROR:false"]),
        (b"get\r\n".to_vec(), vec!["reject:ERROR:false"]),
        (
            b"set a 0 0 x\r\nhi\r\n".to_vec(),
            vec![
                "reject:CLIENT_ERROR bad command line format:false",
                "reject:ERROR:false",
            ],
        ),
        (
            b"set a 0 0 x noreply\r\n".to_vec(),
            vec!["reject:CLIENT_ERROR bad command line format:true"],
        ),
        (
            b"set a 0 0 -1\r\n".to_vec(),
            vec!["reject:CLIENT_ERROR bad command line format:false"],
        ),
        (
            b"set a 0 0 2\r\nhello\r\n".to_vec(),
            vec![
                "reject:CLIENT_ERROR bad data chunk:false",
                "reject:ERROR:false",
            ],
        ),
        (b"set a 0 0\r\n".to_vec(), vec!["reject:ERROR:false"]),
        (
            format!("get a {key}\r\n").into_bytes(),
            vec!["reject:CLIENT_ERROR bad command line format:false"],
        ),
        (
            b"ms a\r\n".to_vec(),
            vec!["reject:CLIENT_ERROR bad command line format:false"],
        ),
        (b"mg\r\n".to_vec(), vec!["reject:ERROR:false"]),
        (
            b"set k\0y 0 0 1 noreply\r\nx\r\nget k\x01\r\ndelete k\x7f\r\n".to_vec(),
            vec![
                "reject:CLIENT_ERROR bad command line format:false",
                "reject:CLIENT_ERROR bad command line format:false",
                "reject:CLIENT_ERROR bad command line format:false",
            ],
        ),
        (
            b"ms k\ty 2\r\nhi\r\nincr \0 1\r\nmg a\rb v\r\n".to_vec(),
            vec![
                "reject:CLIENT_ERROR bad command line format:false",
                "reject:CLIENT_ERROR bad command line format:false",
                "reject:CLIENT_ERROR bad command line format:false",
            ],
        ),
        (
            b"ms a 2 q\r\nhello\r\n".to_vec(),
            vec![
                "reject:CLIENT_ERROR bad data chunk:false",
                "reject:ERROR:false",
            ],
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse(&input), want, "{}", String::from_utf8_lossy(&input));
    }
}

#[test]
fn too_large_values_are_refused_and_swallowed() {
    let limits = Limits {
        item_size_max: 4,
        ..Limits::default()
    };
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"set a 0 0 10\r\n0123"[..]);
    assert!(matches!(
        parser.parse(&mut buf, &limits).unwrap(),
        Some(Parsed::Reject {
            reply: TOO_LARGE,
            silent: false
        })
    ));
    assert!(parser.parse(&mut buf, &limits).unwrap().is_none());
    assert!(parser.is_mid_request(&buf));
    buf.extend_from_slice(b"456789\r\nget a\r\n");
    assert!(matches!(
        parser.parse(&mut buf, &limits).unwrap(),
        Some(Parsed::Request(Request {
            verb: Verb::Get,
            ..
        }))
    ));
    assert_eq!(
        parse_all(b"ms a 5 q\r\n12345\r\nmn\r\n", limits),
        [
            "reject:SERVER_ERROR object too large for cache:false",
            "mn:mn\\r\\n"
        ]
    );
}

#[test]
fn long_lines_without_newline_close_the_connection() {
    let (mut parser, limits) = (RequestParser::default(), Limits::default());
    let mut buf = BytesMut::from(&[b'x'; 2049][..]);
    assert_eq!(
        parser.parse(&mut buf, &limits).unwrap_err(),
        ParseError::LineTooLong
    );
    let mut buf = BytesMut::from(&b"get "[..]);
    buf.extend_from_slice(&[b'k'; 4000]);
    assert!(parser.parse(&mut buf, &limits).unwrap().is_none());
}

#[test]
fn tokens_walk_every_key() {
    let mut buf = BytesMut::from(&b"get a  b c\r\n"[..]);
    let Some(Parsed::Request(r)) = RequestParser::default()
        .parse(&mut buf, &Limits::default())
        .unwrap()
    else {
        panic!("not a request");
    };
    let keys: Vec<&[u8]> = r.tokens().skip(1).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
    assert_eq!(r.token(2), Some(&b"b"[..]));
}
