use super::*;

fn mode(optin: bool, optout: bool, caching: Option<bool>) -> Mode {
    Mode {
        optin,
        optout,
        caching,
        ..Mode::default()
    }
}

#[test]
fn which_reads_are_tracked() {
    assert!(mode(false, false, None).tracks_read());
    assert!(!mode(true, false, None).tracks_read());
    assert!(mode(true, false, Some(true)).tracks_read());
    assert!(mode(false, true, None).tracks_read());
    assert!(!mode(false, true, Some(false)).tracks_read());
    let bcast = Mode {
        bcast: true,
        ..Mode::default()
    };
    assert!(!bcast.tracks_read(), "BCAST tracks prefixes, not reads");
    let mut spent = mode(true, false, Some(true));
    spent.command_done();
    assert!(!spent.tracks_read());
}

#[test]
fn prefixes_must_not_overlap() {
    let asked = |prefixes: &[&str]| Mode {
        bcast: true,
        prefixes: prefixes
            .iter()
            .map(|p| Bytes::from(p.to_string()))
            .collect(),
        ..Mode::default()
    };
    assert!(check(None, &asked(&["a", "b"])).is_ok());
    let e = check(None, &asked(&["ab", "a"])).unwrap_err();
    assert!(
        e.contains("Prefix 'ab' overlaps with another provided prefix 'a'"),
        "{e}"
    );
    let current = asked(&["user:"]);
    let e = check(Some(&current), &asked(&["user:1"])).unwrap_err();
    assert!(
        e.contains("overlaps with an existing prefix 'user:'"),
        "{e}"
    );
}

#[test]
fn invalidations_as_each_protocol_carries_them() {
    let keys = b"*1\r\n$1\r\nk\r\n";
    assert_eq!(
        message(keys, true, false).unwrap(),
        &b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"[..]
    );
    assert_eq!(
        message(b"", true, false).unwrap(),
        &b">2\r\n$10\r\ninvalidate\r\n_\r\n"[..]
    );
    assert_eq!(
        message(b"", false, true).unwrap(),
        &b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n"[..]
    );
    assert_eq!(message(keys, false, false), None, "RESP2 cannot carry it");
}
